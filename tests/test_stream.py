"""Live signals (``GET /api/v1/stream``) through the running server, on SQLite and PostgreSQL.

Mail goes out through the API to a real relay (Postfix's smtp-sink), opens and
clicks come in over HTTP as a mail client's would, replies are polled from a
real Dovecot; the stream is read by an httpx client in a thread, as a browser's
``EventSource`` would read it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import smtplib
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from gateway.bounces import verp_address
from gateway.clock import FixedClock
from gateway.http.stream import SignalHub
from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.dovecot import start_or_skip
from tests.support.sends import flush
from tests.support.server import MAIL_DOMAIN, MailgateServer, wait_until

pytestmark = pytest.mark.skipif(
    not smtp_sink.available(), reason="Postfix smtp-sink not installed (apt-get install postfix)"
)

BROWSER_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Safari/605.1.15"
)
HTML = '<p>山田様</p><p><a href="https://shop.example.co.jp/item/1">商品</a></p>'


@pytest.fixture(scope="module")
def relay_port():
    port = smtp_sink.free_port()
    relay = smtp_sink.SmtpSink(port, dump=False).start()
    yield port
    relay.stop()


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory, relay_port):
    server = MailgateServer(
        database_url,
        tmp_path_factory.mktemp("data"),
        relay_url=f"smtp://127.0.0.1:{relay_port}",
        relay_poll_interval=0.1,
        relay_retry_base=0.2,
        relay_retry_cap=0.5,
    ).start({"smtp", "http", "worker", "sync", "imap"})
    yield server
    server.stop()


@dataclass
class Rep:
    user: dict[str, Any]
    api: httpx.Client

    @property
    def id(self) -> int:
        return self.user["id"]


class Team:
    """An org with reps; the first is an admin."""

    def __init__(self, gate: MailgateServer, size: int = 1) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.gate = gate
        self.org = gate.org(f"Stream {self.tag}", domains=[f"{self.tag}.example.jp"])
        self.reps = [
            self._rep(f"rep{i}@{self.tag}.example.jp", admin=(i == 0)) for i in range(size)
        ]

    def _rep(self, address: str, admin: bool) -> Rep:
        user = self.gate.user(self.org, address, "佐藤 花子", admin=admin)
        user["address"] = address
        return Rep(user, self.gate.api(user))


def new_lead(rep: Rep, address: str | None = None) -> dict[str, Any]:
    address = address or f"lead-{uuid.uuid4().hex[:8]}@customer.example.com"
    body = {"last_name": "山田", "first_name": "太郎", "email": address}
    r = rep.api.post("/api/v1/leads", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def send_to(rep: Rep, lead: dict[str, Any], subject: str = "ご提案の件") -> dict[str, Any]:
    """Mail the lead through the API and wait until the relay took it."""
    body = {"to": [{"module": "leads", "id": lead["id"]}], "subject": subject, "html": HTML}
    r = rep.api.post("/api/v1/emails", json=body)
    assert r.status_code == 202, r.text
    send_id = r.json()["sends"][0]["id"]
    return wait_until(
        lambda: (s := rep.api.get(f"/api/v1/sends/{send_id}").json())["state"] == "sent" and s,
        timeout=20,
    )


def open_token(gate: MailgateServer, send_id: int) -> str:
    return gate.running.services.tracking.signer.open_token(send_id)


def click_token(gate: MailgateServer, send_id: int, index: int = 0) -> str:
    return gate.running.services.tracking.signer.click_token(send_id, index)


def hit(gate: MailgateServer, path: str, ua: str = BROWSER_UA) -> None:
    with httpx.Client(base_url=gate.http_url, headers={"User-Agent": ua}) as c:
        assert c.get(path, follow_redirects=False).status_code in (200, 302)


def human_open(gate: MailgateServer, send_id: int) -> None:
    """A person opens the mail; the hit is judged and its event written when this returns."""
    hit(gate, f"/t/o/{open_token(gate, send_id)}")
    flush(gate)


def age(gate: MailgateServer, send_id: int, by: timedelta = timedelta(hours=1)) -> None:
    """Pretend the send went out ``by`` ago (a click seconds after delivery is a scanner)."""

    async def go() -> None:
        async with gate.db.begin() as conn:
            q = update(sends).where(sends.c.id == send_id)
            await conn.execute(q.values(sent_at=datetime.now(UTC) - by))

    gate.call(go())


class Stream:
    """An SSE client in a thread: each message parsed and stamped with when it arrived."""

    def __init__(
        self,
        gate: MailgateServer,
        rep: Rep | None = None,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        hdrs = {"Accept": "text/event-stream", **(headers or {})}
        if rep is not None:
            hdrs["Authorization"] = f"Bearer {rep.user['api_token']}"
        self.messages: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue()
        self.status: int | None = None
        self.error_body: dict[str, Any] | None = None
        self.ended = threading.Event()
        self._ready = threading.Event()
        self._client = httpx.Client(
            base_url=gate.http_url, timeout=httpx.Timeout(30, read=None), headers=hdrs
        )
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, args=(params,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the stream did not answer"

    def _read(self, params: dict[str, str] | None) -> None:
        try:
            with self._client.stream("GET", "/api/v1/stream", params=params) as response:
                self._response = response
                self.status = response.status_code
                if response.status_code != 200:
                    self.error_body = json.loads(response.read())
                    return
                self._ready.set()
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if fields:
                            self.messages.put((time.monotonic(), self._parse(fields)))
                        fields = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        fields[name] = value[1:] if value.startswith(" ") else value
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self._ready.set()
            self.ended.set()
            self.messages.put(None)

    @staticmethod
    def _parse(fields: dict[str, str]) -> dict[str, Any]:
        data = json.loads(fields["data"])
        assert fields["id"] == str(data["id"]) and fields["event"] == data["kind"]
        return data

    def next(self, timeout: float = 10) -> tuple[float, dict[str, Any]]:
        item = self.messages.get(timeout=timeout)
        assert item is not None, "the stream ended"
        return item

    def signal(self, timeout: float = 10) -> dict[str, Any]:
        return self.next(timeout)[1]

    def quiet(self, seconds: float) -> bool:
        """True when nothing arrives for ``seconds``."""
        try:
            item = self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        self.messages.put(item)
        return False

    def close(self) -> None:
        """Hang up, as a closed browser tab does (the reader thread is blocked in a read, so
        shut the socket down under it rather than ask httpx from another thread)."""
        if self._response is not None and not self.ended.is_set():
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        assert not self._thread.is_alive(), "the stream's reader did not stop"
        self._client.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hub(gate: MailgateServer) -> SignalHub:
    found = gate.running.services.running("signals")
    assert isinstance(found, SignalHub)
    return found


def no_streams_of(gate: MailgateServer, *reps: Rep) -> None:
    """Closed streams give their slots back (the server notices the disconnect)."""
    wait_until(lambda: all(hub(gate).streams_of(r.id) == 0 for r in reps), timeout=5)


# -- the signals -----------------------------------------------------------------------


def test_a_human_open_reaches_the_senders_stream_within_a_second(gate):
    team = Team(gate)
    rep = team.reps[0]
    lead = new_lead(rep)
    send = send_to(rep, lead, subject="お見積りの件")
    took, seen = [], []
    with Stream(gate, rep) as stream:
        # Three opens (the lead reads it again): the median is the claim, since this
        # machine's two cores are shared and one sample may catch a stall of seconds.
        for _ in range(3):
            hit(gate, f"/t/o/{open_token(gate, send['id'])}")
            flush(gate)  # the verdict is written (email.opened, human) when this returns
            written = time.monotonic()
            arrived, signal = stream.next(timeout=5)
            took.append(arrived - written)
            seen.append(signal)
    assert sorted(took)[1] < 1.0 and max(took) < 3.0, [f"{t:.2f} s" for t in took]
    signal = seen[0]
    assert signal["kind"] == "opened"
    assert signal["send_id"] == send["id"]
    assert signal["record"] == {"module": "leads", "id": lead["id"], "name": "山田 太郎"}
    assert signal["subject"] == "お見積りの件"
    assert signal["counterpart"] == lead["email"]
    assert signal["user_id"] == rep.id
    events = rep.api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
    opened = [e["id"] for e in events if e["type"] == "email.opened"]
    assert opened == [s["id"] for s in seen]  # id: is the event log's id


def test_machine_opens_and_clicks_never_arrive_a_human_click_does(gate):
    team = Team(gate)
    rep = team.reps[0]
    send = send_to(rep, new_lead(rep))
    with Stream(gate, rep) as stream:
        opens = f"/t/o/{open_token(gate, send['id'])}"
        hit(gate, opens, ua="python-requests/2.32.3")  # a script: scanner_ua
        hit(gate, opens, ua="Mozilla/5.0")  # Apple Mail Privacy Protection
        hit(gate, f"/t/c/{click_token(gate, send['id'])}")  # seconds after delivery
        flush(gate)
        verdicts = rep.api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
        machine = [e for e in verdicts if e["data"].get("verdict") == "machine"]
        assert len(machine) == 3
        # The same mail read an hour later: a person's click.
        age(gate, send["id"])
        hit(gate, f"/t/c/{click_token(gate, send['id'])}")
        flush(gate)
        # A click implies an open; both are human, and nothing machine came first.
        got = {s["kind"]: s for s in (stream.signal(), stream.signal())}
        assert sorted(got) == ["clicked", "opened"]
        assert got["clicked"]["url"] == "https://shop.example.co.jp/item/1"
        assert all(e["id"] < min(s["id"] for s in got.values()) for e in machine)
        assert stream.quiet(0.6)


def test_a_stream_resumes_after_a_reconnect_with_exactly_the_signals_missed(gate):
    team = Team(gate)
    rep = team.reps[0]
    lead = new_lead(rep)
    first, second = send_to(rep, lead), send_to(rep, lead, subject="二通目")
    with Stream(gate, rep) as stream:
        human_open(gate, first["id"])
        seen = stream.signal()
    # Disconnected: two more happen.
    human_open(gate, second["id"])
    human_open(gate, first["id"])
    no_streams_of(gate, rep)
    with Stream(gate, rep, headers={"Last-Event-ID": str(seen["id"])}) as resumed:
        missed = [resumed.signal(), resumed.signal()]
        assert [m["send_id"] for m in missed] == [second["id"], first["id"]]
        assert seen["id"] < missed[0]["id"] < missed[1]["id"]
        assert missed[0]["subject"] == "二通目"
        assert resumed.quiet(0.6)  # no duplicate of what was read before
        # …and it is live again: nothing falls between the replay and live delivery.
        human_open(gate, second["id"])
        live = resumed.signal()
        assert live["id"] > missed[1]["id"] and live["send_id"] == second["id"]
    # ?after= for clients that cannot set headers: the same replay.
    with Stream(gate, rep, params={"after": str(seen["id"])}) as by_param:
        ids = [by_param.signal()["id"] for _ in range(3)]
        assert ids == [missed[0]["id"], missed[1]["id"], live["id"]]
        assert by_param.quiet(0.3)
    # No id: from now, nothing old.
    with Stream(gate, rep) as fresh:
        assert fresh.quiet(0.6)


def test_signals_reach_the_sender_and_the_records_owner_and_nobody_else(gate):
    team = Team(gate, size=3)
    owner, sender, colleague = team.reps
    other = Team(gate)
    lead = new_lead(owner)  # the owner's lead
    send = send_to(sender, lead)  # a colleague mails it from the CRM: public mail
    streams = {
        "owner": Stream(gate, owner),
        "sender": Stream(gate, sender),
        "colleague": Stream(gate, colleague),
        "other org": Stream(gate, other.reps[0]),
    }
    try:
        human_open(gate, send["id"])
        got_owner, got_sender = streams["owner"].signal(), streams["sender"].signal()
        assert got_owner == got_sender
        assert got_owner["kind"] == "opened" and got_owner["user_id"] == sender.id
        # Their own mail's open in the other org arrives there only.
        foreign = send_to(other.reps[0], new_lead(other.reps[0]))
        human_open(gate, foreign["id"])
        assert streams["other org"].signal()["send_id"] == foreign["id"]
        for who in ("colleague", "owner", "sender"):
            assert streams[who].quiet(0.3), who
    finally:
        for s in streams.values():
            s.close()


def verp_token_of(gate: MailgateServer, send_id: int) -> str:
    async def go() -> str:
        async with gate.db.connect() as conn:
            q = select(sends.c.verp_token).where(sends.c.id == send_id)
            return (await conn.execute(q)).scalar_one()

    return gate.call(go())


def dsn(to: str, recipient: str) -> bytes:
    """A remote MTA's delivery status notification (RFC 3464): the mailbox does not exist."""
    return (
        "From: MAILER-DAEMON@mx.customer.example.com\r\n"
        f"To: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {format_datetime(datetime.now(UTC))}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@mx.customer.example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.customer.example.com\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n--b1--\r\n"
    ).encode()


