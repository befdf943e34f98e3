"""Connected mailboxes end to end: real Dovecot → poller → the one ingest path → API.

A mailgate with the ``imap`` role runs in a thread over a fresh SQLite or
PostgreSQL database; mail is seeded into a real Dovecot and read back
through ``/api/v1`` and the database.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.receive.imap import MailboxConfig, MailboxSource, connect, discover_folders
from gateway.receive.mailboxes import MailboxService
from storage import mailboxes as store
from tests.support.dovecot import Dovecot, start_or_skip
from tests.support.server import MailgateServer, wait_until

LOGINS = [f"rep{i}" for i in range(40)]


@pytest.fixture(scope="module")
def dovecot():
    # Every login exists before the first one is used: Dovecot did not always see a
    # user added to the passwd-file while other logins were being served.
    server = start_or_skip()
    server.add_users({login: "pw" for login in LOGINS})
    server.unused = list(LOGINS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory):
    server = MailgateServer(database_url, tmp_path_factory.mktemp("data")).start(
        {"smtp", "http", "worker", "imap"}
    )
    yield server
    server.stop()


def mail(i: int, frm: str, to: str, *, subject: str = "", extra: str = "") -> bytes:
    now = format_datetime(datetime.now(UTC))
    return (
        f"From: {frm}\nTo: {to}\nMessage-ID: <{uuid.uuid4().hex}.{i}@example.com>\n"
        f"Subject: {subject or f'Re: proposal {i}'}\nDate: {now}\n{extra}\n"
        f"Thanks for the proposal, message {i}.\n"
    ).encode()


def scalar(gate: MailgateServer, sql: str, **params):
    from sqlalchemy import text

    async def go():
        async with gate.db.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    return gate.call(go())


class Account:
    """An org, a user with a Dovecot login, a lead writing to them, and the mailbox."""

    def __init__(self, gate: MailgateServer, dovecot: Dovecot, password: str = "pw") -> None:  # noqa: S107
        tag = uuid.uuid4().hex[:8]
        self.gate, self.dovecot = gate, dovecot
        self.login = dovecot.unused.pop()
        self.org = gate.org(f"Org {tag}", domains=[f"{tag}.example.jp"])
        self.address = f"rep@{tag}.example.jp"
        self.user = gate.user(self.org, self.address, "佐藤 花子", admin=True)
        self.api = gate.api(self.user)
        self.lead_email = f"lead-{tag}@customer.example.com"
        r = self.api.post("/api/v1/leads", json={"last_name": "鈴木", "email": self.lead_email})
        assert r.status_code == 201, r.text
        self.lead = r.json()
        self.password = password

    def connect_mailbox(self, **extra) -> dict:
        body = {
            "host": self.dovecot.host,
            "port": self.dovecot.port,
            "login": self.login,
            "password": self.password,
            "security": "none",
            **extra,
        }
        r = self.api.post("/api/v1/mailboxes", json=body)
        assert r.status_code == 201, r.text
        self.mailbox = r.json()
        return self.mailbox

    def status(self) -> dict:
        r = self.api.get(f"/api/v1/mailboxes/{self.mailbox['id']}")
        assert r.status_code == 200, r.text
        return r.json()

    def filed(self) -> int:
        return scalar(
            self.gate,
            "SELECT count(*) FROM messages WHERE org_id = :o AND source = 'imap'",
            o=self.org["id"],
        )

    def incoming(self, n: int, start: int = 0) -> list[bytes]:
        return [mail(i, self.lead_email, self.address) for i in range(start, start + n)]

    def until_caught_up(self, filed: int, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if self.filed() == filed and status["state"] == "ok":
                return status
            assert time.monotonic() < deadline, f"filed {self.filed()}/{filed}; {status}"
            time.sleep(0.1)

    def config(self) -> MailboxConfig:
        return MailboxConfig(self.dovecot.host, self.dovecot.port, self.login, "pw", "none")


def test_5000_message_mailbox_backfills_completely_and_next_poll_makes_no_fetch(gate, dovecot):
    acct = Account(gate, dovecot)
    dovecot.seed(acct.login, "INBOX", acct.incoming(4900))
    sent = [mail(i, acct.address, acct.lead_email) for i in range(100)]
    dovecot.seed(acct.login, "Sent", sent)
    acct.connect_mailbox()
    wait_until(lambda: acct.filed() == 5000, timeout=180, interval=0.5)
    status = wait_until(lambda: (s := acct.status())["state"] == "ok" and s, timeout=30)
    assert status["error"] is None
    assert status["progress"]["INBOX"] == {"done": 4900, "total": 4900}
    assert status["messages"] == 5000
    assert "password" not in str(status) and "pw" not in status.values()
    directions = scalar(
        gate,
        "SELECT count(*) FROM messages WHERE org_id = :o AND direction = 'outgoing'",
        o=acct.org["id"],
    )
    assert directions == 100  # the Sent folder was filed as outgoing mail
    page = acct.api.get(f"/api/v1/leads/{acct.lead['id']}/emails?limit=500").json()
    assert len(page["items"]) == 500 and page["next"]

    # The same path the poller runs, over a fresh session: nothing new → no FETCH.
    service = MailboxService(gate.db, gate.running.services.spool, gate.settings)

    async def poll_again():
        async with gate.db.connect() as conn:
            row = await store.get_mailbox(conn, acct.mailbox["id"])
        async with await connect(acct.config(), 10) as session:
            folders = await discover_folders(session)
            count = await service.poll(
                row, MailboxSource(session), folders, since=datetime(2000, 1, 1).date()
            )
            return count, dict(session.commands)

    count, commands = gate.call(poll_again())
    assert count == 0
    assert commands.get("UID FETCH", 0) == 0 and commands.get("UID SEARCH", 0) == 0
    assert acct.filed() == 5000


def test_message_delivered_during_idle_is_filed_within_two_seconds(gate, dovecot):
    acct = Account(gate, dovecot)
    dovecot.seed(acct.login, "INBOX", acct.incoming(3))
    acct.connect_mailbox()
    acct.until_caught_up(3)
    time.sleep(0.5)  # the poller is in IDLE now
    started = time.monotonic()
    dovecot.append(acct.login, "INBOX", mail(99, acct.lead_email, acct.address))
    wait_until(lambda: acct.filed() == 4, timeout=5, interval=0.02)
    assert time.monotonic() - started < 2.0


def test_kick_mid_fetch_reconnects_and_files_every_message_exactly_once(gate, dovecot):
    acct = Account(gate, dovecot)
    total = 1500
    dovecot.seed(acct.login, "INBOX", acct.incoming(total))
    acct.connect_mailbox()
    wait_until(lambda: 0 < acct.filed() < total, timeout=60, interval=0.01)
    dovecot.kick(acct.login)
    wait_until(lambda: acct.filed() == total, timeout=120, interval=0.2)
    wait_until(lambda: acct.status()["state"] == "ok", timeout=30)
    time.sleep(1.0)
    assert acct.filed() == total
    locations = scalar(
        gate,
        "SELECT count(*) FROM mailbox_messages WHERE mailbox_id = :m",
        m=acct.mailbox["id"],
    )
    assert locations == total


def test_japanese_and_malformed_corpora_are_polled_without_crashing(gate, dovecot, corpora):
    acct = Account(gate, dovecot)
    raws = [p.read_bytes() for p in sorted((corpora / "japanese").glob("*.eml"))]
    raws += [p.read_bytes() for p in sorted((corpora / "malformed").rglob("*")) if p.is_file()]
    raws.append(mail(1, acct.lead_email, acct.address))
    dovecot.seed(acct.login, "INBOX", raws)
    acct.connect_mailbox()

    def caught_up():
        s = acct.status()
        return s["state"] == "ok" and s["folders"].get("INBOX", {}).get("last_uid") == len(raws)

    wait_until(caught_up, timeout=60)
    gate.settle()  # the checkpoint moves when mail is stored; filing follows
    assert acct.filed() >= 1  # the lead's message; unknown senders are ignored, not stored
    assert acct.status()["error"] is None


def test_bad_password_is_reported_in_plain_words(gate, dovecot):
    acct = Account(gate, dovecot, password="wrong")
    acct.connect_mailbox()
    status = wait_until(lambda: (s := acct.status())["state"] == "error" and s, timeout=20)
    assert status["error"]["kind"] == "bad_login"
    assert "refused the login or password" in status["error"]["message"]
    assert "wrong" not in str(status)


def test_unreachable_server_is_reported_in_plain_words(gate, dovecot):
    from tests.support.dovecot import free_port

    acct = Account(gate, dovecot)
    acct.connect_mailbox(port=free_port())
    status = wait_until(lambda: (s := acct.status())["state"] == "error" and s, timeout=20)
    assert status["error"]["kind"] == "unreachable"
    assert "could not be reached" in status["error"]["message"]


def test_reply_to_one_of_our_sends_marks_it_replied(gate, dovecot):
    acct = Account(gate, dovecot)
    our_id = f"{uuid.uuid4().hex}@mailgate.test"

    def add_send(conn):
        from sqlalchemy import insert

        from storage.schema_sending import sends

        conn.execute(
            insert(sends).values(
                org_id=acct.org["id"],
                user_id=acct.user["id"],
                kind="individual",
                module="leads",
                record_id=acct.lead["id"],
                to_email=acct.lead_email,
                from_email=acct.address,
                subject="proposal",
                message_id=our_id,
                verp_token=uuid.uuid4().hex,
                state="sent",
                status="sent",
            )
        )

    gate.call(gate.db.run_write(add_send))
    reply = mail(1, acct.lead_email, acct.address, extra=f"In-Reply-To: <{our_id}>\n")
    dovecot.seed(acct.login, "INBOX", [reply])
    acct.connect_mailbox()
    wait_until(lambda: acct.filed() == 1, timeout=30)
    status = scalar(gate, "SELECT status FROM sends WHERE message_id = :m", m=our_id)
    assert status == "replied"
    events = acct.api.get("/api/v1/events?limit=1000").json()["items"]
    replied = [e for e in events if e["type"] == "email.replied"]
    assert len(replied) == 1 and replied[0]["data"]["module"] == "leads"


def test_reading_in_the_crm_sets_seen_on_the_server_and_back(gate, dovecot):
    acct = Account(gate, dovecot)
    dovecot.seed(acct.login, "INBOX", acct.incoming(2))
    acct.connect_mailbox()
    acct.until_caught_up(2)
    items = acct.api.get(f"/api/v1/leads/{acct.lead['id']}/emails").json()["items"]
    first, second = sorted(items, key=lambda e: e["id"])
    assert not first["seen"]
    r = acct.api.post(f"/api/v1/emails/{first['id']}/read", json={"seen": True})
    assert r.status_code == 200 and r.json()["server"] == "updated"

    async def server_flags():
        async with await connect(acct.config(), 10) as session:
            source = MailboxSource(session)
            flags, _ = await source.changed_flags("INBOX", None)
            return flags

    flags = gate.call(server_flags())
    assert "\\Seen" in flags[1] and "\\Seen" not in flags[2]

    async def read_in_client():
        async with await connect(acct.config(), 10) as session:
            await MailboxSource(session).set_seen("INBOX", 2)

    gate.call(read_in_client())
    dovecot.append(acct.login, "INBOX", mail(7, acct.lead_email, acct.address))  # wake IDLE
    wait_until(
        lambda: scalar(gate, "SELECT seen FROM messages WHERE id = :i", i=second["id"]),
        timeout=10,
    )


def test_bounce_mailbox_hands_its_mail_to_bounce_processing(gate, dovecot):
    acct = Account(gate, dovecot)
    dovecot.seed(acct.login, "INBOX", acct.incoming(2))
    acct.connect_mailbox(bounce=True)
    wait_until(
        lambda: scalar(gate, "SELECT count(*) FROM inbound WHERE channel = 'bounce'") >= 2,
        timeout=30,
    )
    assert acct.filed() == 0


@pytest.mark.parametrize(
    "body, status",
    [
        ({}, 422),
        ({"host": "h", "port": 0, "login": "l", "password": "p"}, 422),
        ({"host": "h", "port": 70000, "login": "l", "password": "p"}, 422),
        ({"host": "h", "port": "993", "login": "l", "password": "p"}, 422),
        ({"host": "h" * 5000, "port": 993, "login": "l", "password": "p"}, 422),
        ({"host": "h", "port": 993, "login": "l\r\nA1 LOGOUT", "password": "p"}, 422),
        ({"host": "h", "port": 993, "login": "l", "password": "p" * 5000}, 422),
        ({"host": "h", "port": 993, "login": "l", "password": "p", "security": "ssl3"}, 422),
        ({"host": "h", "port": 993, "login": "l", "password": "p", "backfill_days": 10**9}, 422),
        ({"host": "h", "port": 993, "login": "l", "password": "p", "evil": 1}, 422),
        ({"host": "h", "port": 993, "login": "l", "password": "p", "user_id": 10**30}, 422),
    ],
)
def test_hostile_mailbox_input_gets_a_clear_4xx(gate, dovecot, body, status):
    acct = getattr(test_hostile_mailbox_input_gets_a_clear_4xx, "acct", None)
    if acct is None or acct.gate is not gate:
        acct = Account(gate, dovecot)
        test_hostile_mailbox_input_gets_a_clear_4xx.acct = acct
    r = acct.api.post("/api/v1/mailboxes", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    for path in ("/api/v1/mailboxes/abc", "/api/v1/mailboxes/99999999", "/api/v1/mailboxes/1" * 3):
        assert acct.api.get(path).status_code == 404


def test_mailboxes_are_listed_and_removed_and_never_show_the_password(gate, dovecot):
    acct = Account(gate, dovecot)
    created = acct.connect_mailbox()
    listed = acct.api.get("/api/v1/mailboxes").json()["items"]
    assert [m["id"] for m in listed] == [created["id"]]
    assert all("password" not in k for m in listed for k in m)
    stored = scalar(gate, "SELECT password_enc FROM mailboxes WHERE id = :i", i=created["id"])
    assert "pw" not in stored.replace("gAAAA", "")[:0] and stored.startswith("gAAAA")
    assert acct.api.delete(f"/api/v1/mailboxes/{created['id']}").status_code == 204
    assert acct.api.get(f"/api/v1/mailboxes/{created['id']}").status_code == 404
    other = Account(gate, dovecot)
    assert other.api.get(f"/api/v1/mailboxes/{created['id']}").status_code == 404


def test_stopping_the_imap_role_stops_every_poller_within_the_deadline_and_it_resumes(
    gate, dovecot
):
    acct = Account(gate, dovecot)
    dovecot.seed(acct.login, "INBOX", acct.incoming(2))
    acct.connect_mailbox()
    acct.until_caught_up(2)
    supervisor = gate.running.services.runner("mailboxes")
    pollers = [task for _, task, _ in supervisor.tasks.values()]
    assert pollers
    started = time.monotonic()
    gate.call(supervisor.stop(deadline=3.0))
    assert time.monotonic() - started < 4.0
    assert not supervisor.running and supervisor.tasks == {}
    assert all(task.done() for task in pollers)

    dovecot.append(acct.login, "INBOX", mail(50, acct.lead_email, acct.address))
    time.sleep(0.5)
    assert acct.filed() == 2  # nobody polls while the role is stopped
    gate.call(supervisor.start())
    acct.until_caught_up(3)


async def _noop() -> None:  # keeps asyncio imported for the gate.call helpers' type hints
    await asyncio.sleep(0)
