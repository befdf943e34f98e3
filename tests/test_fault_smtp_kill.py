"""``kill -9`` of the SMTP role in the middle of 2,000 messages loses and duplicates nothing.

``mailgate serve --only smtp`` and ``serve --only worker`` run as real
processes on one database; eight client connections send 2,000 distinct
messages to a dropbox and note which got ``250``.  Half-way, the SMTP process
is killed with SIGKILL and started again.  A ``250`` is the promise that the
message is stored: every message that got one must be filed, exactly once.
A message in flight at the kill got no reply; it may or may not have been
stored, and the client (as any MTA would) sends it again after the restart,
with everything it had not sent yet: in the end every message is filed
exactly once, the copies stored twice are recognised by their Message-ID.
"""

from __future__ import annotations

import signal
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from storage import inbound_store
from storage.schema import events, messages
from tests.support import smtp_sink
from tests.support.processes import ServeProcess
from tests.support.server import MailgateServer, wait_until

TOTAL = 2_000
CONNECTIONS = 8
KILL_AFTER = 800  # 250s seen before the kill: well into the run, well before its end
SENDER = "rep@example.org"
CUSTOMER = "customer@client.example.jp"


@pytest.fixture
def gate(database_url, tmp_path):
    """HTTP only, in this process: sets up the org and reads the database."""
    srv = MailgateServer(database_url, tmp_path / "data").start(roles={"http"})
    yield srv
    srv.stop()


def message(number: int) -> tuple[str, bytes]:
    """Message ``number``: its unique subject and its bytes, the same each time it is sent
    (a retry is the same message: same Message-ID, same bytes)."""
    subject = f"fault test {number:04d}"
    raw = (
        f"From: Rep <{SENDER}>\r\n"
        f"To: {CUSTOMER}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <fault-{number:04d}@client.example.org>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"body of message {number}\r\n"
    ).encode()
    return subject, raw


@dataclass
class Client:
    """Connections that send numbered messages and note what the server answered."""

    port: int
    dropbox: str
    todo: list[int]
    answered: set[int] = field(default_factory=set)  # got 250
    unanswered: set[int] = field(default_factory=set)  # in flight when the server went away
    refused: dict[int, str] = field(default_factory=dict)  # any other reply
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _next(self) -> int | None:
        with self.lock:
            return self.todo.pop(0) if self.todo else None

    def _connection(self) -> None:
        try:
            smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        except OSError:
            return
        try:
            while (number := self._next()) is not None:
                try:
                    refused = smtp.sendmail(SENDER, [self.dropbox], message(number)[1])
                except smtplib.SMTPResponseException as exc:
                    with self.lock:
                        self.refused[number] = f"{exc.smtp_code} {exc.smtp_error!r}"
                    continue
                except (smtplib.SMTPException, OSError):
                    with self.lock:
                        self.unanswered.add(number)
                    return
                with self.lock:
                    if refused:
                        self.refused[number] = str(refused)
                    else:
                        self.answered.add(number)
        finally:
            try:
                smtp.close()
            except OSError:
                pass

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._connection) for _ in range(CONNECTIONS)]
        for t in threads:
            t.start()
        return threads


def smtp_role(database_url: str, data_dir, port: int) -> ServeProcess:
    return ServeProcess(
        database_url, data_dir, "smtp", smtp_listen=f"127.0.0.1:{port}"
    ).wait_serving()


def filed(gate: MailgateServer, org_id: int) -> tuple[Counter[str], Counter[str]]:
    """How often each subject was filed: (rows in ``messages``, ``email.filed`` events)."""

    def read(conn) -> tuple[Counter[str], Counter[str]]:
        rows = conn.execute(select(messages.c.subject).where(messages.c.org_id == org_id))
        stored = Counter(r.subject for r in rows)
        evs = conn.execute(
            select(events.c.data).where(events.c.org_id == org_id, events.c.type == "email.filed")
        )
        announced = Counter(r.data["subject"] for r in evs)
        return stored, announced

    return gate.call(gate.db.run_read(read))


