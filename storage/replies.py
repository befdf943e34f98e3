"""Replies to our sends: incoming mail whose In-Reply-To/References name a send's Message-ID."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from storage.schema_sending import sends

#: A bounce or complaint says more than a reply (usually an auto-reply to the bounce).
KEEP_STATUS = ("bounced", "complained", "unsubscribed")


def mark_replied(
    conn: Connection, org_id: int, header_ids: Iterable[str], at: datetime
) -> list[dict[str, Any]]:
    """Mark the sends these Message-IDs belong to as replied; returns the newly replied ones."""
    wanted = sorted({h for h in header_ids if h})
    if not wanted:
        return []
    rows = conn.execute(
        select(sends.c.id, sends.c.module, sends.c.record_id, sends.c.to_email, sends.c.status)
        .where(
            sends.c.org_id == org_id,
            sends.c.message_id.in_(wanted),
            sends.c.replied_at.is_(None),
        )
        .order_by(sends.c.id)
    ).mappings()
    found = [dict(r) for r in rows]
    for row in found:
        values: dict[str, Any] = {"replied_at": at}
        if row["status"] not in KEEP_STATUS:
            values["status"] = "replied"
        conn.execute(update(sends).where(sends.c.id == row["id"]).values(**values))
    return found
