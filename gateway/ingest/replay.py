"""Replaying mail kept in the ``inbound`` table (``mailgate inbound replay``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from gateway.ingest.pipeline import Delivery, file_batch
from storage import inbound_store


class ReplayError(Exception):
    pass


def replay(conn: Connection, inbound_id: int, mail_domain: str) -> dict[str, Any]:
    """Bounce mail goes back to the bounce queue; a shunted filing is filed again, now."""
    row = inbound_store.get(conn, inbound_id)
    if row is None:
        raise ReplayError(f"no kept message {inbound_id}")
    if row["state"] not in ("held", "failed"):
        raise ReplayError(f"message {inbound_id} is {row['state']}, not held or failed")
    if row["channel"] == "bounce":
        inbound_store.set_state(conn, inbound_id, "pending")
        return {"id": inbound_id, "result": "queued for bounce processing"}
    if row["org_id"] is None or row["user_id"] is None:
        raise ReplayError(f"message {inbound_id} has no owner to file it for")
    delivery = Delivery(
        raw=row["raw"],
        channel=row["channel"],
        org_id=row["org_id"],
        user_id=row["user_id"],
        mail_from=row["mail_from"],
        rcpt_to=row["rcpt_to"],
        accepted_earlier=True,
    )
    file_batch(conn, [delivery], mail_domain)
    inbound_store.set_state(conn, inbound_id, "done", f"replayed: {delivery.outcome.value}")
    return {"id": inbound_id, "result": delivery.outcome.value, "message_id": delivery.message_pk}
