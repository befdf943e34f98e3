"""Unsubscribing a recipient: one function for every way in (one-click POST, the page, mailto)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from storage import tracking_store
from storage.events import NewEvent, append_sync
from storage.suppressions import suppress
from storage.types import utcnow


def apply_unsubscribe(conn: Connection, send: dict[str, Any], method: str) -> bool:
    """Suppress the address for the org and mark the send; True the first time only."""
    now = utcnow()
    email = send["to_email"].strip().lower()
    suppress(conn, send["org_id"], email, "unsubscribe", detail=method, send_id=send["id"])
    if not tracking_store.mark_unsubscribed(conn, send["id"], now):
        return False
    event = {
        "send_id": send["id"],
        "to": send["to_email"],
        "module": send["module"],
        "record_id": send["record_id"],
        "user_id": send["user_id"],
        "template_id": send["template_id"],
        "method": method,
    }
    append_sync(conn, [NewEvent(send["org_id"], "email.unsubscribed", event, at=now)])
    return True
