"""The HTTP application: API, tracking, health and metrics, declared in one route table."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.http import records, reports
from gateway.http.errors import JSON, ApiError, on_api_error, on_http_error, on_unexpected
from gateway.metrics import REGISTRY
from gateway.services import Services
from tracking import endpoints as tracking


async def healthz(request: Request) -> Response:
    db = request.app.state.services.db
    try:
        async with db.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except Exception:  # noqa: BLE001
        return JSON({"status": "unavailable", "database": "down"}, status_code=503)
    return JSON({"status": "ok"})


async def metrics(request: Request) -> Response:
    return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def routes() -> list[Route]:
    m = "/api/v1/{module}"
    return [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/api/v1/events", records.list_events),
        Route("/api/v1/reports/emails", reports.emails_report, methods=["GET"]),
        Route("/api/v1/reports/no-response", reports.no_response, methods=["GET"]),
        Route("/t/o/{token}", tracking.open_pixel, methods=["GET"]),
        Route("/t/c/{token}", tracking.click, methods=["GET"]),
        Route("/u/{token}", tracking.unsubscribe_page, methods=["GET"]),
        Route("/u/{token}", tracking.unsubscribe_post, methods=["POST"]),
        Route("/api/v1/leads/{id}/convert", records.convert_lead, methods=["POST"]),
        Route(m, records.create_record, methods=["POST"]),
        Route(m, records.list_records, methods=["GET"]),
        Route(m + "/{id}", records.get_record, methods=["GET"]),
        Route(m + "/{id}", records.patch_record, methods=["PATCH"]),
        Route(m + "/{id}", records.delete_record, methods=["DELETE"]),
        Route(m + "/{id}/emails", records.record_emails, methods=["GET"]),
    ]


def create_app(services: Services) -> Starlette:
    app = Starlette(
        routes=routes(),
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
    app.state.services = services
    return app
