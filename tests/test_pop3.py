"""POP3 mailboxes end to end: real Dovecot POP3 (and a scripted hostile server on a real
socket) → the ``mailboxes`` runner → the one ingest path → API and database.

What a rep notices: mail arriving in their POP3 mailbox is filed on the CRM
record of its sender (or kept for the SalesInbox), stays on their server, is
never filed twice across restarts, and a problem (wrong password, a huge or
broken message) is reported in plain words instead of stopping their mail.
"""

from __future__ import annotations

import asyncio
import poplib
import re
import socketserver
import ssl
import threading
import time
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway.receive.imap import MailboxConfig, MailboxError
from gateway.receive.mailboxes.pop3_source import plan_batches
from gateway.receive.pop3 import Listed, connect, merge_listing
from tests.support.dovecot import Dovecot, free_port, start_or_skip
from tests.support.server import MailgateServer, wait_until

LOGINS = [f"pop{i}" for i in range(30)]
LIMIT = 256 * 1024  # the gate's max_message_size: what a POP3 message may weigh


@pytest.fixture(scope="module")
def dovecot():
    server = start_or_skip()
    server.add_users({login: "pw" for login in LOGINS})
    server.unused = list(LOGINS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory):
    server = MailgateServer(
        database_url,
        tmp_path_factory.mktemp("data"),
        pop_interval=0.3,
        max_message_size=LIMIT,
    ).start({"smtp", "http", "worker", "imap"})
    yield server
    server.stop()


def mail(i: int, frm: str, to: str, *, body: str = "") -> bytes:
    now = format_datetime(datetime.now(UTC))
    return (
        f"From: {frm}\nTo: {to}\nMessage-ID: <{uuid.uuid4().hex}.{i}@example.com>\n"
        f"Subject: Re: 見積もり {i}\nDate: {now}\n\n"
        f"{body or f'Thanks for the quote, message {i}.'}\n"
    ).encode()


def sql(gate: MailgateServer, query: str, **params):
    from sqlalchemy import text

    async def go():
        async with gate.db.begin() as conn:
            result = await conn.execute(text(query), params)
            return result.scalar() if result.returns_rows else None

    return gate.call(go())