def test_a_bounce_of_the_reps_mail_is_a_bounced_signal(gate):
    team = Team(gate)
    rep = team.reps[0]
    lead = new_lead(rep)
    send = send_to(rep, lead, subject="ご案内")
    with Stream(gate, rep) as stream:
        return_path = verp_address(verp_token_of(gate, send["id"]), MAIL_DOMAIN)
        with smtplib.SMTP("127.0.0.1", gate.smtp_port, timeout=30) as smtp:
            smtp.sendmail("", [return_path], dsn(return_path, lead["email"]))
        signal = stream.signal(timeout=20)
    assert signal["kind"] == "bounced" and signal["bounce_type"] == "hard"
    assert (signal["send_id"], signal["counterpart"]) == (send["id"], lead["email"])
    assert signal["record"]["id"] == lead["id"] and signal["subject"] == "ご案内"


def test_a_replay_reaches_back_seven_days_at_most(gate):
    team = Team(gate)
    rep = team.reps[0]
    send = send_to(rep, new_lead(rep))
    with Stream(gate, rep) as stream:
        human_open(gate, send["id"])
        seen = stream.signal()
    human_open(gate, send["id"])  # missed
    services = gate.running.services
    real = services.clock
    services.clock = FixedClock(real.now() + timedelta(days=7, minutes=1))
    try:
        with Stream(gate, rep, headers={"Last-Event-ID": str(seen["id"] - 1)}) as late:
            assert late.quiet(0.6)  # both are more than seven days old now
    finally:
        services.clock = real
    with Stream(gate, rep, headers={"Last-Event-ID": str(seen["id"] - 1)}) as in_time:
        assert in_time.signal()["id"] == seen["id"]
        assert in_time.signal()["id"] > seen["id"]


