"""One poller per mailbox, however many ``imap`` processes run (issue #14).

Two ``mailgate serve --only imap`` subprocesses share one PostgreSQL database
and one real Dovecot mailbox: only the lease holder logs in and polls (the
other waits), each message is filed once, and when the holder is killed with
``kill -9`` the other takes the mailbox over within the lease
(``MAILGATE_POLL_LEASE``); a clean stop hands it over at once.  POP3 follows
the same rule, and a poller whose lease was taken stops polling: those two run
two supervisors in one process (each with its own holder name) over SQLite and
PostgreSQL.  Filing runs in an in-process ``worker`` on the same database.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from sqlalchemy import select, text, update

from gateway.receive.mailboxes.service import MailboxService, MailboxSupervisor, lease_takeable
from storage.schema_mailboxes import mailboxes
from tests.support.databases import fresh_database
from tests.support.dovecot import Dovecot, start_or_skip
from tests.support.processes import ServeProcess, stop_all
from tests.support.server import MailgateServer, wait_until

#: What every process here had from the start: loopback peers allowed, a quick clean stop.
NODE = {"allow_private_targets": "true", "stop_deadline": "3"}
LEASE = 3.0  # seconds: small, so a takeover after kill -9 is quick to wait for


@pytest.fixture(scope="module")
def dovecot():
    server = start_or_skip()
    server.add_users({f"rep{i}": "pw" for i in range(6)})
    server.unused = [f"rep{i}" for i in range(6)]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory):
    """A fresh PostgreSQL database: several processes on one database is what is tested."""
    with fresh_database("postgresql", tmp_path_factory.mktemp("db")) as url:
        yield url


def gate_for(url: str, data_dir, *roles: str) -> MailgateServer:
    # http (to add the mailbox as a user does) + worker (files what the pollers spool).
    return MailgateServer(url, data_dir).start({"http", "worker", *roles})


def mail(tag: str, lead: str, rep: str) -> bytes:
    return (
        f"From: {lead}\nTo: {rep}\nMessage-ID: <{tag}@example.com>\nSubject: {tag}\n"
        f"Date: {format_datetime(datetime.now(UTC))}\n\nAbout the proposal ({tag}).\n"
    ).encode()


class Box:
    """An org, a user, a lead writing to them, and their connected mailbox on Dovecot."""

    def __init__(self, gate: MailgateServer, dovecot: Dovecot, protocol: str = "imap") -> None:
        tag = uuid.uuid4().hex[:8]
        self.gate, self.dovecot = gate, dovecot
        self.login = dovecot.unused.pop()
        org = gate.org(f"Org {tag}", domains=[f"{tag}.example.jp"])
        self.org_id = org["id"]
        self.rep = f"rep@{tag}.example.jp"
        self.api = gate.api(gate.user(org, self.rep, "佐藤 花子", admin=True))
        self.lead = f"lead-{tag}@customer.example.com"
        r = self.api.post("/api/v1/leads", json={"last_name": "鈴木", "email": self.lead})
        assert r.status_code == 201, r.text
        port = dovecot.port if protocol == "imap" else dovecot.pop3_port
        body = {
            "protocol": protocol,
            "host": dovecot.host,
            "port": port,
            "login": self.login,
            "password": "pw",
            "security": "none",
        }
        r = self.api.post("/api/v1/mailboxes", json=body)
        assert r.status_code == 201, r.text
        self.id = r.json()["id"]

    def deliver(self, tag: str) -> None:
        self.dovecot.append(self.login, "INBOX", mail(tag, self.lead, self.rep))

    def filed(self) -> dict[str, int]:
        """Message-ID → how many times it was filed for this org."""
        sql = "SELECT message_id, count(*) FROM messages WHERE org_id = :o GROUP BY message_id"

        async def go():
            async with self.gate.db.connect() as conn:
                return dict((await conn.execute(text(sql), {"o": self.org_id})).all())

        return self.gate.call(go())

    def poller(self) -> str | None:
        async def go():
            async with self.gate.db.connect() as conn:
                q = select(mailboxes.c.poller).where(mailboxes.c.id == self.id)
                return (await conn.execute(q)).scalar_one()

        return self.gate.call(go())

    def logins(self, service: str = "imap") -> int:
        """Logins Dovecot accepted for this mailbox's account (its log says each one)."""
        wanted = f"Login: user=<{self.login}>"
        return sum(
            1
            for line in self.dovecot.log.splitlines()
            if f"{service}-login:" in line and wanted in line
        )