class Rep:
    """An org, a rep with a POP3 login, and a lead who writes to them."""

    def __init__(self, gate: MailgateServer, dovecot: Dovecot | None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.gate, self.dovecot = gate, dovecot
        self.login = dovecot.unused.pop() if dovecot else f"scripted{tag}"
        self.org = gate.org(f"Org {tag}", domains=[f"{tag}.example.jp"])
        self.address = f"rep@{tag}.example.jp"
        self.user = gate.user(self.org, self.address, "佐藤 花子", admin=True)
        self.api = gate.api(self.user)
        self.lead_email = f"lead-{tag}@customer.example.com"
        r = self.api.post("/api/v1/leads", json={"last_name": "鈴木", "email": self.lead_email})
        assert r.status_code == 201, r.text
        self.lead = r.json()
        self.mailbox: dict = {}

    def connect_mailbox(self, password: str = "pw", **over) -> dict:  # noqa: S107
        body = {
            "protocol": "pop3",
            "host": "127.0.0.1",
            "port": self.dovecot.pop3_port if self.dovecot else 0,
            "login": self.login,
            "password": password,
            "security": "none",
            **over,
        }
        r = self.api.post("/api/v1/mailboxes", json=body)
        assert r.status_code == 201, r.text
        self.mailbox = r.json()
        assert self.mailbox["protocol"] == "pop3"
        return self.mailbox

    def status(self) -> dict:
        r = self.api.get(f"/api/v1/mailboxes/{self.mailbox['id']}")
        assert r.status_code == 200, r.text
        return r.json()

    def filed(self) -> int:
        return sql(
            self.gate,
            "SELECT count(*) FROM messages WHERE org_id = :o AND source = 'pop'",
            o=self.org["id"],
        )

    def remembered(self) -> int:
        return sql(
            self.gate,
            "SELECT count(*) FROM mailbox_pop_seen WHERE mailbox_id = :m",
            m=self.mailbox["id"],
        )

    def incoming(self, n: int, start: int = 0) -> list[bytes]:
        return [mail(i, self.lead_email, self.address) for i in range(start, start + n)]

    def lead_emails(self) -> list[dict]:
        r = self.api.get(f"/api/v1/leads/{self.lead['id']}/emails?limit=500")
        assert r.status_code == 200, r.text
        return r.json()["items"]

    def until_filed(self, n: int, timeout: float = 90) -> None:
        # Returns as soon as the mail is filed; the bound is for a loaded CI machine
        # (a dropped connection costs a 1 s, 2 s, 4 s … backoff before the next poll).
        wait_until(lambda: self.filed() == n, timeout=timeout, interval=0.05)

    def stat(self) -> int:
        """What any mail client sees on the server (stdlib poplib, not our client)."""
        client = poplib.POP3("127.0.0.1", self.dovecot.pop3_port, timeout=10)
        try:
            client.user(self.login)
            client.pass_("pw")
            return client.stat()[0]
        finally:
            client.quit()

    def sessions(self) -> list[tuple[int, int]]:
        """(retrieved, deleted) of each finished POP3 session of this login (Dovecot's log)."""
        out = []
        for line in self.dovecot.log.splitlines():
            if f"pop3({self.login})" in line and "retr=" in line:
                retr = re.search(r"retr=(\d+)/", line)
                dele = re.search(r"del=(\d+)/", line)
                out.append((int(retr.group(1)), int(dele.group(1))))
        return out


# -- a real Dovecot POP3 server ---------------------------------------------------------


def test_new_mail_is_filed_on_the_lead_kept_if_unknown_and_left_on_the_server(gate, dovecot):
    rep = Rep(gate, dovecot)
    stranger = f"someone-{uuid.uuid4().hex[:6]}@elsewhere.example.net"
    dovecot.seed(rep.login, "INBOX", [*rep.incoming(2), mail(9, stranger, rep.address)])
    rep.connect_mailbox()
    rep.until_filed(3)
    items = rep.lead_emails()
    assert len(items) == 2
    assert {e["source"] for e in items} == {"pop"}
    assert {e["direction"] for e in items} == {"incoming"}
    assert all("見積もり" in e["subject"] for e in items)
    unlinked = sql(
        gate,
        "SELECT count(*) FROM messages m WHERE m.org_id = :o AND m.source = 'pop' "
        "AND NOT EXISTS (SELECT 1 FROM message_links l WHERE l.message_id = m.id)",
        o=rep.org["id"],
    )
    assert unlinked == 1  # the stranger's mail is kept for the SalesInbox, on no record

    started = time.monotonic()
    dovecot.append(rep.login, "INBOX", mail(10, rep.lead_email, rep.address))
    rep.until_filed(4, timeout=10)
    assert time.monotonic() - started < 5  # within a poll or two (MAILGATE_POP_INTERVAL 0.3 s)
    status = wait_until(lambda: (s := rep.status())["state"] == "ok" and s, timeout=10)
    assert status["error"] is None and status["last_ok_at"]
    assert status["messages"] == 4 and status["skipped"]["count"] == 0
    assert status["progress"]["INBOX"]["done"] == status["progress"]["INBOX"]["total"]
    assert "pw" not in str({k: v for k, v in status.items() if k != "login"})

    assert rep.stat() == 4  # nothing was deleted: every message is still on the server
    assert dovecot.count(rep.login) == 4
    assert rep.sessions() and all(deleted == 0 for _, deleted in rep.sessions())


def test_mail_the_rep_sent_from_their_client_is_filed_as_outgoing(gate, dovecot):
    rep = Rep(gate, dovecot)
    dovecot.seed(rep.login, "INBOX", [mail(1, rep.address, rep.lead_email)])
    rep.connect_mailbox()
    rep.until_filed(1)
    [item] = rep.lead_emails()
    assert item["direction"] == "outgoing" and item["source"] == "pop"


def test_unknown_senders_are_not_kept_when_the_org_turns_the_salesinbox_off(gate, dovecot):
    rep = Rep(gate, dovecot)
    sql(gate, "UPDATE orgs SET inbox_keep_unknown = false WHERE id = :o", o=rep.org["id"])
    stranger = f"someone-{uuid.uuid4().hex[:6]}@elsewhere.example.net"
    dovecot.seed(rep.login, "INBOX", [mail(1, stranger, rep.address), *rep.incoming(1)])
    rep.connect_mailbox()
    rep.until_filed(1)
    wait_until(lambda: rep.remembered() == 2, timeout=10)  # both seen: neither fetched again
    gate.settle()
    time.sleep(1.0)  # a few more polls
    assert rep.filed() == 1 and len(rep.lead_emails()) == 1


def test_mail_deleted_on_the_server_by_another_client_is_forgotten_not_refetched(gate, dovecot):
    rep = Rep(gate, dovecot)
    dovecot.seed(rep.login, "INBOX", rep.incoming(3))
    rep.connect_mailbox()
    rep.until_filed(3)
    wait_until(lambda: rep.remembered() == 3, timeout=10)
    box = dovecot.maildir(rep.login)
    [first, *_] = sorted((box / "cur").iterdir()) or sorted((box / "new").iterdir())
    first.unlink()  # the rep's phone took it with "delete from server"
    wait_until(lambda: rep.remembered() == 2, timeout=10)
    time.sleep(0.7)
    assert rep.filed() == 3  # what was filed stays filed
    assert sum(r for r, _ in rep.sessions()) == 3


def test_a_restarted_runner_files_nothing_twice_and_fetches_only_new_mail(gate, dovecot):
    rep = Rep(gate, dovecot)
    dovecot.seed(rep.login, "INBOX", rep.incoming(5))
    rep.connect_mailbox()
    rep.until_filed(5)
    supervisor = gate.running.services.runner("mailboxes")
    gate.call(supervisor.stop(deadline=3.0))
    fetched_before = sum(r for r, _ in rep.sessions())
    assert fetched_before == 5
    sessions_before = len(rep.sessions())

    gate.call(supervisor.start())
    wait_until(lambda: len(rep.sessions()) >= sessions_before + 2, timeout=15)
    assert sum(r for r, _ in rep.sessions()) == 5  # polls after the restart retrieved nothing
    assert rep.filed() == 5

    dovecot.append(rep.login, "INBOX", mail(99, rep.lead_email, rep.address))
    rep.until_filed(6, timeout=10)
    gate.settle()
    assert sum(r for r, _ in rep.sessions()) == 6
    assert rep.remembered() == 6 and len(rep.lead_emails()) == 6
    assert rep.stat() == 6


def test_a_whole_new_server_process_on_the_same_database_files_nothing_twice(
    gate, dovecot, tmp_path
):
    rep = Rep(gate, dovecot)
    dovecot.seed(rep.login, "INBOX", rep.incoming(3))
    rep.connect_mailbox()
    rep.until_filed(3)
    second = MailgateServer(
        gate.settings.database_url, tmp_path, pop_interval=0.3, max_message_size=LIMIT
    ).start({"worker", "imap"})
    try:
        before = len(rep.sessions())
        wait_until(lambda: len(rep.sessions()) >= before + 4, timeout=15)  # both pollers ran
        dovecot.append(rep.login, "INBOX", mail(7, rep.lead_email, rep.address))
        rep.until_filed(4, timeout=10)
        time.sleep(1.0)
        assert rep.filed() == 4 and rep.remembered() == 4
    finally:
        second.stop()


def test_a_wrong_password_shows_bad_login_and_connecting_again_recovers(gate, dovecot):
    rep = Rep(gate, dovecot)
    dovecot.seed(rep.login, "INBOX", rep.incoming(2))
    rep.connect_mailbox(password="not-the-password")
    status = wait_until(lambda: (s := rep.status())["state"] == "error" and s, timeout=20)
    assert status["error"]["kind"] == "bad_login"
    assert "refused the login or password" in status["error"]["message"]
    assert "not-the-password" not in str(status)
    assert rep.filed() == 0

    assert rep.api.delete(f"/api/v1/mailboxes/{rep.mailbox['id']}").status_code == 204
    rep.connect_mailbox(password="pw")  # (SQLite may hand out the same id again)
    rep.until_filed(2)
    wait_until(lambda: rep.status()["state"] == "ok", timeout=10)


def test_a_message_over_the_size_limit_is_skipped_with_its_reason_and_not_retried(gate, dovecot):
    rep = Rep(gate, dovecot)
    huge = mail(1, rep.lead_email, rep.address, body="x" * 70 + ("\n" + "y" * 76) * 4000)
    assert len(huge) > LIMIT
    dovecot.seed(rep.login, "INBOX", [huge, *rep.incoming(1, start=2)])
    rep.connect_mailbox()
    rep.until_filed(1)
    status = wait_until(lambda: (s := rep.status())["skipped"]["count"] == 1 and s, timeout=10)
    assert status["state"] == "ok" and status["error"] is None
    [skipped] = status["skipped"]["items"]
    assert "too large" in skipped["reason"] and str(LIMIT) in skipped["reason"]
    before = len(rep.sessions())
    wait_until(lambda: len(rep.sessions()) >= before + 2, timeout=10)
    assert sum(r for r, _ in rep.sessions()) == 1  # the huge one was never retrieved
    assert rep.stat() == 2


def test_a_10000_message_first_poll_is_stored_in_committed_batches(gate, dovecot):
    rep = Rep(gate, dovecot)
    total = 10_000
    dovecot.seed(rep.login, "INBOX", rep.incoming(total))
    rep.connect_mailbox()
    # Batches commit one by one: some are remembered while the backfill is still going.
    wait_until(lambda: 0 < rep.remembered() < total, timeout=60, interval=0.01)
    assert rep.status()["state"] in ("backfilling", "pending")
    rep.until_filed(total, timeout=420)
    status = wait_until(lambda: (s := rep.status())["state"] == "ok" and s, timeout=30)
    assert status["progress"]["INBOX"] == {"done": total, "total": total}
    assert rep.remembered() == total
    before = len(rep.sessions())
    wait_until(lambda: len(rep.sessions()) >= before + 1, timeout=15)
    assert sum(r for r, _ in rep.sessions()) == total  # later polls retrieve nothing


def test_pop3s_and_stls_are_spoken_with_a_checked_certificate():
    server = start_or_skip_tls()
    try:
        server.add_user("alice", "secret")
        server.seed("alice", "INBOX", [mail(1, "a@example.com", "alice@example.jp")])
        trusted = ssl.create_default_context(cafile=str(server.ca_file))

        async def listing(port: int, security: str, context: ssl.SSLContext | None):
            config = MailboxConfig("127.0.0.1", port, "alice", "secret", security)
            session = await connect(config, 5, context)
            try:
                return await session.list_messages()
            finally:
                await session.quit()

        assert len(asyncio.run(listing(server.pop3s_port, "tls", trusted))) == 1
        assert len(asyncio.run(listing(server.pop3_port, "starttls", trusted))) == 1
        with pytest.raises(MailboxError) as untrusted:
            asyncio.run(listing(server.pop3s_port, "tls", None))
        assert untrusted.value.kind == "tls_failure"
        assert "not trusted" in untrusted.value.message
    finally:
        server.stop()


def test_stls_is_required_when_asked_for_and_the_password_never_sent_in_clear():
    script = Script([b"x"], capa=b"USER\r\nUIDL\r\n")  # no STLS offered
    try:
        config = MailboxConfig("127.0.0.1", script.port, "alice", "secret", "starttls")
        with pytest.raises(MailboxError) as refused:
            asyncio.run(connect(config, 5))
        assert refused.value.kind == "tls_failure" and "STLS" in refused.value.message
        assert not any(line.startswith(b"PASS") for line in script.commands)
    finally:
        script.close()


def start_or_skip_tls() -> Dovecot:
    from tests.support.dovecot import DOVECOT

    if DOVECOT is None:
        pytest.skip("dovecot is not installed (Debian: apt-get install dovecot-pop3d)")
    return Dovecot().start(tls=True)


# -- a scripted, hostile POP3 server on a real socket -------------------------------------


class Script(socketserver.ThreadingTCPServer):
    """A tiny POP3 server: serves ``messages``, misbehaving as told, on a loopback port.

    ``drop_in_retr``: (session, message number) pairs where it sends half the
    message and hangs up; ``sizes``: what LIST claims; ``uidl=False``: no
    UIDL; ``endless``: the UIDL answer is one line without an end; ``greeting``: the
    first line it sends.
    """

    allow_reuse_address = True
    daemon_threads = True

    def __init__(
        self,
        messages: list[bytes],
        *,
        uidl: bool = True,
        drop_in_retr: set[tuple[int, int]] = frozenset(),
        sizes: dict[int, int] | None = None,
        endless: bool = False,
        capa: bytes | None = None,
        greeting: bytes = b"+OK scripted POP3 ready\r\n",
    ) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptHandler)
        self.messages, self.uidl, self.drop_in_retr = messages, uidl, drop_in_retr
        self.sizes, self.endless, self.capa = sizes or {}, endless, capa
        self.greeting = greeting
        self.sessions = 0
        self.retrieved: list[tuple[int, int]] = []
        self.commands: list[bytes] = []
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ScriptHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        srv: Script = self.server  # type: ignore[assignment]
        srv.sessions += 1
        session = srv.sessions
        send = self.wfile.write
        send(srv.greeting)
        for line in self.rfile:
            srv.commands.append(line.strip())
            words = line.strip().split(b" ")
            verb = words[0].upper()
            if verb == b"CAPA":
                caps = srv.capa or (b"USER\r\n" + (b"UIDL\r\n" if srv.uidl else b""))
                send(b"+OK\r\n" + caps + b".\r\n")
            elif verb in (b"USER", b"PASS", b"NOOP"):
                send(b"+OK\r\n")
            elif verb == b"UIDL" and srv.uidl:
                if srv.endless:
                    send(b"+OK\r\n1 ")
                    for _ in range(2000):
                        send(b"A" * 4096)
                    return
                lines = [f"{i} uid-{i}\r\n".encode() for i in range(1, len(srv.messages) + 1)]
                send(b"+OK\r\n" + b"".join(lines) + b".\r\n")
            elif verb == b"LIST":
                lines = [
                    f"{i} {srv.sizes.get(i, len(m))}\r\n".encode()
                    for i, m in enumerate(srv.messages, 1)
                ]
                send(b"+OK\r\n" + b"".join(lines) + b".\r\n")
            elif verb == b"RETR":
                number = int(words[1])
                srv.retrieved.append((session, number))
                body = _stuffed(srv.messages[number - 1])
                if (session, number) in srv.drop_in_retr:
                    send(b"+OK\r\n" + body[: len(body) // 2])
                    return
                send(b"+OK\r\n" + body + b".\r\n")
            elif verb == b"QUIT":
                send(b"+OK bye\r\n")
                return
            else:
                send(b"-ERR unknown command\r\n")


def _stuffed(raw: bytes) -> bytes:
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)


def test_a_connection_dropped_mid_retr_marks_nothing_seen_and_the_next_poll_files_all(gate):
    rep = Rep(gate, None)
    messages = rep.incoming(3)
    script = Script(messages, drop_in_retr={(1, 2)})
    try:
        rep.connect_mailbox(port=script.port)
        rep.until_filed(3)
        gate.settle()
        assert (1, 2) in script.retrieved and (2, 1) in script.retrieved  # fetched again
        assert rep.remembered() == 3 and len(rep.lead_emails()) == 3
        wait_until(lambda: rep.status()["state"] == "ok", timeout=10)
        assert not any(c.upper().startswith(b"DELE") for c in script.commands)
    finally:
        script.close()


def test_a_message_longer_than_listed_is_skipped_and_the_rest_is_filed(gate):
    rep = Rep(gate, None)
    big = mail(2, rep.lead_email, rep.address, body="z" * 70 + ("\n" + "w" * 76) * 4000)
    messages = [rep.incoming(1)[0], big, rep.incoming(1, start=3)[0]]
    script = Script(messages, sizes={2: 100})  # it claims 100 bytes
    try:
        rep.connect_mailbox(port=script.port)
        rep.until_filed(2)
        status = wait_until(lambda: (s := rep.status())["skipped"]["count"] == 1 and s, timeout=10)
        assert "listed as 100 bytes" in status["skipped"]["items"][0]["reason"]
        sessions = script.sessions
        wait_until(lambda: script.sessions >= sessions + 2, timeout=10)
        assert [n for _, n in script.retrieved].count(2) == 1  # not retried
    finally:
        script.close()


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        ({"uidl": False}, "does not support UIDL"),
        ({"endless": True}, "not understood"),
        ({"greeting": b"* OK [CAPABILITY IMAP4rev1] an IMAP server\r\n"}, "not understood"),
        ({"greeting": b"+OK " + b"x" * 100_000 + b"\r\n"}, "not understood"),
    ],
    ids=["no-uidl", "endless-line", "imap-greeting", "huge-greeting"],
)
def test_a_server_that_cannot_be_trusted_is_a_clear_error_not_a_crash(gate, behaviour, words):
    rep = Rep(gate, None)
    script = Script(rep.incoming(2), **behaviour)
    try:
        rep.connect_mailbox(port=script.port)
        status = wait_until(lambda: (s := rep.status())["state"] == "error" and s, timeout=20)
        assert status["error"]["kind"] == "protocol"
        assert words in status["error"]["message"]
        assert rep.filed() == 0 and rep.remembered() == 0
    finally:
        script.close()


