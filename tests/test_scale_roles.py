"""Every role in several processes on one PostgreSQL (issue #14), with real processes.

Each test runs ``mailgate serve --only …`` subprocesses as an operator runs
them on separate nodes, over one fresh PostgreSQL database, and checks what a
user or an operator would see: which listeners and runners each process
starts, mail delivered once at a real smtp-sink, the daily quota exact across
two API processes, dropbox mail received by two SMTP nodes filed once each,
mail an SMTP node accepted before a ``kill -9`` filed after it, and three
processes starting at once on an empty database.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy import text

from gateway.serve import ROLES, runners_for
from tests.support import smtp_sink
from tests.support.databases import fresh_database
from tests.support.processes import ServeProcess, stop_all
from tests.support.server import MailgateServer, wait_until
from tests.test_cli import LAUNCH, ROOT
from tests.test_relay_handover import accepted, in_state, queue_sends
from tests.test_sending_relay import new_lead

#: What every process here had from the start: loopback peers allowed, a quick clean stop.
NODE = {"allow_private_targets": "true", "stop_deadline": "3"}


@pytest.fixture
def pg_url(tmp_path):
    with fresh_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
def gate(pg_url, tmp_path):
    """HTTP only, in this process: sets up orgs and users, reads what the others did."""
    server = MailgateServer(pg_url, tmp_path / "gate").start(roles={"http"})
    yield server
    server.stop()


def scalar(gate: MailgateServer, sql: str, **params):
    async def go():
        async with gate.db.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    return gate.call(go())


def accepts(port: int | None) -> bool:
    if port is None:
        return False
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- --only ------------------------------------------------------------------------------


def test_only_starts_exactly_the_listeners_and_runners_of_the_roles_named(gate, pg_url, tmp_path):
    # Every role at least once, alone and combined; spaces and repeats are allowed.
    combos = ["smtp", "http", "imap,worker", " sync , http,sync"]
    procs = [
        ServeProcess(pg_url, tmp_path / f"p{i}", only, **NODE) for i, only in enumerate(combos)
    ]
    try:
        for only, proc in zip(combos, procs, strict=True):
            proc.wait_serving()
            roles = {r.strip() for r in only.split(",")}
            assert set(proc.roles) == roles, proc.output
            assert proc.runners == runners_for(roles), proc.output
            assert accepts(proc.smtp_port) == ("smtp" in roles), proc.output
            assert accepts(proc.http_port) == ("http" in roles), proc.output
        http_only = procs[1]
        assert httpx.get(http_only.http_url + "/healthz", timeout=10).status_code == 200
    finally:
        stop_all(procs)
    assert all(p.proc.returncode == 0 for p in procs), [p.output for p in procs]


def test_an_unknown_or_empty_only_is_a_clear_error_and_starts_nothing(tmp_path):
    cases = {
        "smtp,mail": "unknown role(s) mail; known: " + ", ".join(ROLES),
        "SMTP": "unknown role(s) SMTP",
        ",": "--only names no role",
        "": "--only names no role",
    }
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "MAILGATE_DATA_DIR": str(tmp_path),
        "MAILGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'mailgate.db'}",
    }
    runs = {
        only: subprocess.Popen(
            [*LAUNCH, "serve", "--only", only],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for only in cases
    }
    for only, words in cases.items():
        _, stderr = runs[only].communicate(timeout=60)
        assert runs[only].returncode != 0, only
        assert words in stderr, stderr
        assert "Traceback" not in stderr
    assert not (tmp_path / "mailgate.db").exists()  # refused before touching any database


# -- concurrent start-up --------------------------------------------------------------------


def test_three_processes_starting_at_once_on_an_empty_database_all_come_up_migrated_once(
    pg_url, tmp_path
):
    procs = [ServeProcess(pg_url, tmp_path / f"n{i}", "http,worker", **NODE) for i in range(3)]
    try:
        for p in procs:
            p.wait_serving()
        for p in procs:
            assert httpx.get(p.http_url + "/healthz", timeout=10).status_code == 200
    finally:
        stop_all(procs)
    from alembic.script import ScriptDirectory

    from storage.migrate import MIGRATIONS

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    gate = MailgateServer(pg_url, tmp_path / "gate").start(roles={"http"})
    try:
        assert scalar(gate, "SELECT count(*) FROM alembic_version") == 1
        assert scalar(gate, "SELECT version_num FROM alembic_version") == head
    finally:
        gate.stop()


# -- workers: each send delivered once ------------------------------------------------------


@pytest.mark.skipif(not smtp_sink.available(), reason="Postfix smtp-sink not installed")
def test_two_worker_processes_deliver_each_queued_send_exactly_once(gate, pg_url, tmp_path):
    ids = queue_sends(gate, "two-workers", 100)
    port = smtp_sink.free_port()
    relay = smtp_sink.SmtpSink(port).start()
    settings = {
        "relay_url": f"smtp://127.0.0.1:{port}",
        "relay_poll_interval": "0.1",
        "relay_pool_size": "1",  # batches of 25: both workers get a share
    }
    procs = [
        ServeProcess(pg_url, tmp_path / f"w{i}", "worker", **NODE, **settings) for i in range(2)
    ]
    try:
        for p in procs:
            p.wait_serving()
        wait_until(lambda: in_state(gate, ids, "sent") == set(ids), timeout=60)
        time.sleep(0.5)  # a second copy, if any, would reach the relay now
        copies = accepted(relay)
        assert sorted(copies) == sorted(ids)  # every send once, none twice
    finally:
        stop_all(procs)
        relay.stop()


# -- http: the quota is exact across processes ------------------------------------------------


def test_two_http_processes_sending_at_once_accept_exactly_the_quota_left(gate, pg_url, tmp_path):
    org = gate.org("quota-two-nodes", plan="free")  # 50 individual sends a day, one user
    user = gate.user(org, "rep@example.org", name="Rep")
    api = gate.api(user)
    leads = [new_lead(api, f"c{i}@client.example.jp") for i in range(80)]
    first = api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": i} for i in leads[:45]],
            "subject": "a",
            "text": "x",
        },
    )
    assert first.status_code == 202, first.text
    procs = [ServeProcess(pg_url, tmp_path / f"h{i}", "http", **NODE) for i in range(2)]
    try:
        for p in procs:
            p.wait_serving()
        headers = {"Authorization": f"Bearer {user['api_token']}"}
        clients = [httpx.Client(base_url=p.http_url, headers=headers, timeout=30) for p in procs]

        def send(i: int) -> httpx.Response:
            body = {"to": [{"module": "leads", "id": leads[45 + i]}], "subject": "b", "text": "y"}
            return clients[i % 2].post("/api/v1/emails", json=body)

        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(send, range(35)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [202] * 5 + [429] * 30, [r.text for r in answers if r.status_code >= 500]
        refused = [r.json()["error"] for r in answers if r.status_code == 429]
        assert {e["code"] for e in refused} == {"quota_exceeded"}
        assert all(e.get("resets_at") for e in refused)
        for c in clients:  # every node reads the same count
            quota = c.get("/api/v1/quota").json()["individual"]
            assert (quota["used"], quota["limit"], quota["remaining"]) == (50, 50, 0)
        assert scalar(gate, "SELECT count(*) FROM sends WHERE org_id = :o", o=org["id"]) == 50
    finally:
        stop_all(procs)


# -- smtp: received on any node, filed once ---------------------------------------------------


def dropbox_mail(user: dict, tag: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = user["email"]
    msg["To"] = "customer@client.example.jp"
    msg["Subject"] = f"ご提案 {tag}"
    msg["Message-ID"] = f"<{tag}@rep.example.org>"
    msg.set_content("お世話になっております。")
    return msg


def send_dropbox(port: int, user: dict, tags: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for tag in tags:
            s.send_message(dropbox_mail(user, tag), to_addrs=[user["dropbox_address"]])


def filed_counts(gate: MailgateServer, org_id: int) -> dict[str, int]:
    async def go():
        async with gate.db.connect() as conn:
            q = text("SELECT message_id, count(*) FROM messages WHERE org_id = :o GROUP BY 1")
            return dict((await conn.execute(q, {"o": org_id})).all())

    return gate.call(go())


def dropbox_user(gate: MailgateServer, name: str) -> tuple[dict, dict]:
    org = gate.org(name, domains=["rep.example.org"])
    user = gate.user(org, "rep@rep.example.org", name="Rep")
    user["email"] = "rep@rep.example.org"
    return org, user


def test_two_smtp_processes_and_one_worker_file_each_message_once(gate, pg_url, tmp_path):
    org, user = dropbox_user(gate, "two-smtp")
    procs = [ServeProcess(pg_url, tmp_path / f"s{i}", "smtp", **NODE) for i in range(2)]
    procs.append(ServeProcess(pg_url, tmp_path / "w", "worker", **NODE))
    try:
        for p in procs:
            p.wait_serving()
        tags = {i: [f"n{i}-{uuid.uuid4().hex[:6]}-{k}" for k in range(30)] for i in range(2)}
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda i: send_dropbox(procs[i].smtp_port, user, tags[i]), range(2)))
        wanted = {f"{t}@rep.example.org": 1 for ts in tags.values() for t in ts}
        wait_until(lambda: len(filed_counts(gate, org["id"])) == 60, timeout=60)
        time.sleep(0.5)
        assert filed_counts(gate, org["id"]) == wanted
    finally:
        stop_all(procs)


def test_mail_an_smtp_node_accepted_before_kill_9_is_filed_after_it_comes_back(
    gate, pg_url, tmp_path
):
    org, user = dropbox_user(gate, "smtp-killed")
    node = ServeProcess(pg_url, tmp_path / "s", "smtp", **NODE).wait_serving()
    later: list[ServeProcess] = []
    try:
        tags = [f"k-{uuid.uuid4().hex[:6]}-{k}" for k in range(40)]
        send_dropbox(node.smtp_port, user, tags)  # each got 250 (send_message raises if not)
        node.kill()
        assert node.proc.returncode == -9
        assert filed_counts(gate, org["id"]) == {}  # no worker anywhere yet
        later = [
            ServeProcess(pg_url, tmp_path / "s", "smtp", **NODE),
            ServeProcess(pg_url, tmp_path / "w", "worker", **NODE),
        ]
        for p in later:
            p.wait_serving()
        wanted = {f"{t}@rep.example.org": 1 for t in tags}
        wait_until(lambda: filed_counts(gate, org["id"]) == wanted, timeout=60)
        assert scalar(gate, "SELECT count(*) FROM inbound") == 0  # the spool drained
    finally:
        node.kill()
        stop_all(later)
