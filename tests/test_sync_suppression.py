"""Bounce suppression: the pure decision, and the consumer applying it over real databases."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, select

from gateway.bounces import BounceKind
from gateway.clock import SystemClock
from gateway.org import admin
from storage import bounce_store, events
from storage.db import Database
from storage.events import Event, EventType
from storage.migrate import upgrade
from storage.payloads import send_event
from storage.schema_sending import suppressions
from sync.suppression import Bounce, SoftBounceRule, Suppression, SuppressionConsumer, decide

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RULE = SoftBounceRule()


def bounce(kind: BounceKind, **kw) -> Bounce:
    return Bounce(org_id=1, email="x@example.jp", kind=kind, at=T0, **kw)


# -- the decision (pure) --------------------------------------------------------------


def test_a_hard_bounce_suppresses_at_once_with_its_status():
    got = decide(bounce(BounceKind.HARD, status="5.1.1", diagnostic="550 User unknown"), 0, RULE)
    assert got == Suppression("hard_bounce", "5.1.1 550 User unknown")


def test_a_complaint_suppresses_at_once_with_its_feedback_type():
    got = decide(bounce(BounceKind.COMPLAINT, feedback_type="abuse"), 0, RULE)
    assert got == Suppression("complaint", "abuse")


@pytest.mark.parametrize("count", [0, 1, 2])
def test_soft_bounces_below_the_limit_suppress_nothing(count):
    assert decide(bounce(BounceKind.SOFT), count, RULE) is None


@pytest.mark.parametrize("count", [3, 4])
def test_the_third_soft_bounce_within_the_window_suppresses(count):
    got = decide(bounce(BounceKind.SOFT), count, RULE)
    assert got == Suppression("soft_bounce", "3 soft bounces within 7 days")


def test_the_soft_limit_is_the_rules():
    assert decide(bounce(BounceKind.SOFT), 1, SoftBounceRule(limit=1)) is not None


def test_bounce_is_read_from_either_event_type():
    bounced = Event(
        7,
        EventType.EMAIL_BOUNCED,
        T0,
        3,
        {"send_id": 9, "email": "a@b.jp", "type": "soft", "status": "4.2.2", "diagnostic": "d"},
    )
    complained = Event(
        8,
        EventType.EMAIL_COMPLAINED,
        T0,
        3,
        {"send_id": None, "email": "a@b.jp", "feedback_type": "abuse"},
    )
    assert Bounce.from_event(bounced) == Bounce(
        3, "a@b.jp", BounceKind.SOFT, T0, send_id=9, status="4.2.2", diagnostic="d"
    )
    assert Bounce.from_event(complained) == Bounce(
        3, "a@b.jp", BounceKind.COMPLAINT, T0, feedback_type="abuse"
    )


# -- the consumer over a real database ------------------------------------------------


@pytest.fixture
async def db(database_url):
    database = Database(database_url)
    await upgrade(database)
    yield database
    await database.dispose()


async def record_bounces(db: Database, org_id: int, email: str, seen: list[tuple[str, datetime]]):
    """Record bounces as bounce processing does: a ``bounces`` row and its event, same time."""

    def write(conn: Connection) -> None:
        new = []
        for kind, at in seen:
            bounce_store.record(conn, org_id=org_id, email_norm=email, kind=kind, at=at)
            event_type = (
                EventType.EMAIL_COMPLAINED if kind == "complaint" else EventType.EMAIL_BOUNCED
            )
            extra = {} if kind == "complaint" else {"type": kind}
            subject = {"id": None, "org_id": org_id, "to": email}
            new.append(send_event(event_type, subject, at=at, email=email, status="", **extra))
        events.append_sync(conn, new)

    await db.run_write(write)


async def suppressed(db: Database, org_id: int) -> dict[str, str]:
    def read(conn: Connection) -> dict[str, str]:
        q = select(suppressions.c.email_norm, suppressions.c.reason).where(
            suppressions.c.org_id == org_id
        )
        return dict(conn.execute(q).all())

    return await db.run_read(read)


async def new_org(db: Database) -> int:
    return (await admin.create_org(db, f"Supp {uuid.uuid4().hex[:8]}", plan="standard"))["id"]


async def test_a_late_consumer_judges_each_soft_bounce_as_of_its_own_time(db):
    org = await new_org(db)
    day = timedelta(days=1)
    # Two soft bounces, then a third eight days after the first: never three within 7 days.
    await record_bounces(
        db, org, "spread@example.jp", [("soft", T0), ("soft", T0 + day), ("soft", T0 + 8 * day)]
    )
    # Three within two days: the third suppresses.
    await record_bounces(db, org, "full@example.jp", [("soft", T0 + i * day) for i in range(3)])
    # The consumer runs only now, after all of them were recorded.
    await SuppressionConsumer(db, SystemClock()).drain()

    assert await suppressed(db, org) == {"full@example.jp": "soft_bounce"}


async def test_hard_bounces_and_complaints_suppress_and_the_first_reason_stays(db):
    org = await new_org(db)
    await record_bounces(db, org, "gone@example.jp", [("hard", T0), ("complaint", T0)])
    await record_bounces(db, org, "angry@example.jp", [("complaint", T0)])
    consumer = SuppressionConsumer(db, SystemClock())
    await consumer.drain()
    await consumer.drain()

    assert await suppressed(db, org) == {
        "gone@example.jp": "hard_bounce",
        "angry@example.jp": "complaint",
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_upgraded_database_does_not_act_on_bounces_already_acted_on(backend, tmp_path):
    """Before the consumer, bounce processing suppressed by itself: upgrading must not replay
    those bounces (it would re-suppress addresses lifted since)."""
    from tests.support.databases import fresh_database

    async def go(url: str) -> None:
        db = Database(url)
        try:
            await upgrade(db, "0008_ingest_spool")
            org = await new_org(db)
            await record_bounces(db, org, "lifted@example.jp", [("hard", T0)])
            await upgrade(db)
            await SuppressionConsumer(db, SystemClock()).drain()
            assert await suppressed(db, org) == {}
            await record_bounces(db, org, "new@example.jp", [("hard", T0)])
            await SuppressionConsumer(db, SystemClock()).drain()
            assert await suppressed(db, org) == {"new@example.jp": "hard_bounce"}
        finally:
            await db.dispose()

    with fresh_database(backend, tmp_path) as url:
        asyncio.run(go(url))
