"""A consumer parks an event it cannot apply, and goes on (issue #13: "one bad item never
takes its neighbours with it"); replay and skip; an outage parks nothing.

Over real databases (SQLite and PostgreSQL).  A recording consumer writes each event it
applies into a table keyed by (consumer, event id), so an event applied twice is a
primary-key violation and a skipped one a missing row; it raises on the event ids it is
told are poison.  The real suppression consumer is made to fail the way a deployment
can: a malformed bounce in the log, and a database trigger that refuses its write (which
an operator then drops, and replays).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

import pytest
from sqlalchemy import Connection, create_engine, func, select, text

from gateway.clock import SystemClock
from gateway.org import admin
from storage import consumers, events, payloads
from storage.db import Database
from storage.events import Event, EventType, NewEvent
from storage.migrate import upgrade
from storage.schema import parked_events
from storage.schema_sending import suppressions
from sync.consumer import (
    AlreadyResolved,
    Consumer,
    EventFailed,
    ParkedNotFound,
    ReplayFailed,
    error_text,
    replay_parked,
    skip_parked,
)
from sync.suppression import SuppressionConsumer

APPLIED = "test_parked_applied"


class Recording(Consumer):
    """Records what it applies and causes one ``suppression.lifted`` per applied event.

    ``poison`` holds event ids it raises on; ``outage`` ids on which the database goes
    away (PostgreSQL: this connection is terminated; SQLite: the file turns read-only).
    """

    types = frozenset({EventType.RECORD_CREATED})

    def __init__(self, db: Database, name: str, *, batch: int = 10) -> None:
        super().__init__(db, SystemClock(), batch=batch, poll_interval=0.05)
        self.name = name
        self.poison: set[int] = set()
        self.outage: set[int] = set()
        self.busy: set[int] = set()

    def apply_batch(self, conn: Connection, batch: Iterable[Event]) -> list[NewEvent]:
        caused = []
        for event in batch:
            if event.id in self.outage:
                lose_storage(conn)
            if event.id in self.busy:
                contend(conn)
            if event.id in self.poison:
                raise ValueError(f"cannot apply event {event.id}: lead has no owner")
            conn.execute(
                text(f"INSERT INTO {APPLIED} (consumer, event_id) VALUES (:c, :e)"),  # noqa: S608
                {"c": self.name, "e": event.id},
            )
            caused.append(
                payloads.suppression_lifted(
                    event.org_id, email=f"caused-{event.id}@example.jp", reason="t", user_id=None
                )
            )
        return caused


def lose_storage(conn: Connection) -> None:
    """The database goes away under the round, as each engine shows it."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        return
    conn.exec_driver_sql("PRAGMA query_only = ON")  # what a file remounted read-only says
    try:
        conn.execute(
            text(f"INSERT INTO {APPLIED} (consumer, event_id) VALUES ('x', -1)")  # noqa: S608
        )
    finally:
        conn.exec_driver_sql("PRAGMA query_only = OFF")


def contend(conn: Connection) -> None:
    """The database is busy, not broken: PostgreSQL reports a deadlock (SQLSTATE 40P01),
    SQLite's lock is held (here by this round, against a second writer that does not wait)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' "
            "USING ERRCODE = 'deadlock_detected'; END $$"
        )
        return
    other = create_engine(f"sqlite:///{conn.engine.url.database}", connect_args={"timeout": 0})
    try:
        with other.begin() as second:
            second.execute(
                text(f"INSERT INTO {APPLIED} (consumer, event_id) VALUES ('y', -2)")  # noqa: S608
            )
    finally:
        other.dispose()


@pytest.fixture
async def db(database_url):
    database = Database(database_url)
    await upgrade(database)

    def make_table(conn: Connection) -> None:
        conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {APPLIED} (consumer VARCHAR(100), event_id BIGINT,"
                " PRIMARY KEY (consumer, event_id))"
            )
        )

    await database.run_write(make_table)
    yield database
    await database.dispose()


async def new_org(db: Database) -> int:
    org = await admin.create_org(db, f"Parked {uuid.uuid4().hex[:8]}", plan="professional")
    return org["id"]


async def append(db: Database, new: list[NewEvent]) -> list[int]:
    def write(conn: Connection) -> list[int]:
        before = events.last_id(conn)
        events.append_sync(conn, new)
        return list(range(before + 1, events.last_id(conn) + 1))

    return await db.run_write(write)


async def leads_created(db: Database, org_id: int, n: int) -> list[int]:
    return await append(
        db,
        [
            payloads.record_event(
                EventType.RECORD_CREATED, org_id, module="leads", record_id=i, source="api"
            )
            for i in range(n)
        ],
    )


async def recording(db: Database) -> Recording:
    """A new recording consumer whose offset stands at the log's end."""
    consumer = Recording(db, f"test-{uuid.uuid4().hex[:10]}")

    def prime(conn: Connection) -> None:
        now = SystemClock().now()
        held = consumers.hold(conn, consumer.name, now)
        consumers.advance(conn, consumer.name, expected=held, to=events.last_id(conn), now=now)

    await db.run_write(prime)
    return consumer


