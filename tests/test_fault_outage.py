"""PostgreSQL stopped for 30 s under a running ``mailgate serve``, then started again.

A private cluster (:mod:`tests.support.pg_cluster`) that the test stops with
``pg_ctl stop -m fast``, as an operator's failover or a crash would: every
connection cut, new ones refused.  Meanwhile clients keep coming, and each
gets the answer that makes it try again: SMTP ``451`` (never ``250``), the
API ``503`` with ``Retry-After`` (never ``500``); the tracking pixel and a
click still answer (the GIF, the ``302``) and their hits are recorded once
storage is back.  The process logs the outage once, not once per request,
and works again without a restart.

Also here: :func:`gateway.outage.is_storage_outage` (which errors are an
outage) and :class:`gateway.outage.OutageLog` (when to log), which are pure.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage

import httpx
import pytest
import sqlalchemy.exc
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.http.errors import STORAGE_HANDLERS, on_unexpected
from gateway.outage import STORAGE, OutageLog, Outcome, is_storage_outage
from storage.db import Database, StorageUnavailable
from storage.schema_tracking import tracking_hits, tracking_inbox
from tests.support import pg_cluster
from tests.support.processes import ServeProcess
from tests.support.sends import make_send
from tests.support.server import MailgateServer, wait_until
from tests.support.web import login, with_password
from tracking.pixel import PIXEL_GIF

OUTAGE_SECONDS = 30.0
#: The dashboard's 503 page, in either language (the org's locale decides).
_UNAVAILABLE = ("The database cannot be reached.", "データベースに接続できません。")


# -- the pure parts -----------------------------------------------------------------------


def test_outage_log_says_started_once_and_recovered_once_per_outage():
    state = OutageLog()
    assert state.succeeded(0.0) is Outcome.QUIET  # up and fine: nothing to say
    assert state.failed(1.0) is Outcome.STARTED
    assert [state.failed(1.0 + i) for i in range(1000)] == [Outcome.QUIET] * 1000
    assert state.down and state.refused == 1001
    assert state.succeeded(40.0) is Outcome.RECOVERED
    assert state.reset_count() == 1001
    assert state.succeeded(41.0) is Outcome.QUIET
    assert state.failed(50.0) is Outcome.STARTED  # a second outage is logged again


def _sa(orig: BaseException, cls=sqlalchemy.exc.OperationalError) -> BaseException:
    return cls("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    "exc",
    [
        StorageUnavailable("the spool writer stopped"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 5432)"),
        OSError("Multiple exceptions: [Errno 111] Connect call failed"),
        _sa(Exception("server closed the connection unexpectedly")),
        _sa(Exception("connection is closed"), sqlalchemy.exc.InterfaceError),
        sqlalchemy.exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached"),
        RuntimeError("wrapped"),  # its __cause__ is the outage (set below)
    ],
    ids=["unavailable", "refused", "multi-refused", "operational", "interface", "pool", "cause"],
)
def test_connection_failures_are_outages(exc):
    if isinstance(exc, RuntimeError):
        exc.__cause__ = ConnectionResetError(errno.ECONNRESET, "reset")
    assert is_storage_outage(exc)


def test_asyncpg_shutdown_errors_are_outages():
    asyncpg = pytest.importorskip("asyncpg")
    assert is_storage_outage(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert is_storage_outage(asyncpg.exceptions.CannotConnectNowError("shutting down"))
    dbapi = _sa(Exception("x"), sqlalchemy.exc.DBAPIError)
    dbapi.__cause__ = asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-query")
    assert is_storage_outage(dbapi)


@pytest.mark.parametrize(
    "exc",
    [
        _sa(Exception("duplicate key value"), sqlalchemy.exc.IntegrityError),
        _sa(Exception("syntax error"), sqlalchemy.exc.ProgrammingError),
        FileNotFoundError(errno.ENOENT, "no such template", "x.html"),
        KeyError("links"),
        ValueError("bad"),
    ],
    ids=["integrity", "programming", "file", "key", "value"],
)
def test_bugs_and_refusals_are_not_outages(exc):
    assert not is_storage_outage(exc)


def _app_raising(exc: BaseException) -> Starlette:
    """An app with the API's exception handlers whose one route raises ``exc``."""

    async def fail(request):
        raise exc

    handlers = {**STORAGE_HANDLERS, Exception: on_unexpected}
    return Starlette(routes=[Route("/", fail)], exception_handlers=handlers)