# -- mail polled from a mailbox: received, replied, private ------------------------------


@pytest.fixture(scope="module")
def dovecot():
    server = start_or_skip()
    logins = [f"stream{i}" for i in range(6)]
    server.add_users({login: "pw" for login in logins})
    server.unused = logins
    yield server
    server.stop()


def connect_mailbox(rep: Rep, dovecot) -> str:
    login = dovecot.unused.pop()
    body = {
        "host": dovecot.host,
        "port": dovecot.port,
        "login": login,
        "password": "pw",
        "security": "none",
    }
    r = rep.api.post("/api/v1/mailboxes", json=body)
    assert r.status_code == 201, r.text
    return login


def mail_from(lead: dict[str, Any], rep: Rep, subject: str, extra: str = "") -> bytes:
    return (
        f"From: {lead['email']}\nTo: {rep.user['address']}\n"
        f"Message-ID: <{uuid.uuid4().hex}@customer.example.com>\n"
        f"Subject: {subject}\nDate: {format_datetime(datetime.now(UTC))}\n{extra}\n"
        "ありがとうございます。\n"
    ).encode()


def test_a_reply_polled_from_imap_is_a_replied_signal_and_private_or_excluded_mail_stays_its_owners(
    gate, dovecot
):
    team = Team(gate, size=2)
    owner, rep = team.reps  # the owner's lead writes to the rep's private mailbox
    lead = new_lead(owner)
    send = send_to(rep, lead, subject="ご提案")
    r = owner.api.put(f"/api/v1/users/{rep.id}/sharing", json={"mode": "private"})
    assert r.status_code == 200, r.text
    login = connect_mailbox(rep, dovecot)
    with Stream(gate, rep) as mine, Stream(gate, owner) as owners:
        reply = mail_from(lead, rep, "Re: ご提案", extra=f"In-Reply-To: {send['message_id']}\n")
        dovecot.seed(login, "INBOX", [reply])
        received, replied = mine.signal(timeout=30), mine.signal()
        assert (received["kind"], replied["kind"]) == ("received", "replied")
        assert received["message_id"] == replied["message_id"] is not None
        assert replied["send_id"] == send["id"]
        assert replied["record"] == {"module": "leads", "id": lead["id"], "name": "山田 太郎"}
        assert replied["subject"] == "Re: ご提案" and replied["counterpart"] == lead["email"]
        assert received["counterpart"] == lead["email"]
        # The lead is the owner's, but the mail is the rep's private mail.
        assert owners.quiet(0.6)
        # Shared again, the next mail from the owner's lead reaches the owner too.
        r = owner.api.put(f"/api/v1/users/{rep.id}/sharing", json={"mode": "public"})
        assert r.status_code == 200, r.text
        dovecot.seed(login, "INBOX", [mail_from(lead, rep, "追加の質問")])
        for stream in (mine, owners):
            got = stream.signal(timeout=30)
            assert (got["kind"], got["subject"], got["user_id"]) == (
                "received",
                "追加の質問",
                rep.id,
            )
        # Mail with an excluded domain is filed but shared with nobody: the rep's alone.
        r = owner.api.put("/api/v1/excluded-domains", json={"domains": ["customer.example.com"]})
        assert r.status_code == 200, r.text
        dovecot.seed(login, "INBOX", [mail_from(lead, rep, "社外秘")])
        got = mine.signal(timeout=30)
        assert (got["kind"], got["subject"]) == ("received", "社外秘")
        assert owners.quiet(0.6)


