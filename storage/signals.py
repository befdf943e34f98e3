"""SQL of the live signals (``GET /api/v1/stream``): the event log read for signals, and
the few rows that make an event worth showing (subject, counterpart, record names, owners).

Two readers, both over the index ``ix_events_org_id (org_id, id)``:

* :func:`read_new` — the process's one poller asks, each tick, for the signal
  events after its cursor of every org that has a stream open: one statement
  per tick, whatever the number of streams.  ``upto`` is a :func:`last_id`
  read first: ids are visible in commit order (see :mod:`storage.events`), so
  nothing at or below it can still appear and the cursor may move to it.
* :func:`read_back` — a reconnecting stream's replay, newest first, so the
  bound (the newest N signals) is met without reading the whole window.

:func:`details` then reads, per org, what the events do not carry.  Every
statement names its org.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.events import Event, EventType
from storage.schema import contacts, deals, events, leads, messages, orgs
from storage.schema_sending import sends

#: The event types a signal can come from (``email.filed`` only when incoming, on records;
#: opens and clicks only when human): filtering by type in SQL keeps the rest off the wire.
SOURCE_TYPES = (
    EventType.EMAIL_FILED,
    EventType.EMAIL_REPLIED,
    EventType.EMAIL_OPENED,
    EventType.EMAIL_CLICKED,
    EventType.EMAIL_BOUNCED,
)
_TYPES = sorted(str(t) for t in SOURCE_TYPES)
#: Record modules whose names and owners :func:`details` reads.
_RECORD_TABLES = {"leads": leads, "contacts": contacts, "deals": deals}


def _event(row: Any) -> Event:
    return Event(row["id"], row["type"], row["at"], row["org_id"], row["data"])


async def last_id(conn: AsyncConnection) -> int:
    """The newest event's id (0 for an empty log); the primary key answers it."""
    return (await conn.execute(select(func.max(events.c.id)))).scalar() or 0


async def read_new(
    conn: AsyncConnection, *, org_ids: Collection[int], after: int, upto: int, limit: int
) -> list[Event]:
    """Signal-type events of ``org_ids`` with ``after`` < id <= ``upto``, oldest first."""
    if not org_ids or upto <= after:
        return []
    q = (
        select(events)
        .where(
            events.c.org_id.in_(sorted(org_ids)),
            events.c.id > after,
            events.c.id <= upto,
            events.c.type.in_(_TYPES),
        )
        .order_by(events.c.id)
        .limit(limit)
    )
    return [_event(r) for r in (await conn.execute(q)).mappings()]


async def read_back(
    conn: AsyncConnection,
    *,
    org_id: int,
    after: int,
    before: int,
    since: datetime,
    limit: int,
) -> list[Event]:
    """One org's signal-type events with ``after`` < id < ``before`` and ``at`` >= ``since``,
    newest first (a replay pages backwards from the live cursor)."""
    if before - 1 <= after:
        return []
    q = (
        select(events)
        .where(
            events.c.org_id == org_id,
            events.c.id > after,
            events.c.id < before,
            events.c.type.in_(_TYPES),
            events.c.at >= since,
        )
        .order_by(events.c.id.desc())
        .limit(limit)
    )
    return [_event(r) for r in (await conn.execute(q)).mappings()]


@dataclass(frozen=True, slots=True)
class Details:
    """What one org's signals need beyond their events, keyed by id.

    ``sends``: id → user_id, subject, to_email, module, record_id, deal_id;
    ``messages``: id → user_id, subject, from_addr; ``records``: (module, id) →
    ``{"name", "owner_id"}`` (leads and contacts named by the org's locale order
    by the caller: ``first_name``/``last_name`` are given); ``locale``: the org's.
    """

    sends: dict[int, dict[str, Any]] = field(default_factory=dict)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    records: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    locale: str = "ja"


async def details(
    conn: AsyncConnection,
    org_id: int,
    *,
    send_ids: Iterable[int],
    message_ids: Iterable[int],
    records: Iterable[tuple[str, int]],
) -> Details:
    """Sends, filed messages and records of one org by id: at most one statement per table.

    The records of the sends read here are included, so a caller passes what
    the events name and gets the sends' records (and their owners) as well.
    """
    locale = (await conn.execute(select(orgs.c.locale).where(orgs.c.id == org_id))).scalar()
    out = Details(locale=locale or "ja")
    wanted_sends = sorted({s for s in send_ids if isinstance(s, int)})
    if wanted_sends:
        q = select(
            sends.c.id,
            sends.c.user_id,
            sends.c.subject,
            sends.c.to_email,
            sends.c.module,
            sends.c.record_id,
            sends.c.deal_id,
        ).where(sends.c.org_id == org_id, sends.c.id.in_(wanted_sends))
        for row in (await conn.execute(q)).mappings():
            out.sends[row["id"]] = dict(row)
    wanted_messages = sorted({m for m in message_ids if isinstance(m, int)})
    if wanted_messages:
        q = select(
            messages.c.id, messages.c.user_id, messages.c.subject, messages.c.from_addr
        ).where(messages.c.org_id == org_id, messages.c.id.in_(wanted_messages))
        for row in (await conn.execute(q)).mappings():
            out.messages[row["id"]] = dict(row)
    by_module: dict[str, set[int]] = {}
    for module, rid in records:
        by_module.setdefault(module, set()).add(rid)
    for send in out.sends.values():
        if send["module"] and send["record_id"] is not None:
            by_module.setdefault(send["module"], set()).add(send["record_id"])
        if send["deal_id"] is not None:
            by_module.setdefault("deals", set()).add(send["deal_id"])
    for module, ids in sorted(by_module.items()):
        table = _RECORD_TABLES.get(module)
        valid = sorted(i for i in ids if isinstance(i, int))
        if table is None or not valid:
            continue
        names = (table.c.name,) if module == "deals" else (table.c.first_name, table.c.last_name)
        q = select(table.c.id, table.c.owner_id, *names).where(
            table.c.org_id == org_id, table.c.id.in_(valid)
        )
        for row in (await conn.execute(q)).mappings():
            out.records[(module, row["id"])] = dict(row)
    return out