def test_every_message_that_got_250_is_filed_exactly_once_after_a_kill_9_of_the_smtp_role(
    gate, database_url, tmp_path
):
    org = gate.org("fault-smtp", plan="standard")
    user = gate.user(org, SENDER, name="Rep")
    data_dir = tmp_path / "data"
    port = smtp_sink.free_port()
    worker = ServeProcess(database_url, data_dir, "worker")
    smtp = smtp_role(database_url, data_dir, port)
    restarted = None
    try:
        client = Client(port, user["dropbox_address"], list(range(TOTAL)))
        threads = client.start()
        wait_until(lambda: len(client.answered) >= KILL_AFTER, timeout=120, interval=0.01)
        code, _ = smtp.signal(signal.SIGKILL)
        assert code == -signal.SIGKILL
        for t in threads:
            t.join(60)
        assert not client.refused, client.refused
        answered_before = set(client.answered)
        assert KILL_AFTER <= len(answered_before) < TOTAL, "the kill was meant to land mid-way"
        assert client.unanswered, "some message was meant to be in flight at the kill"

        restarted = smtp_role(database_url, data_dir, port)
        subjects = {n: message(n)[0] for n in range(TOTAL)}
        stored, announced = _settled(gate, org["id"], len(answered_before))
        for n in answered_before:  # 250 is a promise: filed, once
            assert stored[subjects[n]] == 1, (n, stored[subjects[n]])
            assert announced[subjects[n]] == 1
        assert max(stored.values()) == 1 and max(announced.values()) == 1
        assert set(stored) <= {subjects[n] for n in answered_before | client.unanswered}

        # As an MTA would: everything not answered 250 is sent again (some was stored).
        resend = Client(port, user["dropbox_address"], sorted(set(range(TOTAL)) - answered_before))
        for t in resend.start():
            t.join(120)
        assert not resend.refused and not resend.unanswered
        assert resend.answered | answered_before == set(range(TOTAL))
        stored, announced = _settled(gate, org["id"], TOTAL)
        assert stored == Counter(subjects.values())  # all 2,000, each exactly once
        assert announced == Counter(subjects.values())
    finally:
        smtp.terminate()
        if restarted is not None:
            restarted.terminate()
        worker.terminate()


def _settled(gate: MailgateServer, org_id: int, at_least: int) -> tuple[Counter, Counter]:
    wait_until(
        lambda: (
            gate.call(gate.db.run_read(inbound_store.count_pending)) == 0
            and sum(filed(gate, org_id)[0].values()) >= at_least
        ),
        timeout=120,
        interval=0.2,
    )
    return filed(gate, org_id)


def claimed_now(gate: MailgateServer) -> int:
    """Stored mail under a runner's claim right now (pending, lease not yet run out)."""
    from sqlalchemy import func

    from storage.inbound_store import inbound
    from storage.types import utcnow

    def read(conn) -> int:
        q = select(func.count()).where(
            inbound.c.state == "pending", inbound.c.claimed_until > utcnow()
        )
        return conn.execute(q).scalar_one()

    return gate.call(gate.db.run_read(read))


def test_mail_a_killed_worker_was_filing_is_filed_once_soon_after_the_restart(
    gate, database_url, tmp_path
):
    org = gate.org("fault-worker", plan="standard")
    user = gate.user(org, SENDER, name="Rep")
    data_dir = tmp_path / "data"
    port = smtp_sink.free_port()
    count = 1_000
    lease = 5.0
    smtp = smtp_role(database_url, data_dir, port)
    worker = None
    try:
        client = Client(port, user["dropbox_address"], list(range(count)))
        for t in client.start():
            t.join(120)
        assert client.answered == set(range(count))  # all stored, none filed yet

        # Kill the worker while it holds a claim (a round in progress); a kill that
        # happens to land between two rounds is tried again.
        held = 0
        for _ in range(5):
            worker = ServeProcess(database_url, data_dir, "worker", ingest_lease=str(lease))
            wait_until(lambda: claimed_now(gate) > 0, timeout=60, interval=0.01)
            worker.signal(signal.SIGKILL)
            killed = time.monotonic()
            held = claimed_now(gate)
            if held:
                break
        assert held, "no kill landed while the worker held a claim"
        worker = ServeProcess(database_url, data_dir, "worker", ingest_lease=str(lease))
        subjects = Counter(message(n)[0] for n in range(count))
        stored, announced = _settled(gate, org["id"], count)
        # The dead worker's claims ran out after the lease, not after minutes.
        assert time.monotonic() - killed < lease + 30
        assert stored == subjects and announced == subjects  # every one, exactly once
    finally:
        smtp.terminate()
        if worker is not None:
            worker.terminate()