# -- hostile and operational ---------------------------------------------------------


def test_bad_tokens_garbage_ids_and_a_sixth_stream_are_refused(gate):
    team = Team(gate)
    rep = team.reps[0]
    for headers in ({}, {"Authorization": "Bearer mg_nope"}, {"Authorization": "Basic x"}):
        refused = Stream(gate, headers=headers)
        assert refused.status == 401, headers
        assert refused.error_body["error"]["code"] == "unauthorized"
    assert Stream(gate, params={"access_token": "mg_nope"}).status == 401
    for garbage in ("abc", "-1", "+1", "1e3", "12x", "0x10", "9" * 20, "18446744073709551616"):
        refused = Stream(gate, rep, headers={"Last-Event-ID": garbage})
        assert refused.status == 400, garbage
        assert refused.error_body["error"]["code"] == "bad_last_event_id"
    for garbage in ("١٢", "1 2", "-0", "1.0", "\x00"):
        assert Stream(gate, rep, params={"after": garbage}).status == 400, garbage
    five = [Stream(gate, rep) for _ in range(5)]
    try:
        assert all(s.status == 200 for s in five)
        sixth = Stream(gate, rep)
        assert sixth.status == 429
        assert sixth.error_body["error"]["code"] == "too_many_streams"
        five.pop().close()
        wait_until(lambda: hub(gate).streams_of(rep.id) == 4, timeout=5)
        five.append(Stream(gate, rep))
        assert five[-1].status == 200
    finally:
        for s in five:
            s.close()
    no_streams_of(gate, rep)


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_query_token_opens_a_stream_for_event_source_and_is_never_logged(
    database_url, tmp_path_factory
):
    server = MailgateServer(
        database_url, tmp_path_factory.mktemp("log"), http_access_log=True
    ).start({"http"})
    access = logging.getLogger("uvicorn.access")
    captured = Captured()
    access.addHandler(captured)  # MAILGATE_HTTP_ACCESS_LOG alone makes it log INFO lines
    try:
        org = server.org(f"log-{uuid.uuid4().hex[:6]}")
        user = server.user(org, "log@example.co.jp")
        token = user["api_token"]
        with Stream(server, params={"access_token": token, "after": "0"}) as stream:
            assert stream.status == 200
        assert Stream(server, params={"access_token": token, "after": "x"}).status == 400
        wait_until(lambda: len(captured.lines) >= 2, timeout=5)
    finally:
        access.removeHandler(captured)
        server.stop()
    assert any("/api/v1/stream?after=0" in line for line in captured.lines), captured.lines
    assert not any(token in line for line in captured.lines), captured.lines


