"""The HTTP application: API, tracking, health and metrics, declared in one route table.

:func:`create_app` is the only place that reads the process's ``Services``:
it builds each resource with what it needs and mounts its routes.
"""

from __future__ import annotations

from functools import partial

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.clock import Clock
from gateway.http.errors import JSON, ApiError, on_api_error, on_http_error, on_unexpected
from gateway.http.events import EventsApi
from gateway.http.mailboxes import MailboxesApi
from gateway.http.org_settings import OrgSettingsApi
from gateway.http.records import RecordsApi
from gateway.http.reports import ReportsApi
from gateway.http.sending import SendingApi
from gateway.http.templates import TemplatesApi, configure_limits
from gateway.metrics import REGISTRY
from gateway.receive.mailboxes import MailboxService
from gateway.sending import metrics as sending_metrics
from gateway.services import Services
from storage.db import Database
from tracking import endpoints as tracking


class Operations:
    """``/healthz`` and ``/metrics``: what a load balancer and Prometheus ask."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db, self.clock = db, clock

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
    resources = (
        Operations(db, clock),
        EventsApi(db),
        # Before the generic ``/{module}`` routes of records.
        TemplatesApi(db),
        SendingApi(
            db, clock=clock, signer=services.signer, wake_relay=partial(services.wake, "relay")
        ),
        MailboxesApi(db, mailboxes),
        OrgSettingsApi(db),
        ReportsApi(db),
        RecordsApi(db),
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
            Exception: on_unexpected,
        },
    )
    return app