async def applied(db: Database, consumer: str) -> list[int]:
    def read(conn: Connection) -> list[int]:
        q = text(f"SELECT event_id FROM {APPLIED} WHERE consumer = :c ORDER BY event_id")  # noqa: S608
        return [r[0] for r in conn.execute(q, {"c": consumer})]

    return await db.run_read(read)


async def parked_rows(db: Database, consumer: str) -> list[dict]:
    def read(conn: Connection) -> list[dict]:
        q = select(parked_events).where(parked_events.c.consumer == consumer)
        return [dict(r) for r in conn.execute(q.order_by(parked_events.c.id)).mappings()]

    return await db.run_read(read)


async def offset(db: Database, consumer: str) -> int:
    return await db.run_read(consumers.position, consumer)


async def lifted_for(db: Database, ids: list[int]) -> list[int]:
    """Which of ``ids`` have the ``suppression.lifted`` event the recording consumer causes."""

    def read(conn: Connection) -> list[str]:
        q = select(events.events.c.data).where(
            events.events.c.type == EventType.SUPPRESSION_LIFTED.value
        )
        return [d["email"] for d in conn.execute(q).scalars()]

    emails = set(await db.run_read(read))
    return [i for i in ids if f"caused-{i}@example.jp" in emails]


async def until_parked(consumer: Consumer, rounds: int) -> list[EventFailed]:
    """Run ``rounds`` rounds; the failures the runner would back off on."""
    failures = []
    for _ in range(rounds):
        try:
            await consumer.run_once()
        except EventFailed as exc:
            failures.append(exc)
    return failures


async def test_a_poison_event_is_parked_with_its_error_and_its_neighbours_are_applied(db):
    org = await new_org(db)
    consumer = await recording(db)
    ids = await leads_created(db, org, 7)
    poison = ids[3]
    consumer.poison = {poison}

    with pytest.raises(EventFailed) as first:
        await consumer.run_once()
    # The events before it are committed at once; the offset stops just short of it.
    assert await applied(db, consumer.name) == ids[:3]
    assert await offset(db, consumer.name) == poison - 1
    assert (first.value.event_id, first.value.attempts) == (poison, 1)
    assert await parked_rows(db, consumer.name) == []  # not yet: it is retried first

    failures = await until_parked(consumer, 2)

    assert [f.attempts for f in failures] == [2]  # the third attempt parks it
    assert await applied(db, consumer.name) == [i for i in ids if i != poison]
    assert await offset(db, consumer.name) >= ids[-1]  # past it (and the events caused)
    [row] = await parked_rows(db, consumer.name)
    assert row["event_id"] == poison
    assert row["org_id"] == org
    assert row["event_type"] == "record.created"
    assert row["error"] == f"ValueError: cannot apply event {poison}: lead has no owner"
    assert row["attempts"] == consumer.max_attempts == 3
    assert row["resolution"] is None
    # What the good events caused is in the log; the poison caused nothing.
    assert await lifted_for(db, ids) == [i for i in ids if i != poison]
    assert await consumer.drain() == 0  # caught up