def test_an_id_past_the_end_of_the_log_means_now(gate):
    team = Team(gate)
    rep = team.reps[0]
    send = send_to(rep, new_lead(rep))
    with Stream(gate, rep, headers={"Last-Event-ID": str(2**63 - 1)}) as stream:
        human_open(gate, send["id"])
        assert stream.signal()["send_id"] == send["id"]


def test_stopping_the_server_ends_open_streams_at_once(database_url, tmp_path_factory):
    server = MailgateServer(
        database_url, tmp_path_factory.mktemp("stop"), stop_deadline=10.0
    ).start({"http"})
    org = server.org(f"stop-{uuid.uuid4().hex[:6]}")
    user = server.user(org, "stop@example.co.jp")
    rep = Rep(user, server.api(user))
    streams = [Stream(server, rep) for _ in range(3)]
    began = time.monotonic()
    server.stop()
    took = time.monotonic() - began
    assert all(s.ended.wait(2) for s in streams)
    assert took < 3, f"stop took {took:.1f} s with streams open (deadline 10 s)"


def test_one_poll_serves_every_open_stream(gate):
    team = Team(gate, size=4)
    lead = new_lead(team.reps[0])
    sent = [send_to(rep, lead) for rep in team.reps]
    streams = [Stream(gate, rep) for rep in team.reps for _ in range(2)]
    try:
        poller = hub(gate)
        polls, statements = poller.polls, poller.statements
        for send in sent:
            human_open(gate, send["id"])
        for stream in streams:
            stream.signal()
        time.sleep(1)
        ran, used = poller.polls - polls, poller.statements - statements
        assert ran >= 3  # every ~0.25 s while streams are open
        assert used <= 2 * ran  # max(id), and the range when the log moved: not per stream
    finally:
        for s in streams:
            s.close()