def test_unreachable_pop3_server_is_reported_in_plain_words(gate):
    rep = Rep(gate, None)
    rep.connect_mailbox(port=free_port())
    status = wait_until(lambda: (s := rep.status())["state"] == "error" and s, timeout=20)
    assert status["error"]["kind"] == "unreachable"
    assert "could not be reached" in status["error"]["message"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"protocol": "smtp"}, "protocol"),
        ({"protocol": ["pop3"]}, "protocol"),
        ({"sent_folder": "Sent"}, "sent_folder"),
    ],
)
def test_hostile_pop3_mailbox_input_gets_a_clear_422(gate, extra, words):
    rep = Rep(gate, None)
    body = {
        "protocol": "pop3",
        "host": "127.0.0.1",
        "port": 995,
        "login": "l",
        "password": "p",
        **extra,
    }
    r = rep.api.post("/api/v1/mailboxes", json=body)
    assert r.status_code == 422, r.text
    assert words in r.json()["error"]["message"]


def test_imap_and_pop3_mailboxes_are_listed_together_and_removed_alike(gate, dovecot):
    rep = Rep(gate, dovecot)
    pop = rep.connect_mailbox()
    r = rep.api.post(
        "/api/v1/mailboxes",
        json={
            "host": "127.0.0.1",
            "port": dovecot.port,
            "login": dovecot.unused.pop(),
            "password": "pw",
            "security": "none",
        },
    )
    assert r.status_code == 201, r.text
    imap = r.json()
    assert imap["protocol"] == "imap"
    listed = rep.api.get("/api/v1/mailboxes").json()["items"]
    assert {(m["id"], m["protocol"]) for m in listed} == {(pop["id"], "pop3"), (imap["id"], "imap")}
    other = Rep(gate, None)
    assert other.api.get(f"/api/v1/mailboxes/{pop['id']}").status_code == 404
    assert other.api.delete(f"/api/v1/mailboxes/{pop['id']}").status_code == 404
    assert rep.api.delete(f"/api/v1/mailboxes/{pop['id']}").status_code == 204
    assert rep.api.get(f"/api/v1/mailboxes/{pop['id']}").status_code == 404