async def test_an_event_that_succeeds_on_a_retry_is_applied_not_parked(db):
    org = await new_org(db)
    consumer = await recording(db)
    ids = await leads_created(db, org, 4)
    consumer.poison = {ids[1]}

    assert len(await until_parked(consumer, 2)) == 2
    consumer.poison = set()  # whatever it needed arrived
    assert await consumer.run_once() == 3

    assert await applied(db, consumer.name) == ids
    assert await parked_rows(db, consumer.name) == []


async def test_an_outage_parks_nothing_and_the_events_are_applied_after_it(db):
    org = await new_org(db)
    consumer = await recording(db)
    ids = await leads_created(db, org, 5)
    consumer.outage = {ids[2]}

    for _ in range(consumer.max_attempts + 2):
        with pytest.raises(Exception) as lost:  # noqa: PT011 - each engine words it its way
            await consumer.run_once()
        assert not isinstance(lost.value, EventFailed)
    # The whole round failed each time: nothing applied, nothing parked, the offset put.
    assert await applied(db, consumer.name) == []
    assert await parked_rows(db, consumer.name) == []
    assert await offset(db, consumer.name) == ids[0] - 1

    consumer.outage = set()  # the database is back
    assert await consumer.run_once() == 5
    assert await applied(db, consumer.name) == ids
    assert await parked_rows(db, consumer.name) == []


async def test_a_busy_database_is_retried_as_an_outage_and_parks_nothing(db):
    org = await new_org(db)
    consumer = await recording(db)
    ids = await leads_created(db, org, 3)
    consumer.busy = {ids[1]}

    for _ in range(consumer.max_attempts + 1):
        with pytest.raises(Exception) as busy:  # noqa: PT011 - each engine words it its way
            await consumer.run_once()
        assert not isinstance(busy.value, EventFailed)
    assert await parked_rows(db, consumer.name) == []
    assert await applied(db, consumer.name) == []

    consumer.busy = set()
    assert await consumer.run_once() == 3
    assert await applied(db, consumer.name) == ids


async def test_two_poison_events_in_one_batch_are_parked_apart(db):
    org = await new_org(db)
    consumer = await recording(db)
    ids = await leads_created(db, org, 6)
    consumer.poison = {ids[1], ids[4]}

    await until_parked(consumer, 8)

    assert await applied(db, consumer.name) == [ids[0], ids[2], ids[3], ids[5]]
    assert [r["event_id"] for r in await parked_rows(db, consumer.name)] == [ids[1], ids[4]]
    assert await offset(db, consumer.name) >= ids[-1]  # past it (and the events caused)


async def test_two_copies_park_a_poison_event_once_and_apply_every_other_event_once(db):
    org = await new_org(db)
    one = await recording(db)
    two = Recording(db, one.name, batch=4)
    ids = await leads_created(db, org, 12)
    for copy in (one, two):
        copy.poison = {ids[5]}

    async def rounds(copy: Recording) -> None:
        await until_parked(copy, 8)

    await asyncio.gather(rounds(one), rounds(two))

    # An event applied twice would violate the table's key, fail, and be parked too.
    assert [r["event_id"] for r in await parked_rows(db, one.name)] == [ids[5]]
    assert await applied(db, one.name) == [i for i in ids if i != ids[5]]
    assert await offset(db, one.name) >= ids[-1]


async def test_replay_after_the_fix_applies_the_event_once_and_marks_it_replayed(db):
    org = await new_org(db)
    consumer = await recording(db)
    ids = await leads_created(db, org, 3)
    consumer.poison = {ids[1]}
    await until_parked(consumer, 3)
    [row] = await parked_rows(db, consumer.name)

    with pytest.raises(ReplayFailed, match="lead has no owner"):
        await consumer.replay(row["id"])  # not fixed yet: it stays parked, one more attempt
    [still] = await parked_rows(db, consumer.name)
    assert (still["resolution"], still["attempts"]) == (None, 4)

    consumer.poison = set()
    done = await consumer.replay(row["id"])

    assert done["resolution"] == "replayed"
    assert await applied(db, consumer.name) == ids  # a second application would have raised
    assert await lifted_for(db, [ids[1]]) == [ids[1]]  # what it causes is appended
    [after] = await parked_rows(db, consumer.name)
    assert after["resolution"] == "replayed" and after["resolved_at"] is not None
    with pytest.raises(AlreadyResolved):
        await consumer.replay(row["id"])
    assert await applied(db, consumer.name) == ids


