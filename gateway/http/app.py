"""The HTTP application: API, tracking, health and metrics, declared in one route table."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from gateway.http import mailboxes, org_settings, records, reports, sending
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
    from gateway.sending import metrics as sending_metrics

    try:
        await sending_metrics.refresh(request.app.state.services)
    except Exception:  # noqa: BLE001, S110 - /metrics still answers with the other series
        pass
    return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def sending_routes() -> list[Route]:
    """Templates, sending, quota, suppressions: before the generic ``/{module}`` routes."""
    t = "/api/v1/templates"
    return [
        Route(t, sending.create_template, methods=["POST"]),
        Route(t, sending.list_templates, methods=["GET"]),
        Route(t + "/{id}", sending.get_template, methods=["GET"]),
        Route(t + "/{id}", sending.update_template, methods=["PUT"]),
        Route(t + "/{id}/preview", sending.preview_template, methods=["POST"]),
        Route("/api/v1/emails", sending.send_emails, methods=["POST"]),
        Route("/api/v1/emails/bulk", sending.send_bulk, methods=["POST"]),
        Route("/api/v1/sends/{id}", sending.get_send, methods=["GET"]),
        Route("/api/v1/quota", sending.get_quota, methods=["GET"]),
        Route("/api/v1/suppressions", sending.list_suppressions, methods=["GET"]),
        Route("/api/v1/suppressions/{email}", sending.delete_suppression, methods=["DELETE"]),
    ]


def routes() -> list[Route]:
    m = "/api/v1/{module}"
    return [
        # Tracking first: the pixel is the hottest path and routes are matched in order.
        Route("/t/o/{token}", tracking.open_pixel, methods=["GET"]),
        Route("/t/c/{token}", tracking.click, methods=["GET"]),
        Route("/u/{token}", tracking.unsubscribe_page, methods=["GET"]),
        Route("/u/{token}", tracking.unsubscribe_post, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/api/v1/events", records.list_events),
        *sending_routes(),
        Route("/api/v1/mailboxes", mailboxes.create_mailbox, methods=["POST"]),
        Route("/api/v1/mailboxes", mailboxes.list_mailboxes, methods=["GET"]),
        Route("/api/v1/mailboxes/{id}", mailboxes.get_mailbox, methods=["GET"]),
        Route("/api/v1/mailboxes/{id}", mailboxes.delete_mailbox, methods=["DELETE"]),
        Route("/api/v1/mailboxes/{id}/backfill", mailboxes.backfill_mailbox, methods=["POST"]),
        Route("/api/v1/emails/{id}/read", mailboxes.mark_read, methods=["POST"]),
        Route("/api/v1/users/{id}/sharing", mailboxes.get_sharing, methods=["GET"]),
        Route("/api/v1/users/{id}/sharing", mailboxes.put_sharing, methods=["PUT"]),
        Route("/api/v1/excluded-domains", mailboxes.get_excluded, methods=["GET"]),
        Route("/api/v1/excluded-domains", mailboxes.put_excluded, methods=["PUT"]),
        Route("/api/v1/org-addresses", org_settings.list_addresses, methods=["GET"]),
        Route("/api/v1/org-addresses", org_settings.create_address, methods=["POST"]),
        Route("/api/v1/org-addresses/{id}", org_settings.delete_address, methods=["DELETE"]),
        Route(
            "/api/v1/tracking-skip-domains",
            org_settings.get_tracking_skip_domains,
            methods=["GET"],
        ),
        Route(
            "/api/v1/tracking-skip-domains",
            org_settings.put_tracking_skip_domains,
            methods=["PUT"],
        ),
        Route("/api/v1/reports/emails", reports.emails_report, methods=["GET"]),
        Route("/api/v1/reports/no-response", reports.no_response, methods=["GET"]),
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