# -- pure parts ------------------------------------------------------------------------


def test_listing_refuses_malformed_duplicate_and_missing_uidls():
    ok = merge_listing([b"1 120", b"2 300"], [b"1 abc", b"2 def"])
    assert ok == [Listed(1, 120, "abc"), Listed(2, 300, "def")]
    for sizes, uidls in [
        ([b"1 120", b"2 300"], [b"1 abc", b"2 abc"]),  # the same UIDL twice
        ([b"1 120"], [b"1 " + b"u" * 71]),  # longer than RFC 1939 allows
        ([b"1 120"], [b"1 ab\x01c"]),  # a control character
        ([b"1 120"], [b"1 abc", b"2 def"]),  # a UIDL without a LIST size
        ([b"one 120"], [b"1 abc"]),  # not a number
        ([b"1 -5"], [b"1 abc"]),  # not a size
    ]:
        with pytest.raises(MailboxError) as err:
            merge_listing(sizes, uidls)
        assert err.value.kind == "protocol"


def test_batches_hold_at_most_their_count_and_about_their_bytes():
    items = [Listed(i, 10, f"u{i}") for i in range(1, 251)]
    assert [len(b) for b in plan_batches(items, 1000, count=100)] == [100, 100, 50]
    heavy = [Listed(i, 600, f"u{i}") for i in range(1, 6)]
    assert [len(b) for b in plan_batches(heavy, 1000, count=100, size=1000)] == [1, 1, 1, 1, 1]
    oversize = [Listed(i, 5000, f"u{i}") for i in range(1, 6)]  # skipped ones weigh nothing
    assert [len(b) for b in plan_batches(oversize, 1000, count=100, size=1000)] == [5]