async def test_skip_marks_the_event_skipped_and_it_is_never_applied(db):
    org = await new_org(db)
    consumer = await recording(db)
    ids = await leads_created(db, org, 2)
    consumer.poison = {ids[0]}
    await until_parked(consumer, 3)
    [row] = await parked_rows(db, consumer.name)

    with pytest.raises(ParkedNotFound):
        await skip_parked(db, SystemClock(), row["id"], org_id=await new_org(db))
    done = await skip_parked(db, SystemClock(), row["id"], org_id=org)

    assert done["resolution"] == "skipped"
    consumer.poison = set()
    assert await consumer.drain() == 0
    assert await applied(db, consumer.name) == [ids[1]]
    with pytest.raises(AlreadyResolved):
        await consumer.replay(row["id"])


# -- the real suppression consumer ---------------------------------------------------------


def bounce(org_id: int, email: str, kind: str = "hard") -> NewEvent:
    return payloads.bounce_event(
        org_id, send=None, email=email, kind=kind, status="5.1.1", reply_code="550"
    )


async def suppressed(db: Database, org_id: int) -> dict[str, str]:
    def read(conn: Connection) -> dict[str, str]:
        q = select(suppressions.c.email_norm, suppressions.c.reason).where(
            suppressions.c.org_id == org_id
        )
        return dict(conn.execute(q).all())

    return await db.run_read(read)


