"""The HTTP application: API, tracking, health and metrics, declared in one route table.

:func:`create_app` is the only place that reads the process's ``Services``:
it builds each resource with what it needs and mounts its routes.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import uuid
from collections.abc import Callable
from enum import StrEnum
from functools import partial
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import logs, metrics
from gateway.clock import Clock
from gateway.http.campaigns import CampaignsApi
from gateway.http.emails import EmailsApi
from gateway.http.errors import (
    JSON,
    STORAGE_HANDLERS,
    ApiError,
    on_api_error,
    on_http_error,
    on_unexpected,
)
from gateway.http.events import EventsApi
from gateway.http.inbox import InboxApi
from gateway.http.lists import ListsApi
from gateway.http.mailboxes import MailboxesApi
from gateway.http.org_settings import OrgSettingsApi
from gateway.http.record_campaigns import RecordCampaignsApi
from gateway.http.records import RecordsApi
from gateway.http.reports import ReportsApi
from gateway.http.sending import SendingApi
from gateway.http.stream import StreamApi
from gateway.http.syncs import SyncsApi
from gateway.http.templates import TemplatesApi, configure_limits
from gateway.http.tokens import TokensApi
from gateway.http.users import UsersApi
from gateway.http.webhooks import WebhooksApi
from gateway.metrics import REGISTRY
from gateway.receive.mailboxes import MailboxService
from gateway.sending import metrics as sending_metrics
from gateway.services import Services
from gateway.web.analytics import AnalyticsPages
from gateway.web.campaigns import CampaignPages
from gateway.web.dropbox import DropboxPages
from gateway.web.mail import MailPages
from gateway.web.pages import DashboardPages
from gateway.web.quotas import QuotaPages
from storage.db import Database
from tracking import endpoints as tracking

log = logging.getLogger("mailgate.http")


def may_scrape(client_host: str | None, authorization: str, token: str) -> bool:
    """Whether a request may read ``/metrics``, whose series name every org.

    ``/metrics`` shares the listener with the public tracking links, so it is
    not public: with ``MAILGATE_METRICS_TOKEN`` set it wants that bearer token
    (from anywhere); without, only a client on loopback (a local Prometheus or
    agent; behind a same-host proxy, the client uvicorn sees is the one the
    proxy names in ``X-Forwarded-For``).
    """
    if token:
        scheme, _, given = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        )
    try:
        return client_host is not None and ipaddress.ip_address(client_host).is_loopback
    except ValueError:
        return False


class RunnerState(StrEnum):
    """What ``/readyz`` says of one runner."""

    RUNNING = "running"  # its loop is alive and its last round succeeded
    FAILING = "failing"  # alive, but its rounds have failed for less than the grace period
    STUCK = "stuck"  # its rounds have failed for longer than the grace period
    STOPPED = "stopped"  # its task ended (crashed or stopped): nothing is doing its work


def runner_state(runner: Any, failing_after: float) -> dict[str, Any]:
    """One runner's state for ``/readyz``: a pure reading of ``running`` and ``failing_for``."""
    if not getattr(runner, "running", False):
        return {"state": RunnerState.STOPPED.value}
    failing_for = float(getattr(runner, "failing_for", 0.0))
    if getattr(runner, "healthy", True) or failing_for <= 0:
        return {"state": RunnerState.RUNNING.value}
    state = RunnerState.STUCK if failing_for > failing_after else RunnerState.FAILING
    return {"state": state.value, "failing_for": round(failing_for, 1)}


def readiness(database_up: bool, runners: dict[str, dict[str, Any]]) -> bool:
    """Ready: storage answers and no runner is stopped or stuck failing."""
    bad = (RunnerState.STOPPED.value, RunnerState.STUCK.value)
    return database_up and not any(r["state"] in bad for r in runners.values())


