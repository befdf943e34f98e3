"""The ordered event log every consumer reads.

Ids must appear to readers in commit order, or a consumer that stored offset
N could miss an event with a smaller id committed after it.  SQLite has one
writer, so that holds by construction.  On PostgreSQL a transaction-scoped
advisory lock serialises the (short) tail of the transactions that append
events: take it as the last step before commit, via :func:`append`.

Readers: the API pages through one org's log with :func:`read_after`;
consumers (``sync/``) read every org's with :func:`read_after_sync` up to a
:func:`last_id`, from an offset kept by :mod:`storage.consumers`.  Each type's
data fields are documented in ``docs/events.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.lean import db_json, db_time, driver_sql
from storage.schema import events
from storage.types import utcnow

EVENT_LOG_LOCK = 0x6D61696C  # "mail"


class EventType(StrEnum):
    """Every type the log holds; ``docs/events.md`` documents each one's data fields.

    Payloads are built only by :mod:`storage.payloads` (one builder per subject),
    so every writer of a type produces the same fields.
    """

    EMAIL_FILED = "email.filed"
    EMAIL_RECEIVED = "email.received"
    EMAIL_SENT = "email.sent"
    EMAIL_DEFERRED = "email.deferred"
    EMAIL_FAILED = "email.failed"
    EMAIL_OPENED = "email.opened"
    EMAIL_CLICKED = "email.clicked"
    EMAIL_REPLIED = "email.replied"
    EMAIL_BOUNCED = "email.bounced"
    EMAIL_COMPLAINED = "email.complained"
    EMAIL_UNSUBSCRIBED = "email.unsubscribed"
    RECORD_CREATED = "record.created"
    RECORD_UPDATED = "record.updated"
    RECORD_DELETED = "record.deleted"
    RECORD_CONVERTED = "record.converted"
    SUPPRESSION_LIFTED = "suppression.lifted"
    RELAY_REFUSED = "relay.refused"
    QUOTA_WARNING = "quota.warning"
    QUOTA_EXHAUSTED = "quota.exhausted"
    CAMPAIGN_SENT = "campaign.sent"
    SYNC_RUN = "sync.run"
    WEBHOOK_DISABLED = "webhook.disabled"


EVENT_TYPES = frozenset(t.value for t in EventType)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; build it with :mod:`storage.payloads`, not by hand."""

    org_id: int
    type: EventType
    data: dict[str, Any] = field(default_factory=dict)
    at: datetime | None = None


_EVENT_COLUMNS = ("org_id", "type", "at", "data")
# ``inline``: no RETURNING of the new ids, which nobody reads.
_INSERT_EVENT = insert(events).values({c: bindparam(c) for c in _EVENT_COLUMNS}).inline()


def append_rows(conn: Connection, rows: Sequence[tuple[int, str, Any, str]]) -> None:
    """Append (org_id, type, time in driver terms, JSON text) rows; last, before commit.

    On PostgreSQL the transaction first takes the event-log advisory lock, so ids
    become visible in commit order (see the module docstring).
    """
    if not rows:
        return
    for row in rows:
        if row[1] not in EVENT_TYPES:
            raise ValueError(f"unknown event type {row[1]!r}")
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENT_LOG_LOCK})
    sql = driver_sql(conn, "insert_event", _INSERT_EVENT, _EVENT_COLUMNS)
    conn.exec_driver_sql(sql, list(rows))


def append_sync(conn: Connection, new: Sequence[NewEvent]) -> None:
    """Append events in the caller's transaction; call it last, just before commit."""
    if not new:
        return
    now = utcnow()
    to_db = db_time(conn)
    append_rows(conn, [(e.org_id, str(e.type), to_db(e.at or now), db_json(e.data)) for e in new])


async def append(conn: AsyncConnection, new: Sequence[NewEvent]) -> None:
    """:func:`append_sync` for async callers (the API)."""
    if new:
        await conn.run_sync(append_sync, new)


@dataclass(frozen=True, slots=True)
class Event:
    """One event as read back from the log (consumers get these; the API their envelope)."""

    id: int
    type: str
    at: datetime
    org_id: int
    data: dict[str, Any]

    def envelope(self) -> dict[str, Any]:
        """The event as ``GET /api/v1/events`` and webhook bodies show it."""
        return {
            "id": self.id,
            "type": self.type,
            "at": self.at.isoformat(),
            "org_id": self.org_id,
            "data": self.data,
        }


def _after(
    after: int,
    limit: int,
    *,
    org_id: int | None = None,
    types: Iterable[str] | None = None,
    upto: int | None = None,
) -> Select:
    q = select(events).where(events.c.id > after).order_by(events.c.id).limit(limit)
    if upto is not None:
        q = q.where(events.c.id <= upto)
    if org_id is not None:
        q = q.where(events.c.org_id == org_id)
    if types is not None:
        q = q.where(events.c.type.in_(sorted(str(t) for t in types)))
    return q


def _event(row: Any) -> Event:
    return Event(row["id"], row["type"], row["at"], row["org_id"], row["data"])


def last_id(conn: Connection) -> int:
    """The newest event's id (0 for an empty log): every smaller id is already visible."""
    return conn.execute(select(func.max(events.c.id))).scalar() or 0


def read_after_sync(
    conn: Connection,
    *,
    after: int,
    upto: int,
    limit: int,
    types: Iterable[str] | None = None,
) -> list[Event]:
    """Events with ``after`` < id <= ``upto`` in id order, of ``types`` only (consumers).

    ``upto`` is a :func:`last_id` read beforehand: since ids are visible in
    commit order, nothing at or below it can still appear, so a consumer that
    found fewer than ``limit`` events of its types may move its offset to it.
    """
    q = _after(after, limit, types=types, upto=upto)
    return [_event(r) for r in conn.execute(q).mappings()]


async def read_after(
    conn: AsyncConnection,
    *,
    after: int,
    limit: int,
    org_id: int | None = None,
    types: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Envelopes of events with id > ``after`` in id order; ``org_id`` None reads every org."""
    q = _after(after, limit, org_id=org_id, types=types or None)
    return [_event(r).envelope() for r in (await conn.execute(q)).mappings()]