def holder_pid(poller: str | None) -> int | None:
    return int(poller.split(":")[-2]) if poller else None


def test_two_imap_processes_one_polls_the_other_waits_and_takes_over_within_the_lease_after_kill_9(
    pg_url, dovecot, tmp_path
):
    gate = gate_for(pg_url, tmp_path / "gate")
    procs: list[ServeProcess] = []
    try:
        box = Box(gate, dovecot)
        before = box.logins()
        procs = [
            ServeProcess(pg_url, tmp_path / f"imap{i}", "imap", poll_lease=str(LEASE), **NODE)
            for i in range(2)
        ]
        for p in procs:
            p.wait_serving()
            assert p.runners == ["spool", "mailboxes"]
        by_pid = {p.pid: p for p in procs}
        first = by_pid[wait_until(lambda: holder_pid(box.poller()), timeout=30)]
        other = next(p for p in procs if p is not first)

        box.deliver("before-kill")
        wait_until(lambda: box.filed() == {"before-kill@example.com": 1}, timeout=30)
        wait_until(lambda: box.logins() >= before + 1, timeout=5)  # the holder's login
        # Several leases' worth of rounds of the waiting process: it never logged in.
        time.sleep(2 * LEASE)
        assert box.logins() == before + 1, dovecot.log[-2000:]
        assert holder_pid(box.poller()) == first.pid
        assert box.filed() == {"before-kill@example.com": 1}

        first.kill()
        killed = time.monotonic()
        wait_until(lambda: holder_pid(box.poller()) == other.pid, timeout=LEASE + 10)
        took_over = time.monotonic() - killed
        # The lease it last renewed runs out at most LEASE after the kill; the waiter
        # looks at least every LEASE/3 seconds.
        assert took_over <= LEASE + LEASE / 3 + 1.0, took_over
        box.deliver("after-kill")
        wait_until(lambda: len(box.filed()) == 2, timeout=30)
        time.sleep(1.0)  # a second filing, if any, would land now
        assert box.filed() == {"before-kill@example.com": 1, "after-kill@example.com": 1}
        assert box.logins() == before + 2  # the survivor's one login, nobody else's
    finally:
        stop_all(procs)
        gate.stop()


def test_a_clean_stop_hands_the_mailbox_to_the_other_process_at_once(pg_url, dovecot, tmp_path):
    gate = gate_for(pg_url, tmp_path / "gate")
    procs: list[ServeProcess] = []
    try:
        box = Box(gate, dovecot)
        # A lease far longer than the test: only a release can explain a quick takeover.
        procs = [
            ServeProcess(pg_url, tmp_path / f"imap{i}", "imap", poll_lease="600", **NODE)
            for i in range(2)
        ]
        for p in procs:
            p.wait_serving()
        by_pid = {p.pid: p for p in procs}
        first = by_pid[wait_until(lambda: holder_pid(box.poller()), timeout=30)]
        other = next(p for p in procs if p is not first)

        assert first.terminate().code == 0, first.output
        stopped = time.monotonic()
        wait_until(lambda: holder_pid(box.poller()) == other.pid, timeout=15)
        assert time.monotonic() - stopped < 5
        box.deliver("after-stop")
        wait_until(lambda: box.filed() == {"after-stop@example.com": 1}, timeout=30)
    finally:
        stop_all(procs)
        gate.stop()


