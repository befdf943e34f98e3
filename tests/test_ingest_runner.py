"""The ingest runner over a real database: leases, per-message failures, parking, replay."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from gateway.clock import FixedClock
from gateway.ingest.context import Batch, Flow
from gateway.ingest.pipeline import IN_TRANSACTION, Step
from gateway.ingest.runner import IngestRunner, ReplayError
from gateway.ingest.spool import Spool
from gateway.org import admin
from storage import inbound_store
from storage.db import Database
from storage.migrate import upgrade
from storage.schema import events, leads, messages

DOMAIN = "mailgate.test"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def migrated(database_url):
    async def go():
        db = Database(database_url)
        await upgrade(db)
        await db.dispose()

    run(go())
    return database_url


@pytest.fixture
def env(migrated):
    """A fresh org and user, and a database handle per test (each test runs its own loop)."""

    async def go():
        db = Database(migrated)
        org = await admin.create_org(
            db, f"Ingest {uuid.uuid4().hex[:6]}", plan="professional", timezone="UTC", domains=[]
        )
        email = f"rep-{uuid.uuid4().hex[:6]}@acme.example"
        user = await admin.create_user(db, str(org["id"]), email, name="Rep", mail_domain=DOMAIN)
        await db.dispose()
        return org, user

    org, user = run(go())
    return {"url": migrated, "org": org, "user": user}


def mail(env, subject: str, to: str | None = None, frm: str | None = None) -> bytes:
    to = to or f"{uuid.uuid4().hex[:8]}@client.example"
    frm = frm or env["user"]["email"]
    return (
        f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@acme.example>\r\n\r\nbody\r\n"
    ).encode()


def row(env, raw: bytes) -> dict:
    user = env["user"]
    return {
        "channel": "dropbox",
        "org_id": env["org"]["id"],
        "user_id": user["id"],
        "mail_from": user["email"],
        "rcpt_to": [user["dropbox_address"]],
        "raw": raw,
    }


async def store(db: Database, rows: list[dict]) -> None:
    spool = Spool(db)
    await spool.start()
    try:
        await spool.store(rows)
    finally:
        await spool.stop()


async def subjects(db: Database, org_id: int) -> list[str]:
    async with db.connect() as conn:
        q = select(messages.c.subject).where(messages.c.org_id == org_id).order_by(messages.c.id)
        return list((await conn.execute(q)).scalars())


async def kept(db: Database, state: str, user_id: int) -> list[dict]:
    rows = await db.run_read(inbound_store.list_state, state, 1000)
    return [r for r in rows if r["user_id"] == user_id]


def poison_step(conn, batch: Batch) -> Flow:
    """A step that breaks on one message only (as a bug on odd input would)."""
    for d in batch.live():
        if d.parsed.subject == "poison":
            raise ValueError("cannot handle this one")
    return batch.flow()


POISONED = (*IN_TRANSACTION[:4], Step("match", poison_step), *IN_TRANSACTION[4:])


def test_stored_mail_is_filed_once_with_its_events_and_leaves_the_spool(env):
    async def go():
        db = Database(env["url"])
        try:
            org_id = env["org"]["id"]
            target = f"new-{uuid.uuid4().hex[:6]}@client.example"
            first = mail(env, "one", to=target)
            await store(db, [row(env, first), row(env, mail(env, "two")), row(env, first)])
            runner = IngestRunner(db, mail_domain=DOMAIN)
            assert await runner.drain() == 3
            assert await db.run_read(inbound_store.count_pending) == 0
            assert sorted(await subjects(db, org_id)) == ["one", "two"]
            async with db.connect() as conn:
                types = [
                    (t, d)
                    for t, d in (
                        await conn.execute(
                            select(events.c.type, events.c.data).where(events.c.org_id == org_id)
                        )
                    ).all()
                ]
                lead_id = (
                    await conn.execute(select(leads.c.id).where(leads.c.email_norm == target))
                ).scalar_one()
            created = [d for t, d in types if t == "record.created" and d["id"] == lead_id]
            assert created and created[0]["changed"]["email"] == target
            assert "email_norm" not in created[0]["changed"]  # same fields as the API's events
            assert sum(t == "email.filed" for t, _ in types) == 2
        finally:
            await db.dispose()

    run(go())


def test_one_bad_message_never_takes_its_neighbours_and_is_parked_after_its_attempts(env):
    async def go():
        db = Database(env["url"])
        try:
            org_id, user_id = env["org"]["id"], env["user"]["id"]
            clock = FixedClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
            runner = IngestRunner(
                db, mail_domain=DOMAIN, clock=clock, max_attempts=2, steps=POISONED
            )
            await store(db, [row(env, mail(env, s)) for s in ("a", "poison", "b")])
            assert await runner.drain() == 3
            assert sorted(await subjects(db, org_id)) == ["a", "b"]
            assert await runner.run_once() == 0  # the failed one waits for its retry
            clock.advance(timedelta(minutes=1))
            assert await runner.run_once() == 1
            failed = await kept(db, "failed", user_id)
            assert [(r["failed_stage"], r["attempts"]) for r in failed] == [("match", 2)]
            assert failed[0]["last_error"] == "ValueError: cannot handle this one"
            with pytest.raises(ReplayError) as exc:
                await runner.replay(failed[0]["id"])
            assert str(exc.value).startswith(f"message {failed[0]['id']} failed again at match")
            assert "\n" not in str(exc.value)
            # Fixed (the normal pipeline): the replay files it, and it is not kept twice.
            fixed = IngestRunner(db, mail_domain=DOMAIN, clock=clock)
            result = await fixed.replay(failed[0]["id"])
            assert result["result"] == "filed"
            assert sorted(await subjects(db, org_id)) == ["a", "b", "poison"]
        finally:
            await db.dispose()

    run(go())


def test_a_dead_runners_claims_are_taken_over_when_the_lease_runs_out(env):
    async def go():
        db = Database(env["url"])
        try:
            org_id = env["org"]["id"]
            clock = FixedClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
            await store(db, [row(env, mail(env, "claimed by a dead node"))])
            now = clock.now()
            claimed = await db.run_write(inbound_store.claim, 100, now, now + timedelta(minutes=5))
            assert claimed  # ... and that runner dies here, holding the lease
            survivor = IngestRunner(db, mail_domain=DOMAIN, clock=clock)
            assert await survivor.run_once() == 0
            assert await subjects(db, org_id) == []
            clock.advance(timedelta(minutes=6))
            assert await survivor.run_once() == 1
            assert await subjects(db, org_id) == ["claimed by a dead node"]
        finally:
            await db.dispose()

    run(go())


def test_mail_refused_after_the_250_is_parked_with_why_and_files_once_allowed(env):
    async def go():
        db = Database(env["url"])
        try:
            org_id, user_id = env["org"]["id"], env["user"]["id"]
            forged = mail(env, "other from", frm="assistant@acme.example")
            await store(db, [row(env, forged)])
            runner = IngestRunner(db, mail_domain=DOMAIN)
            assert await runner.drain() == 1
            assert await subjects(db, org_id) == []
            refused = await kept(db, "refused", user_id)
            assert [(r["failed_stage"], r["last_error"]) for r in refused] == [
                ("authorise", "From assistant@acme.example is not an allowed sender")
            ]
            with pytest.raises(ReplayError, match="refused again at authorise"):
                await runner.replay(refused[0]["id"])
            await admin.senders(db, str(user_id), "add", "assistant@acme.example")
            assert (await runner.replay(refused[0]["id"]))["result"] == "filed"
            assert await subjects(db, org_id) == ["other from"]
        finally:
            await db.dispose()

    run(go())


def test_storing_fails_loudly_when_the_spool_writer_is_not_running(env):
    from storage.db import StorageUnavailable

    async def go():
        db = Database(env["url"])
        try:
            with pytest.raises(StorageUnavailable):
                await Spool(db).store([row(env, mail(env, "nowhere"))])
        finally:
            await db.dispose()

    run(go())


def test_a_group_stored_while_another_writer_holds_the_lock_waits_and_is_stored(env):
    """A spool group must wait for another writer (a worker filing a long batch), not fail.

    SQLite: another connection holds the single write lock (SMTP groups go through the
    driver-level path there).  PostgreSQL: another transaction holds an exclusive lock on
    the spool table.  Either way no ``250`` comes before the rows are stored.
    """

    async def go():
        db = Database(env["url"])
        spool = Spool(db)
        await spool.start()
        try:
            async with hold_write_lock(env["url"]) as release:
                pending = asyncio.ensure_future(spool.store([row(env, mail(env, "waited"))]))
                await asyncio.sleep(0.2)
                assert not pending.done()  # no 250 before the rows are stored
                await release()
            await asyncio.wait_for(pending, 10)
            async with db.connect() as conn:
                assert await conn.run_sync(inbound_store.count_pending) >= 1
        finally:
            await spool.stop()
            await db.dispose()

    run(go())


@contextlib.asynccontextmanager
async def hold_write_lock(url: str):
    """Another writer holding what a spool write needs; yields an async ``release()``."""
    if url.startswith("sqlite"):
        import sqlite3

        from sqlalchemy.engine import make_url

        other = sqlite3.connect(make_url(url).database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")

        async def release() -> None:
            other.execute("COMMIT")

        try:
            yield release
        finally:
            other.close()
        return
    holder = Database(url)
    try:
        async with holder.engine.connect() as conn:
            tx = await conn.begin()
            await conn.exec_driver_sql("LOCK TABLE inbound IN EXCLUSIVE MODE")

            async def release() -> None:
                await tx.commit()

            yield release
    finally:
        await holder.dispose()


def test_a_group_that_cannot_be_stored_is_refused_and_the_next_one_is_stored(env):
    from storage.db import StorageUnavailable

    async def go():
        db = Database(env["url"])
        spool = Spool(db)
        await spool.start()
        try:
            bad = {**row(env, mail(env, "bad")), "raw": None}  # raw is NOT NULL
            with pytest.raises(StorageUnavailable):
                await spool.store([bad])
            await spool.store([row(env, mail(env, "good"))])
            async with db.connect() as conn:
                rows = await conn.run_sync(inbound_store.list_state, "pending", 1000)
            assert any(r["org_id"] == env["org"]["id"] for r in rows)
        finally:
            await spool.stop()
            await db.dispose()

    run(go())