class Operations:
    """``/healthz``, ``/readyz`` and ``/metrics``: what a load balancer, an orchestrator and
    Prometheus ask.

    - ``/healthz`` is liveness: 200 while the process answers, whatever the
      database does (restarting every node because PostgreSQL is away would
      not bring it back, and would drop the tracking hits they hold).
    - ``/readyz`` is readiness: 200 when the database answers and every
      runner of this process is alive and not stuck failing for more than
      ``MAILGATE_READY_FAILING_AFTER`` seconds; 503 otherwise, with a JSON
      body naming each runner's state.
    - ``/metrics`` refreshes the gauges read from the database only when
      ``db_gauges`` (processes with the ``http`` role), so two exporters of one
      figure are two identical series, never two halves of a sum.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        metrics_token: str = "",
        *,
        runners: Callable[[], list[Any]] = list,
        failing_after: float = 30.0,
        db_gauges: bool = True,
    ) -> None:
        self.db, self.clock, self.metrics_token = db, clock, metrics_token
        self.runners, self.failing_after, self.db_gauges = runners, failing_after, db_gauges

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics),
        ]

    async def healthz(self, request: Request) -> Response:
        return JSON({"status": "ok"})

    async def database_up(self) -> bool:
        try:
            async with asyncio.timeout(READY_DB_TIMEOUT):
                async with self.db.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False
        return True

    async def readyz(self, request: Request) -> Response:
        up = await self.database_up()
        runners = {r.name: runner_state(r, self.failing_after) for r in self.runners()}
        ready = readiness(up, runners)
        body = {
            "status": "ready" if ready else "not_ready",
            "database": "up" if up else "down",
            "runners": runners,
        }
        return JSON(body, status_code=200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        client = request.client.host if request.client else None
        if not may_scrape(client, request.headers.get("authorization", ""), self.metrics_token):
            if self.metrics_token:
                raise ApiError(401, "unauthorized", "send Authorization: Bearer <metrics token>")
            raise ApiError(
                403, "forbidden", "/metrics answers loopback only; set MAILGATE_METRICS_TOKEN"
            )
        if self.db_gauges:
            now = self.clock.now()
            for refresh in (sending_metrics.refresh, metrics.refresh_db_gauges):
                try:
                    await refresh(self.db, now)
                except Exception as exc:  # noqa: BLE001 - /metrics still answers the rest
                    log.warning(
                        "metrics: %s failed: %s: %s", refresh.__module__, type(exc).__name__, exc
                    )
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


#: Seconds /readyz waits for the database before it says "down".
READY_DB_TIMEOUT = 2.0
#: A request id we echo: what a proxy or client may reasonably send; anything else is replaced.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIds:
    """ASGI middleware: every HTTP request gets an id, echoed as ``X-Request-Id`` and put on
    every log line written while it is handled (:func:`gateway.logs.bind`).

    A well-formed ``X-Request-Id`` from the client or proxy is kept (so one id
    follows a request through the load balancer's log and ours); otherwise a
    new one is made.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        token = logs.set_context(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.reset_context(token)


def create_ops_app(services: Services) -> Starlette:
    """``/healthz``, ``/readyz`` and ``/metrics`` alone (``MAILGATE_OPS_LISTEN``), for a process
    without the ``http`` role: its counters and its runners' readiness, no DB gauges."""
    ops = Operations(
        services.db,
        services.follow_clock,
        services.settings.metrics_token,
        runners=lambda: services.started,
        failing_after=services.settings.ready_failing_after,
        db_gauges=False,
    )
    app = Starlette(
        routes=ops.routes(),
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error},
    )
    app.add_middleware(RequestIds)
    return app


def create_app(services: Services) -> Starlette:
    db = services.db
    configure_limits(services.settings)
    # Tests swap the services' clock while the server runs; follow it.
    clock = services.follow_clock
    mailboxes = MailboxService(
        db, services.spool, services.settings, ingest=services.runner("ingest"), clock=clock
    )
    secure = services.settings.public_url.lower().startswith("https://")
    # What every dashboard page needs to know of the installation.
    web = {"secure_cookies": secure, "operators": services.settings.operator_emails}
    resources = (
        Operations(
            db,
            clock,
            services.settings.metrics_token,
            runners=lambda: services.started,
            failing_after=services.settings.ready_failing_after,
        ),
        EventsApi(db),
        StreamApi(db, hub=services.runner("signals")),
        TokensApi(db),
        UsersApi(db, clock=clock, mail_domain=services.settings.mail_domain),
        # Before the generic ``/{module}`` routes of records.
        TemplatesApi(db),
        SendingApi(
            db,
            clock=clock,
            signer=services.signer,
            wake_relay=partial(services.wake, "relay"),
            max_message_size=services.settings.max_message_size,
        ),
        MailboxesApi(db, mailboxes),
        OrgSettingsApi(db),
        ReportsApi(db),
        ListsApi(db, clock=clock),
        CampaignsApi(db, clock=clock, wake_runner=partial(services.wake, "campaigns")),
        SyncsApi(db, clock, wake=partial(services.wake, "crm_to_campaigns")),
        WebhooksApi(db, clock=clock, allow_private=services.settings.allow_private_targets),
        EmailsApi(db),  # before RecordsApi's /{module}/{id} routes
        InboxApi(db, clock),  # before RecordsApi's /{module} routes
        RecordCampaignsApi(db, clock),  # before RecordsApi's /{module}/{id} routes
        RecordsApi(db),
        DashboardPages(db, clock, **web),
        DropboxPages(db, clock, settings=services.settings, secure_cookies=secure),
        QuotaPages(db, clock, **web),
        AnalyticsPages(db, clock, **web),
        CampaignPages(db, clock, wake=partial(services.wake, "crm_to_campaigns"), **web),
        MailPages(db, clock, hub=services.runner("signals"), **web),
    )
    app = Starlette(
        # Tracking first: the pixel is the hottest path and routes are matched in order.
        routes=[
            *tracking.routes(services.tracking),
            *(r for res in resources for r in res.routes()),
        ],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            **STORAGE_HANDLERS,  # 503 + Retry-After while storage is away (gateway.outage)
            Exception: on_unexpected,
        },
    )
    # Outermost: the id is bound before any route or error handler logs.
    app.add_middleware(RequestIds)
    return app
