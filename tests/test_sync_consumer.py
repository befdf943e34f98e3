"""The consumer runtime over real databases (SQLite and PostgreSQL): offsets move with effects.

A recording consumer writes each event it applies into a table keyed by
(consumer, event id), so applying an event twice is a primary-key violation
and a skipped event is a missing row.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

import pytest
from sqlalchemy import Connection, text

from gateway.clock import SystemClock
from gateway.org import admin
from storage import consumers, events, payloads
from storage.db import Database, StorageUnavailable
from storage.events import Event, EventType
from storage.migrate import upgrade
from sync.consumer import Consumer, drain_all

APPLIED = "test_applied_events"


class Recording(Consumer):
    """Records what it applies; ``crash_on`` loses the connection at the first try of that event."""

    def __init__(
        self,
        db: Database,
        name: str,
        types: Iterable[EventType],
        *,
        batch: int = 3,
        crash_on: int | None = None,
    ) -> None:
        super().__init__(db, SystemClock(), batch=batch, poll_interval=0.05)
        self.name = name
        self.types = frozenset(types)
        self.crash_on = crash_on

    def apply(self, conn: Connection, event: Event) -> None:
        conn.execute(
            text(f"INSERT INTO {APPLIED} (consumer, event_id, type) VALUES (:c, :e, :t)"),  # noqa: S608
            {"c": self.name, "e": event.id, "t": event.type},
        )
        if event.id == self.crash_on:
            self.crash_on = None
            # The connection is lost (an outage, not the event's fault): the round dies whole.
            raise ConnectionError("crashed mid-batch")


@pytest.fixture
async def db(database_url):
    database = Database(database_url)
    await upgrade(database)

    def make_table(conn: Connection) -> None:
        conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {APPLIED} (consumer VARCHAR(100), event_id BIGINT,"
                " type VARCHAR(40), PRIMARY KEY (consumer, event_id))"
            )
        )

    await database.run_write(make_table)
    yield database
    await database.dispose()


async def new_org(db: Database) -> int:
    org = await admin.create_org(db, f"Consumers {uuid.uuid4().hex[:8]}", plan="professional")
    return org["id"]


async def append(db: Database, org_id: int, kinds: str) -> list[int]:
    """Append one event per letter: ``l`` suppression.lifted, ``r`` record.created."""
    new = []
    for i, kind in enumerate(kinds):
        if kind == "l":
            new.append(
                payloads.suppression_lifted(
                    org_id, email=f"a{i}@example.jp", reason="manual", user_id=None
                )
            )
        else:
            new.append(
                payloads.record_event(
                    EventType.RECORD_CREATED, org_id, module="leads", record_id=i, source="api"
                )
            )

    def write(conn: Connection) -> list[int]:
        before = events.last_id(conn)
        events.append_sync(conn, new)
        return list(range(before + 1, events.last_id(conn) + 1))

    return await db.run_write(write)


async def applied(db: Database, consumer: str) -> list[int]:
    def read(conn: Connection) -> list[int]:
        q = text(f"SELECT event_id FROM {APPLIED} WHERE consumer = :c ORDER BY event_id")  # noqa: S608
        return [r[0] for r in conn.execute(q, {"c": consumer})]

    return await db.run_read(read)


async def offset(db: Database, consumer: str) -> int:
    return await db.run_read(consumers.position, consumer)


async def at_the_end(db: Database) -> str:
    """A new consumer name whose offset stands at the log's end (earlier tests' events)."""
    name = f"test-{uuid.uuid4().hex[:10]}"

    def prime(conn: Connection) -> None:
        now = SystemClock().now()
        held = consumers.hold(conn, name, now)
        consumers.advance(conn, name, expected=held, to=events.last_id(conn), now=now)

    await db.run_write(prime)
    return name


async def test_a_new_consumer_applies_every_wanted_event_once_in_order(db):
    org = await new_org(db)
    ids = await append(db, org, "lrlrrllrlr")
    wanted = [i for i, k in zip(ids, "lrlrrllrlr", strict=True) if k == "l"]
    consumer = Recording(
        db, f"test-{uuid.uuid4().hex[:10]}", {EventType.SUPPRESSION_LIFTED}, batch=2
    )

    assert await offset(db, consumer.name) == 0  # a new consumer starts at the beginning
    assert await consumer.drain() >= len(wanted)

    mine = [e for e in await applied(db, consumer.name) if e >= ids[0]]
    assert mine == wanted
    assert await offset(db, consumer.name) == ids[-1]
    assert await consumer.drain() == 0  # caught up: nothing applied again


async def test_events_of_other_types_move_the_offset_without_being_applied(db):
    org = await new_org(db)
    consumer = Recording(db, await at_the_end(db), {EventType.SUPPRESSION_LIFTED})
    ids = await append(db, org, "rrrrr")

    assert await consumer.run_once() == 0
    assert await offset(db, consumer.name) == ids[-1]
    assert await applied(db, consumer.name) == []


async def test_a_crash_mid_batch_applies_nothing_of_it_and_the_retry_applies_all(db):
    org = await new_org(db)
    name = await at_the_end(db)
    start = await offset(db, name)
    ids = await append(db, org, "rrrrrr")
    consumer = Recording(db, name, {EventType.RECORD_CREATED}, batch=3, crash_on=ids[4])

    assert await consumer.run_once() == 3  # the first batch commits
    with pytest.raises((ConnectionError, StorageUnavailable), match="crashed"):
        await consumer.run_once()  # the second dies after applying ids[3]
    assert await applied(db, name) == ids[:3]
    assert await offset(db, name) == ids[2]

    assert await consumer.drain() == 3
    assert await applied(db, name) == ids
    assert start < await offset(db, name) == ids[-1]


async def test_two_copies_of_one_consumer_never_both_apply_an_event(db):
    org = await new_org(db)
    name = await at_the_end(db)
    ids = await append(db, org, "r" * 60)
    one, two = (Recording(db, name, {EventType.RECORD_CREATED}, batch=4) for _ in range(2))

    counts = await asyncio.gather(one.drain(), two.drain(), one.drain(), two.drain())

    assert sum(counts) == len(ids)  # a double application would have raised instead
    assert await applied(db, name) == ids


async def test_the_offset_only_moves_from_where_it_was_read(db):
    name = await at_the_end(db)
    start = await offset(db, name)

    def race(conn: Connection) -> None:
        now = SystemClock().now()
        held = consumers.hold(conn, name, now)
        consumers.advance(conn, name, expected=held, to=held + 5, now=now)
        with pytest.raises(consumers.OffsetMoved):
            consumers.advance(conn, name, expected=held, to=held + 9, now=now)

    await db.run_write(race)
    assert await offset(db, name) == start + 5


async def test_the_running_loop_applies_events_as_they_arrive_and_stops_cleanly(db):
    org = await new_org(db)
    name = await at_the_end(db)
    consumer = Recording(db, name, {EventType.SUPPRESSION_LIFTED})
    await consumer.start()
    try:
        ids = await append(db, org, "lll")
        consumer.wake()
        for _ in range(200):
            if await applied(db, name) == ids:
                break
            await asyncio.sleep(0.02)
        assert await applied(db, name) == ids
        assert consumer.healthy
    finally:
        await consumer.stop(deadline=5)
    assert not consumer.running


async def test_drain_all_returns_only_when_every_consumer_has_caught_up(db):
    org = await new_org(db)
    first = Recording(db, await at_the_end(db), {EventType.SUPPRESSION_LIFTED})
    second = Recording(db, await at_the_end(db), {EventType.RECORD_CREATED})
    ids = await append(db, org, "lrlr")

    assert await drain_all([first, second]) == 4
    assert await applied(db, first.name) == [ids[0], ids[2]]
    assert await applied(db, second.name) == [ids[1], ids[3]]
