"""Every series an operator alerts on moves when the real thing happens (#14).

Each test does what a user or a peer does — mail over SMTP, a send through the
API relayed to ``smtp-sink``, a DSN and a complaint to a VERP address, a pixel
hit, a webhook endpoint answering 500, a POP3 server that is not there — then
scrapes ``/metrics`` over HTTP as Prometheus does and checks the series moved.
Counters are per process and the test process hosts other servers too, so
each test compares with a scrape taken just before.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import uuid
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import delete

from gateway.bounces import verp_address
from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.campaigns import add_member
from tests.support.databases import fresh_database
from tests.support.metrics import Scraper, scrape, series, value
from tests.support.sends import flush, make_bare_send, make_send
from tests.support.server import MAIL_DOMAIN, MailgateServer, wait_until
from tests.support.webhook_receiver import Receiver

BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


@pytest.fixture(scope="module")
def relay_port() -> int:
    if not smtp_sink.available():
        pytest.skip(f"smtp-sink not found at {smtp_sink.SMTP_SINK} (apt-get install postfix)")
    return smtp_sink.free_port()


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory, relay_port):
    """Every role in one process; the relay is an smtp-sink each test starts on ``relay_port``."""
    server = MailgateServer(
        database_url,
        tmp_path_factory.mktemp("data"),
        relay_url=f"smtp://127.0.0.1:{relay_port}",
        relay_retry_base=0.2,
        relay_retry_cap=0.5,
        relay_poll_interval=0.1,
        relay_timeout=5,
        webhook_retry_base=30,
        pop_interval=0.3,
    ).start({"smtp", "http", "worker", "sync", "imap"})
    yield server
    server.stop()


@pytest.fixture
def sink(relay_port):
    relay = smtp_sink.SmtpSink(relay_port).start()
    yield relay
    relay.stop()


@pytest.fixture
def rep(gate):
    tag = uuid.uuid4().hex[:8]
    org = gate.org(f"Ops {tag}", domains=[f"{tag}.example.jp"])
    user = gate.user(org, f"rep@{tag}.example.jp", "佐藤 花子", admin=True)
    return org, user, gate.api(user)


def dropbox_mail(frm: str, to: str, subject: str = "ご提案の件") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, to, subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@ops.example>"
    msg.set_content("お世話になっております。")
    return bytes(msg)


def smtp_send(port: int, mail_from: str, rcpt: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail(mail_from, [rcpt], raw)


def new_lead(api, email: str) -> int:
    r = api.post("/api/v1/leads", json={"last_name": "山田", "email": email})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def api_send(api, lead: int) -> int:
    r = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead}], "subject": "ご案内", "text": "本文"},
    )
    assert r.status_code == 202, r.text
    return r.json()["sends"][0]["id"]


def send_state(api, send_id: int) -> str:
    return api.get(f"/api/v1/sends/{send_id}").json()["state"]


# -- receiving and filing ---------------------------------------------------------


def test_dropbox_mail_over_smtp_counts_as_answered_received_and_filed(gate, rep):
    org, user, api = rep
    watch = Scraper(gate.http_url)
    raw = dropbox_mail(user["email"], f"lead-{uuid.uuid4().hex[:6]}@client.example")
    smtp_send(gate.smtp_port, user["email"], user["dropbox_address"], raw)
    gate.settle()
    assert watch.moved("mailgate_smtp_messages_total", reply="250") == 1
    assert watch.moved("mailgate_received_messages_total", channel="dropbox") == 1
    wait_until(lambda: watch.moved("mailgate_filed_messages_total", outcome="filed") >= 1)


def test_mail_refused_after_it_was_stored_counts_as_parked_refused(gate, rep):
    """The receiver stored mail for a dropbox address that was regenerated since (its cache
    said yes); the ingest runner refuses it and parks it for a person."""
    from gateway.org import admin

    org, user, api = rep
    old = user["dropbox_address"]
    gate.call(admin.dropbox(gate.db, str(user["id"]), regenerate=True, mail_domain=MAIL_DOMAIN))
    watch = Scraper(gate.http_url)
    row = {
        "channel": "dropbox",
        "org_id": org["id"],
        "user_id": user["id"],
        "mail_from": user["email"],
        "rcpt_to": [old],
        "raw": dropbox_mail(user["email"], "someone@client.example"),
    }

    async def store() -> None:
        services = gate.running.services
        await services.spool.store([row])
        services.wake("ingest")

    gate.call(store())
    gate.settle()
    assert watch.moved("mailgate_received_messages_total", channel="dropbox") == 1
    assert watch.moved("mailgate_inbound_parked_total", state="refused") == 1
    assert watch.moved("mailgate_filed_messages_total", outcome="unknown_dropbox") == 1
    assert watch.moved("mailgate_attention_items", state="refused") == 1  # until replayed


# -- sending ----------------------------------------------------------------------


def test_a_send_relayed_to_smtp_sink_counts_a_2xx_attempt_for_its_org_and_its_latency(
    gate, rep, sink
):
    org, user, api = rep
    watch = Scraper(gate.http_url)
    sid = api_send(api, new_lead(api, f"taro-{uuid.uuid4().hex[:6]}@client.example"))
    wait_until(lambda: send_state(api, sid) == "sent", timeout=30)
    labels = {"org_id": str(org["id"]), "state": "sent", "reply_class": "2xx"}
    assert watch.moved("mailgate_relay_attempts_total", **labels) == 1
    assert watch.moved("mailgate_relay_latency_seconds_count") >= 1
    assert watch.moved("mailgate_relay_latency_seconds_sum") > 0


def test_a_permanent_refusal_counts_a_5xx_failed_attempt_and_a_bounce_for_the_org(
    gate, rep, relay_port
):
    org, user, api = rep
    relay = smtp_sink.SmtpSink(relay_port, flags=("-f", "RCPT")).start()  # 5xx to every RCPT
    try:
        watch = Scraper(gate.http_url)
        sid = api_send(api, new_lead(api, f"gone-{uuid.uuid4().hex[:6]}@client.example"))
        wait_until(lambda: send_state(api, sid) == "failed", timeout=30)
    finally:
        relay.stop()
    org_id = str(org["id"])
    assert watch.moved("mailgate_relay_attempts_total", org_id=org_id, reply_class="5xx") == 1
    assert watch.moved("mailgate_relay_attempts_total", org_id=org_id, state="failed") == 1
    assert watch.moved("mailgate_bounces_total", org_id=org_id) == 1


def test_a_relay_that_is_not_there_counts_deferred_attempts_without_a_reply(gate, rep):
    org, user, api = rep
    watch = Scraper(gate.http_url)  # nothing listens on the relay port in this test
    sid = api_send(api, new_lead(api, f"later-{uuid.uuid4().hex[:6]}@client.example"))
    labels = {"org_id": str(org["id"]), "state": "deferred", "reply_class": "none"}
    wait_until(lambda: watch.moved("mailgate_relay_attempts_total", **labels) >= 1, timeout=30)
    assert send_state(api, sid) in ("deferred", "sending", "queued")


def _report(rcpt: str, report_type: str, machine: str, human: str) -> bytes:
    """A multipart/report (RFC 6522) as an MTA or a mailbox provider sends it."""
    boundary = uuid.uuid4().hex
    return (
        "From: MAILER-DAEMON@mx.client.example\r\n"
        f"To: {rcpt}\r\n"
        "Subject: Delivery report\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@mx.client.example>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n{human}\r\n"
        f"--{boundary}\r\nContent-Type: message/{report_type}\r\n\r\n{machine}\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def test_a_dsn_and_a_complaint_to_verp_addresses_count_per_org_and_kind(gate, rep):
    org, user, api = rep
    tag = uuid.uuid4().hex[:6]
    bounced, annoyed = (
        gate.call(make_bare_send(gate.db, org_id=org["id"], to_email=f"{who}-{tag}@client.example"))
        for who in ("gone", "annoyed")
    )
    watch = Scraper(gate.http_url)
    reports = (
        (
            bounced,
            "delivery-status",
            "Reporting-MTA: dns; mx.client.example\r\n\r\n"
            f"Final-Recipient: rfc822; {bounced['to_email']}\r\nAction: failed\r\n"
            "Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n",
            "The address does not exist.",
        ),
        (
            annoyed,
            "feedback-report",
            "Feedback-Type: abuse\r\nUser-Agent: ops-test/1.0\r\nVersion: 1\r\n"
            f"Original-Rcpt-To: {annoyed['to_email']}\r\n",
            "This is an abuse report.",
        ),
    )
    for send, report_type, machine, human in reports:
        rcpt = verp_address(send["verp_token"], MAIL_DOMAIN)
        smtp_send(gate.smtp_port, "", rcpt, _report(rcpt, report_type, machine, human))
    org_id = str(org["id"])
    wait_until(lambda: watch.moved("mailgate_bounces_total", org_id=org_id) >= 2, timeout=30)
    assert watch.moved("mailgate_bounces_total", org_id=org_id, kind="hard") == 1
    assert watch.moved("mailgate_bounces_total", org_id=org_id, kind="complaint") == 1
    assert watch.moved("mailgate_received_messages_total", channel="bounce") == 2


# -- tracking ---------------------------------------------------------------------


def test_a_pixel_hit_is_counted_queued_then_recorded_and_one_for_a_deleted_send_dropped(gate, rep):
    org, user, api = rep
    live, gone = make_send(gate, org, user), make_send(gate, org, user)

    async def forget() -> None:
        async with gate.db.begin() as conn:
            await conn.execute(delete(sends).where(sends.c.id == gone["id"]))

    gate.call(forget())
    watch = Scraper(gate.http_url)
    with httpx.Client(base_url=gate.http_url, headers={"User-Agent": BROWSER_UA}) as http:
        for send in (live, gone):
            token = re.search(r"/t/o/([A-Za-z0-9_-]+)", send["html"]).group(1)
            assert http.get(f"/t/o/{token}").status_code == 200
    flush(gate)
    assert watch.moved("mailgate_tracking_hits_total", stage="queued") == 2
    assert watch.moved("mailgate_tracking_hits_total", stage="recorded") == 1
    assert watch.moved("mailgate_tracking_hits_total", stage="dropped") == 1


# -- webhooks and mailboxes -------------------------------------------------------


def test_a_webhook_endpoint_answering_500_counts_a_rejected_attempt(gate, rep):
    org, user, api = rep
    receiver = Receiver()
    try:
        path = f"/hook/{uuid.uuid4().hex}"
        receiver.script[path] = [500] * 5
        r = api.post(
            "/api/v1/webhooks", json={"url": receiver.url(path), "events": ["record.created"]}
        )
        assert r.status_code == 201, r.text
        watch = Scraper(gate.http_url)
        new_lead(api, f"hook-{uuid.uuid4().hex[:6]}@client.example")
        wait_until(lambda: receiver.at(path), timeout=30)
        wait_until(
            lambda: watch.moved("mailgate_webhook_attempts_total", outcome="rejected") >= 1,
            timeout=10,
        )
    finally:
        receiver.close()


def test_a_pop3_mailbox_whose_server_is_down_counts_poll_errors_for_that_mailbox(gate, rep):
    org, user, api = rep
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    watch = Scraper(gate.http_url)
    r = api.post(
        "/api/v1/mailboxes",
        json={
            "protocol": "pop3",
            "host": "127.0.0.1",
            "port": port,
            "login": "rep",
            "password": "pw-not-logged",
            "security": "none",
        },
    )
    assert r.status_code == 201, r.text
    mailbox_id = str(r.json()["id"])
    try:
        wait_until(
            lambda: (
                watch.moved(
                    "mailgate_mailbox_poll_errors_total", mailbox_id=mailbox_id, protocol="pop3"
                )
                >= 1
            ),
            timeout=30,
        )
    finally:
        api.delete(f"/api/v1/mailboxes/{mailbox_id}")
    [labels] = [
        s
        for s in series(scrape(gate.http_url), "mailgate_mailbox_poll_errors_total")
        if s["mailbox_id"] == mailbox_id
    ]
    assert labels["kind"] and "@" not in str(labels)


# -- read from the database at scrape time; split roles -------------------------------


@pytest.fixture
def split(database_url, tmp_path_factory):
    """A fresh database with a receiving front (smtp + http) and, when asked, a back."""
    engine = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    with fresh_database(engine, tmp_path_factory.mktemp("splitdb")) as url:
        front = MailgateServer(url, tmp_path_factory.mktemp("front")).start({"smtp", "http"})
        started: list[MailgateServer] = [front]

        def back(**overrides) -> MailgateServer:
            server = MailgateServer(url, tmp_path_factory.mktemp("back"), **overrides)
            started.append(server.start({"worker", "sync"}))
            return server

        try:
            yield front, back
        finally:
            for server in reversed(started):
                server.stop()


def test_queue_depth_age_and_consumer_lag_show_a_backlog_until_a_worker_drains_it(split):
    front, start_back = split
    org = front.org(f"Split {uuid.uuid4().hex[:6]}")
    user = front.user(org, f"rep@{uuid.uuid4().hex[:6]}.example.jp")
    api = front.api(user)
    lead = new_lead(api, f"lead-{uuid.uuid4().hex[:6]}@client.example")  # an event to consume
    api_send(api, lead)  # due at once, and no relay runs yet
    listed = api.post("/api/v1/lists", json={"name": "ops"}).json()["id"]
    add_member(front, org, listed, f"member-{uuid.uuid4().hex[:6]}@client.example")
    campaign = api.post(
        "/api/v1/campaigns",
        json={"name": "ops", "list_ids": [listed], "subject": "ご案内", "html": "<p>本文</p>"},
    )
    assert campaign.status_code == 201, campaign.text
    sent = api.post(f"/api/v1/campaigns/{campaign.json()['id']}/send")
    assert sent.status_code == 202, sent.text  # its recipient is due; no campaigns runner yet
    smtp_send(
        front.smtp_port,
        user["email"],
        user["dropbox_address"],
        dropbox_mail(user["email"], "x@client.example"),
    )
    text = scrape(front.http_url)
    assert value(text, "mailgate_queue_depth", runner="ingest") == 1
    assert value(text, "mailgate_queue_oldest_seconds", runner="ingest") >= 0
    assert value(text, "mailgate_queue_depth", runner="relay") == 1
    assert value(text, "mailgate_queue_depth", runner="campaigns") == 1
    assert value(text, "mailgate_queue_depth", runner="bounces") == 0
    assert value(text, "mailgate_consumer_lag_events", consumer="suppression") >= 1
    assert {s["runner"] for s in series(text, "mailgate_queue_depth")} >= {
        "ingest",
        "relay",
        "bounces",
        "verdicts",
        "campaigns",
        "webhook_delivery",
    }

    nowhere = f"smtp://127.0.0.1:{smtp_sink.free_port()}"  # the send is tried, and deferred
    back = start_back(ops_listen="127.0.0.1:0", relay_url=nowhere)

    def drained() -> bool:
        now = scrape(front.http_url)
        return (
            value(now, "mailgate_queue_depth", runner="ingest") == 0
            and value(now, "mailgate_queue_depth", runner="campaigns") == 0  # composed
            and value(now, "mailgate_queue_depth", runner="relay") == 0  # tried (deferred)
            and value(now, "mailgate_consumer_lag_events") == 0
        )

    wait_until(drained, timeout=30)
    # A process without http answers /metrics and /readyz on MAILGATE_OPS_LISTEN (that it
    # exports no database gauge is proved with real processes in test_ops_deploy.py: here
    # both servers share this test process's registry).
    ops = f"http://127.0.0.1:{back.running.ops_port}"
    assert value(scrape(ops), "mailgate_filed_messages_total", outcome="filed") >= 1
    ready = httpx.get(f"{ops}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["runners"]) >= {"ingest", "relay", "suppression", "webhook_delivery"}


# -- /healthz and /readyz ------------------------------------------------------------


def test_readyz_names_every_runner_and_says_503_once_one_has_stopped(
    database_url, tmp_path_factory
):
    server = MailgateServer(database_url, tmp_path_factory.mktemp("ready")).start(
        {"http", "worker"}
    )
    try:
        r = httpx.get(f"{server.http_url}/readyz", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready" and body["database"] == "up"
        assert set(body["runners"]) == {
            "tracking",
            "signals",
            "ingest",
            "relay",
            "bounces",
            "verdicts",
            "campaigns",
        }
        assert {r["state"] for r in body["runners"].values()} == {"running"}

        server.call(server.running.services.runner("bounces").stop(1))
        r = httpx.get(f"{server.http_url}/readyz", timeout=10)
        assert r.status_code == 503
        assert r.json()["status"] == "not_ready"
        assert r.json()["runners"]["bounces"] == {"state": "stopped"}
        # Liveness does not follow: the process answers, restarting it would not help.
        assert httpx.get(f"{server.http_url}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_runner_states_and_readiness_rules():
    from gateway.http.app import readiness, runner_state

    class Fake:
        name = "relay"

        def __init__(self, running: bool, failing_for: float) -> None:
            self.running, self.failing_for = running, failing_for
            self.healthy = failing_for == 0

    assert runner_state(Fake(True, 0), 30) == {"state": "running"}
    assert runner_state(Fake(True, 5), 30) == {"state": "failing", "failing_for": 5.0}
    assert runner_state(Fake(True, 31), 30) == {"state": "stuck", "failing_for": 31.0}
    assert runner_state(Fake(False, 0), 30) == {"state": "stopped"}
    assert readiness(True, {"a": {"state": "running"}, "b": {"state": "failing"}})
    assert not readiness(True, {"a": {"state": "stuck"}})
    assert not readiness(True, {"a": {"state": "stopped"}})
    assert not readiness(False, {"a": {"state": "running"}})


def test_readyz_says_503_when_the_database_is_gone_and_healthz_stays_200(tmp_path_factory):
    """The node's PostgreSQL database disappears under it (dropped, connections cut): not
    ready, with the database down and its runners stuck once they have failed longer than
    MAILGATE_READY_FAILING_AFTER; still alive."""
    from sqlalchemy.engine import make_url

    from tests.support.databases import PG_ENV, _pg_admin

    with fresh_database("postgresql", tmp_path_factory.mktemp("gone")) as url:
        server = MailgateServer(
            url, tmp_path_factory.mktemp("gone-data"), ready_failing_after=0.5
        ).start({"http", "worker"})
        try:
            assert httpx.get(f"{server.http_url}/readyz", timeout=10).status_code == 200
            name = make_url(url).database
            _pg_admin(os.environ[PG_ENV], f'DROP DATABASE "{name}" WITH (FORCE)')

            def stuck() -> dict | None:
                r = httpx.get(f"{server.http_url}/readyz", timeout=10)
                body = r.json()
                states = {v["state"] for v in body["runners"].values()}
                return r.status_code == 503 and "stuck" in states and body

            body = wait_until(stuck, timeout=30, interval=0.2)
            assert body["status"] == "not_ready" and body["database"] == "down"
            assert body["runners"]["ingest"]["state"] == "stuck"
            assert body["runners"]["ingest"]["failing_for"] >= 0.5
            assert httpx.get(f"{server.http_url}/healthz", timeout=10).status_code == 200
        finally:
            server.stop()
