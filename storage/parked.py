"""Events a consumer could not apply, set aside with their error (``parked_events``).

A consumer parks an event in the same transaction as it moves its offset past
it (:mod:`sync.consumer`), so the event is either still ahead of the offset or
here, never lost.  A person then replays it (applies it again once the cause
is fixed) or skips it; ``resolution`` says which (NULL while it is parked).
One row per (consumer, event): parking an event again (a replay of the log
from offset 0 that fails on it once more) re-opens its row.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from storage.schema import parked_events


class Resolution(StrEnum):
    """What a person did with a parked event (``parked_events.resolution``)."""

    REPLAYED = "replayed"
    SKIPPED = "skipped"


def park(
    conn: Connection,
    *,
    consumer: str,
    event_id: int,
    org_id: int | None,
    event_type: str,
    error: str,
    attempts: int,
    now: datetime,
) -> int:
    """Set the event aside (or re-open its row); the parked row's id.

    Called under the consumer's held offset (:func:`storage.consumers.hold`),
    so no other copy of the consumer parks the same event at the same time.
    """
    found = conn.execute(
        select(parked_events.c.id).where(
            parked_events.c.consumer == consumer, parked_events.c.event_id == event_id
        )
    ).scalar()
    values = {
        "error": error,
        "attempts": attempts,
        "parked_at": now,
        "resolution": None,
        "resolved_at": None,
    }
    if found is not None:
        conn.execute(update(parked_events).where(parked_events.c.id == found).values(values))
        return found
    res = conn.execute(
        insert(parked_events).values(
            consumer=consumer,
            event_id=event_id,
            org_id=org_id,
            event_type=event_type,
            **values,
        )
    )
    return res.inserted_primary_key[0]


def get(conn: Connection, parked_id: int, *, lock: bool = False) -> dict[str, Any] | None:
    """One parked row (any resolution); ``lock`` holds it until the transaction ends."""
    q = select(parked_events).where(parked_events.c.id == parked_id)
    if lock and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def listing(
    conn: Connection,
    *,
    consumer: str | None = None,
    org_id: int | None = None,
    everything: bool = False,
    after: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Parked rows by id (oldest first), still open unless ``everything``; ``org_id`` scopes."""
    q = (
        select(parked_events)
        .where(parked_events.c.id > after)
        .order_by(parked_events.c.id)
        .limit(limit)
    )
    if consumer is not None:
        q = q.where(parked_events.c.consumer == consumer)
    if org_id is not None:
        q = q.where(parked_events.c.org_id == org_id)
    if not everything:
        q = q.where(parked_events.c.resolution.is_(None))
    return [dict(r) for r in conn.execute(q).mappings()]


def open_counts(conn: Connection) -> dict[str, int]:
    """Consumer → how many of its events are parked and not yet replayed or skipped."""
    q = (
        select(parked_events.c.consumer, func.count())
        .where(parked_events.c.resolution.is_(None))
        .group_by(parked_events.c.consumer)
    )
    return {name: n for name, n in conn.execute(q)}


def resolve(conn: Connection, parked_id: int, resolution: Resolution, now: datetime) -> bool:
    """Mark an open row replayed or skipped; False when it was not open (someone was first)."""
    res = conn.execute(
        update(parked_events)
        .where(parked_events.c.id == parked_id, parked_events.c.resolution.is_(None))
        .values(resolution=resolution.value, resolved_at=now)
    )
    return res.rowcount == 1


def failed_again(conn: Connection, parked_id: int, error: str) -> None:
    """A replay failed: the row stays parked with the new error and one more attempt."""
    conn.execute(
        update(parked_events)
        .where(parked_events.c.id == parked_id)
        .values(error=error, attempts=parked_events.c.attempts + 1)
    )
