"""The HTTP application: API, tracking, health and metrics, declared in one route table.

:func:`create_app` is the only place that reads the process's ``Services``:
it builds each resource with what it needs and mounts its routes.
"""

from __future__ import annotations

import hmac
import ipaddress
from functools import partial

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

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


class Operations:
    """``/healthz`` and ``/metrics``: what a load balancer and Prometheus ask."""

    def __init__(self, db: Database, clock: Clock, metrics_token: str = "") -> None:
        self.db, self.clock, self.metrics_token = db, clock, metrics_token

    def routes(self) -> list[Route]:
        return [Route("/healthz", self.healthz), Route("/metrics", self.metrics)]

    async def healthz(self, request: Request) -> Response:
        try:
            async with self.db.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except Exception:  # noqa: BLE001
            return JSON({"status": "unavailable", "database": "down"}, status_code=503)
        return JSON({"status": "ok"})

    async def metrics(self, request: Request) -> Response:
        client = request.client.host if request.client else None
        if not may_scrape(client, request.headers.get("authorization", ""), self.metrics_token):
            if self.metrics_token:
                raise ApiError(401, "unauthorized", "send Authorization: Bearer <metrics token>")
            raise ApiError(
                403, "forbidden", "/metrics answers loopback only; set MAILGATE_METRICS_TOKEN"
            )
        try:
            await sending_metrics.refresh(self.db, self.clock.now())
        except Exception:  # noqa: BLE001, S110 - /metrics still answers with the other series
            pass
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def create_app(services: Services) -> Starlette:
    db = services.db
    configure_limits(services.settings)
    # Tests swap the services' clock while the server runs; follow it.
    clock = services.follow_clock
    mailboxes = MailboxService(
        db, services.spool, services.settings, ingest=services.runner("ingest"), clock=clock
    )
    secure = services.settings.public_url.lower().startswith("https://")
    resources = (
        Operations(db, clock, services.settings.metrics_token),
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
        DashboardPages(db, clock, secure_cookies=secure),
        DropboxPages(db, clock, settings=services.settings, secure_cookies=secure),
        QuotaPages(db, clock, secure_cookies=secure, operators=services.settings.operator_emails),
        AnalyticsPages(db, clock, secure_cookies=secure),
        CampaignPages(
            db, clock, secure_cookies=secure, wake=partial(services.wake, "crm_to_campaigns")
        ),
        MailPages(db, clock, hub=services.runner("signals"), secure_cookies=secure),
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
    return app