async def _get(app: Starlette, times: int = 1) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [await client.get("/") for _ in range(times)]


def test_api_answers_an_outage_503_with_retry_after_and_logs_it_once(caplog, monkeypatch):
    monkeypatch.setattr(STORAGE, "state", OutageLog())
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    with caplog.at_level(logging.WARNING):
        answers = asyncio.run(_get(_app_raising(_sa(refused)), times=200))
        STORAGE.succeeded()  # the next request that reaches storage
        STORAGE.succeeded()
    assert {(r.status_code, r.headers.get("retry-after")) for r in answers} == {(503, "5")}
    assert answers[0].json()["error"]["code"] == "storage_unavailable"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("storage unavailable (first seen by http)")
    assert "recovered" in messages[1] and "200 requests were refused" in messages[1]


def test_api_still_answers_500_for_a_database_error_that_is_no_outage(monkeypatch):
    monkeypatch.setattr(STORAGE, "state", OutageLog())
    clash = _sa(Exception("duplicate key value"), sqlalchemy.exc.IntegrityError)
    [answer] = asyncio.run(_get(_app_raising(clash)))
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "internal"
    assert not STORAGE.down


# -- the fault -----------------------------------------------------------------------------


@pytest.fixture
def cluster():
    reason = pg_cluster.missing()
    if reason:
        pytest.skip(reason)
    cluster = pg_cluster.PgCluster().init().start()
    yield cluster
    cluster.destroy()


