"""The ordered event log every consumer reads.

Ids must appear to readers in commit order, or a consumer that stored offset
N could miss an event with a smaller id committed after it.  SQLite has one
writer, so that holds by construction.  On PostgreSQL a transaction-scoped
advisory lock serialises the (short) tail of the transactions that append
events: take it as the last step before commit, via :func:`append`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.schema import events
from storage.types import utcnow

EVENT_LOG_LOCK = 0x6D61696C  # "mail"

EVENT_TYPES = frozenset(
    {
        "email.filed",
        "email.received",
        "email.sent",
        "email.deferred",
        "email.failed",
        "email.opened",
        "email.clicked",
        "email.replied",
        "email.bounced",
        "email.complained",
        "email.unsubscribed",
        "record.created",
        "record.converted",
        "suppression.lifted",
        "quota.warning",
        "quota.exhausted",
        "sync.run",
    }
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    org_id: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None


def append_sync(conn: Connection, new: Sequence[NewEvent]) -> None:
    """Append events in the caller's transaction; call it last, just before commit."""
    if not new:
        return
    for ev in new:
        if ev.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {ev.type!r}")
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENT_LOG_LOCK})
    now = utcnow()
    conn.execute(
        insert(events),
        [{"org_id": e.org_id, "type": e.type, "data": e.data, "at": e.at or now} for e in new],
    )


async def append(conn: AsyncConnection, new: Sequence[NewEvent]) -> None:
    """:func:`append_sync` for async callers (the API)."""
    if new:
        await conn.run_sync(append_sync, new)


async def read_after(
    conn: AsyncConnection,
    *,
    after: int,
    limit: int,
    org_id: int | None = None,
    types: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Events with id > ``after`` in id order; ``org_id`` None reads every org (consumers)."""
    q = select(events).where(events.c.id > after).order_by(events.c.id).limit(limit)
    if org_id is not None:
        q = q.where(events.c.org_id == org_id)
    if types:
        q = q.where(events.c.type.in_(list(types)))
    rows = (await conn.execute(q)).mappings().all()
    return [
        {
            "id": r["id"],
            "type": r["type"],
            "at": r["at"].isoformat(),
            "org_id": r["org_id"],
            "data": r["data"],
        }
        for r in rows
    ]