def freeze(conn: Connection, email: str) -> None:
    """A trigger refuses to suppress ``email`` (a DBA's rule the consumer does not know)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION test_frozen() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.email_norm = '{email}' THEN RAISE EXCEPTION 'address % is frozen', "
            "NEW.email_norm USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$ "
            "LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER test_frozen BEFORE INSERT ON suppressions "
            "FOR EACH ROW EXECUTE FUNCTION test_frozen()"
        )
        return
    conn.exec_driver_sql(
        "CREATE TRIGGER test_frozen BEFORE INSERT ON suppressions "
        f"WHEN NEW.email_norm = '{email}' BEGIN SELECT RAISE(ABORT, 'address is frozen'); END"
    )


def thaw(conn: Connection) -> None:
    suffix = " ON suppressions" if conn.dialect.name == "postgresql" else ""
    conn.exec_driver_sql(f"DROP TRIGGER test_frozen{suffix}")


async def test_the_suppression_consumer_parks_a_malformed_bounce_and_goes_on(db):
    org = await new_org(db)
    consumer = SuppressionConsumer(db, SystemClock())
    await consumer.drain()
    malformed = NewEvent(
        org, EventType.EMAIL_BOUNCED, {"email": "odd@example.jp", "type": "sideways"}
    )
    ids = await append(
        db, [bounce(org, "before@example.jp"), malformed, bounce(org, "after@example.jp")]
    )

    await until_parked(consumer, 3)

    assert await suppressed(db, org) == {
        "before@example.jp": "hard_bounce",
        "after@example.jp": "hard_bounce",
    }
    [row] = [r for r in await parked_rows(db, "suppression") if r["event_id"] == ids[1]]
    assert row["error"] == "ValueError: 'sideways' is not a valid BounceKind"
    assert await offset(db, "suppression") >= ids[-1]


async def test_a_refused_write_is_parked_then_replayed_once_after_the_fix(db):
    org = await new_org(db)
    consumer = SuppressionConsumer(db, SystemClock())
    await consumer.drain()
    await db.run_write(freeze, "frozen@example.jp")
    try:
        ids = await append(db, [bounce(org, "frozen@example.jp"), bounce(org, "ok@example.jp")])
        await until_parked(consumer, 3)
        assert await suppressed(db, org) == {"ok@example.jp": "hard_bounce"}
        [row] = [r for r in await parked_rows(db, "suppression") if r["event_id"] == ids[0]]
        # The driver's error: sqlite3's IntegrityError, asyncpg's CheckViolationError.
        assert row["error"].split(":")[0] in ("IntegrityError", "CheckViolationError")
        assert "frozen" in row["error"]
        assert "INSERT" not in row["error"]  # no statement, no parameters
        other = await new_org(db)
        with pytest.raises(ParkedNotFound):
            await replay_parked(db, SystemClock(), row["id"], org_id=other)
        with pytest.raises(ReplayFailed):
            await replay_parked(db, SystemClock(), row["id"], org_id=org)
    finally:
        await db.run_write(thaw)

    # Meanwhile the address bounced again and the normal flow suppressed it.
    await append(db, [bounce(org, "frozen@example.jp", kind="hard")])
    await consumer.drain()
    done = await replay_parked(db, SystemClock(), row["id"], org_id=org)

    assert done["resolution"] == "replayed"
    assert await suppressed(db, org) == {
        "frozen@example.jp": "hard_bounce",
        "ok@example.jp": "hard_bounce",
    }

    def count(conn: Connection) -> int:
        q = select(func.count()).where(suppressions.c.org_id == org)
        return conn.execute(q).scalar_one()

    assert await db.run_read(count) == 2  # the replay added nothing twice


def test_an_error_names_the_driver_error_bounded_without_statement_or_password():
    from sqlalchemy.exc import IntegrityError

    wrapped = IntegrityError(
        "INSERT INTO leads (email) VALUES (?)",
        ("secret@example.jp",),
        ValueError("duplicate key\nDETAIL: Key (email)=(secret@example.jp) exists"),
    )
    assert error_text(wrapped) == "ValueError: duplicate key"
    assert error_text(RuntimeError("to postgresql://mg:hunter2@db/x")) == (
        "RuntimeError: to postgresql://mg:***@db/x"
    )
    assert len(error_text(RuntimeError("x" * 5000))) == 500


async def test_an_operator_sees_lag_lists_replays_and_skips_from_the_command_line(db, tmp_path):
    from tests.test_cli import Mailgate

    org = await new_org(db)
    consumer = SuppressionConsumer(db, SystemClock())
    await consumer.drain()
    await db.run_write(freeze, "cli-frozen@example.jp")
    try:
        ids = await append(
            db, [bounce(org, "cli-frozen@example.jp"), NewEvent(org, EventType.EMAIL_BOUNCED, {})]
        )
        await until_parked(consumer, 5)
    finally:
        await db.run_write(thaw)
    mailgate = Mailgate(db.url, tmp_path)

    listed = mailgate("consumer", "parked", "--consumer", "suppression", "--json").json()
    mine = {p["event_id"]: p for p in listed if p["org_id"] == org}
    assert set(mine) == set(ids)
    assert mine[ids[1]]["error"] == "KeyError: 'type'"
    human = mailgate("consumer", "parked")
    assert human.code == 0 and f"event {ids[0]} email.bounced org {org}" in human.stdout
    lag = {r["consumer"]: r for r in mailgate("consumer", "lag", "--json").json()}
    assert lag["suppression"]["parked"] >= 2
    assert lag["suppression"]["lag"] == lag["suppression"]["head"] - lag["suppression"]["position"]

    replayed = mailgate("consumer", "replay", str(mine[ids[0]]["id"])).json()
    assert replayed["resolution"] == "replayed"
    assert await suppressed(db, org) == {"cli-frozen@example.jp": "hard_bounce"}
    again = mailgate("consumer", "replay", str(mine[ids[0]]["id"])).error_line()
    assert again == f"error: parked event {mine[ids[0]]['id']} was replayed already"

    still = mailgate("consumer", "replay", str(mine[ids[1]]["id"])).error_line()
    assert "failed again: KeyError: 'type'" in still  # the data is bad: it stays parked
    assert mailgate("consumer", "skip", str(mine[ids[1]]["id"])).json()["resolution"] == "skipped"