def _message(sender: str, subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "customer@client.example.jp", subject
    msg.set_content("お世話になっております。")
    return msg.as_bytes()


def smtp_reply(port: int, sender: str, dropbox: str, subject: str) -> int:
    """The reply code a client got for one message (250 stored; 4xx/5xx not)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(sender, [dropbox], _message(sender, subject))
        return 250
    except smtplib.SMTPRecipientsRefused as exc:
        return next(iter(exc.recipients.values()))[0]
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code


def _count_hits(url: str, send_id: int) -> int:
    async def go() -> int:
        db = Database(url)
        try:
            async with db.connect() as conn:
                judged = await conn.scalar(
                    select(func.count()).where(tracking_hits.c.send_id == send_id)
                )
                waiting = await conn.scalar(
                    select(func.count()).where(tracking_inbox.c.send_id == send_id)
                )
                return int(judged) + int(waiting)
        finally:
            await db.dispose()

    return asyncio.run(go())


def test_postgresql_down_for_30_s_answers_451_503_and_tracking_logs_once_and_recovers(
    cluster, tmp_path
):
    # Set-up through an in-process mailgate (same secret key), stopped before the fault.
    gate = MailgateServer(cluster.url, tmp_path / "setup").start(roles={"http"})
    try:
        org = gate.org("outage", plan="standard")
        user = gate.user(org, "rep@example.org", name="Rep")
        send = make_send(gate, org, user)
        unseen = make_send(gate, org, user)  # nobody clicks it before the outage
        with_password(gate, user)
    finally:
        gate.stop()
    mailgate = ServeProcess(
        cluster.url,
        tmp_path / "data",
        "smtp,http,worker",
        fixed_ports=True,
        relay_url=f"smtp://127.0.0.1:{pg_cluster._free_port()}",  # nothing is sent here
    ).wait_serving(probe="/healthz")
    pixel = re.search(r"/t/o/([A-Za-z0-9_-]+)", send["html"]).group(1)
    click = re.search(r"/t/c/([A-Za-z0-9_-]+)", send["html"]).group(1)
    unseen_click = re.search(r"/t/c/([A-Za-z0-9_-]+)", unseen["html"]).group(1)
    headers = {"Authorization": f"Bearer {user['api_token']}", "Connection": "close"}
    api = httpx.Client(base_url=mailgate.http_url, headers=headers, timeout=30)
    sender, dropbox = user["email"], user["dropbox_address"]
    dashboard = None
    try:
        lead = api.post(
            "/api/v1/leads", json={"last_name": "山田", "email": "customer@client.example.jp"}
        )
        assert lead.status_code == 201, lead.text
        to_lead = {
            "to": [{"module": "leads", "id": lead.json()["id"]}],
            "subject": "s",
            "text": "x",
        }
        assert smtp_reply(mailgate.smtp_port, sender, dropbox, "before") == 250
        dashboard = login(mailgate, user)  # type: ignore[arg-type] - it needs only http_url
        assert dashboard.get("/").status_code == 200
        # A click before the outage: this process has now seen the send's links.
        first = api.get(f"/t/c/{click}")
        assert first.status_code == 302 and first.headers["location"] in send["links"]

        cluster.stop()
        stopped = time.monotonic()
        smtp_codes: list[int] = []
        api_answers: list[tuple[int, str | None, str]] = []
        pixels: list[tuple[int, bytes]] = []
        clicks: list[tuple[int, str]] = []
        pages: list[tuple[int, str | None, bool]] = []

        def api_call(i: int) -> tuple[int, str | None, str]:
            r = api.post("/api/v1/emails", json=to_lead) if i % 4 == 0 else api.get("/api/v1/leads")
            code = r.json()["error"]["code"] if r.status_code >= 400 else ""
            return r.status_code, r.headers.get("retry-after"), code

        with ThreadPoolExecutor(8) as pool:
            while time.monotonic() - stopped < OUTAGE_SECONDS:
                api_answers.extend(pool.map(api_call, range(24)))
                smtp_codes.append(
                    smtp_reply(mailgate.smtp_port, sender, dropbox, f"during {len(smtp_codes)}")
                )
                r = api.get(f"/t/o/{pixel}")
                pixels.append((r.status_code, r.content))
                r = api.get(f"/t/c/{click}")
                clicks.append((r.status_code, r.headers.get("location", "")))
                r = dashboard.get("/")
                pages.append(
                    (
                        r.status_code,
                        r.headers.get("retry-after"),
                        any(t in r.text for t in _UNAVAILABLE),
                    )
                )
                time.sleep(0.5)

        assert smtp_codes and set(smtp_codes) == {451}, smtp_codes
        assert {a for a in api_answers} == {(503, "5", "storage_unavailable")}, set(api_answers)
        assert set(pixels) == {(200, PIXEL_GIF)}
        assert set(clicks) == {(302, first.headers["location"])}
        assert set(pages) == {(503, "5", True)}  # the dashboard's page, same rule
        # A click whose links this process never looked up cannot be resolved: 503, not 404.
        r = api.get(f"/t/c/{unseen_click}")
        assert (r.status_code, r.headers.get("retry-after")) == (503, "5"), r.text
        # Liveness stays 200 (a restart would not help); readiness takes the node out.
        assert api.get("/healthz").status_code == 200
        assert api.get("/readyz").status_code == 503

        cluster.start()
        wait_until(lambda: api.get("/api/v1/leads").status_code == 200, timeout=20)
        # No restart: mail is stored and filed, sends are accepted, hits are recorded.
        wait_until(
            lambda: smtp_reply(mailgate.smtp_port, sender, dropbox, "after") == 250, timeout=20
        )
        assert api.post("/api/v1/emails", json=to_lead).status_code == 202
        hits = 1 + len(pixels) + len(clicks)
        assert dashboard.get("/").status_code == 200
        wait_until(lambda: api.get("/readyz").status_code == 200, timeout=20)
        wait_until(lambda: _count_hits(cluster.url, send["id"]) == hits, timeout=20, interval=0.5)
        wait_until(
            lambda: len(api.get(f"/api/v1/leads/{lead.json()['id']}/emails").json()["items"]) >= 2,
            timeout=20,
        )

        code, _ = mailgate.terminate()
        log = mailgate.stderr
        assert code == 0, log
        requests = len(api_answers) + len(smtp_codes) + len(pages)
        assert log.count("storage unavailable (first seen") == 1, log
        assert log.count("storage recovered after") == 1, log
        assert "requests were refused meanwhile" in log
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log
        # Each runner says its rounds failed once too; nothing is said per request.
        assert len(log.splitlines()) < 40 < requests, log
    finally:
        api.close()
        if dashboard is not None:
            dashboard.close()
        mailgate.kill()