# -- the same rule in one process: POP3, and a lease taken away -----------------------------


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory):
    # + smtp for the spool the in-process pollers store into.
    server = gate_for(database_url, tmp_path_factory.mktemp("data"), "smtp")
    yield server
    server.stop()


def supervisor(gate: MailgateServer, holder: str, lease: float) -> MailboxSupervisor:
    services = gate.running.services
    service = MailboxService(
        services.db,
        services.spool,
        services.settings.model_copy(update={"pop_interval": 0.3}),
        ingest=services.runner("ingest"),
        clock=services.follow_clock,
    )
    return MailboxSupervisor(service, refresh=0.2, lease=lease, holder=holder)


def test_two_pop3_pollers_one_polls_and_the_other_takes_over_when_it_stops(gate, dovecot):
    box = Box(gate, dovecot, protocol="pop3")
    a, b = supervisor(gate, "node-a:1:aa", LEASE), supervisor(gate, "node-b:2:bb", LEASE)

    async def start() -> None:
        await a.start()
        await asyncio.sleep(0.5)  # a takes the free lease; b starts while a holds it
        await b.start()

    gate.call(start())
    try:
        wait_until(lambda: box.poller() == "node-a:1:aa", timeout=10)
        box.deliver("pop-1")
        wait_until(lambda: box.filed() == {"pop-1@example.com": 1}, timeout=30)
        time.sleep(1.0)  # b's rounds come every 0.2 s: none of them starts a poller
        assert box.id in a.tasks and box.id not in b.tasks
        assert box.poller() == "node-a:1:aa"

        gate.call(a.stop(2.0))
        wait_until(lambda: box.poller() == "node-b:2:bb", timeout=5)
        box.deliver("pop-2")
        wait_until(lambda: len(box.filed()) == 2, timeout=30)
        assert box.filed() == {"pop-1@example.com": 1, "pop-2@example.com": 1}
    finally:
        gate.call(a.stop(2.0))
        gate.call(b.stop(2.0))


def test_a_poller_whose_lease_was_taken_stops_polling(gate, dovecot):
    """As after a storage outage longer than the lease: another process took the mailbox."""
    box = Box(gate, dovecot)
    a = supervisor(gate, "node-a:1:cc", LEASE)
    gate.call(a.start())
    try:
        wait_until(lambda: box.poller() == "node-a:1:cc" and box.id in a.tasks, timeout=10)
        wait_until(lambda: box.logins() >= 1, timeout=10)  # the poller logged in

        async def steal() -> None:
            async with gate.db.begin() as conn:
                until = datetime.now(UTC) + timedelta(seconds=600)
                await conn.execute(
                    update(mailboxes)
                    .where(mailboxes.c.id == box.id)
                    .values(poller="elsewhere:9:zz", poll_lease_until=until)
                )

        gate.call(steal())
        # Its next renewal (within LEASE/3) finds the lease gone and stops the poller,
        # which logs out of the server.
        wait_until(lambda: box.id not in a.tasks, timeout=LEASE)
        logins = box.logins()
        time.sleep(LEASE)  # many rounds: none logs in again while the other holds it
        assert box.id not in a.tasks and box.poller() == "elsewhere:9:zz"
        assert box.logins() == logins
        box.deliver("while-elsewhere")
        time.sleep(1.0)
        assert box.filed() == {}  # nobody here polls a mailbox another process holds
    finally:
        gate.call(a.stop(2.0))


def test_who_may_take_a_lease():
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    later, earlier = now + timedelta(seconds=5), now - timedelta(seconds=5)
    assert lease_takeable({"poller": None, "poll_lease_until": None}, "me", now)
    assert lease_takeable({"poller": "me", "poll_lease_until": later}, "me", now)
    assert lease_takeable({"poller": "them", "poll_lease_until": earlier}, "me", now)
    assert not lease_takeable({"poller": "them", "poll_lease_until": later}, "me", now)
