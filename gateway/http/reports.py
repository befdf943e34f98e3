"""``GET /api/v1/reports/emails`` and ``GET /api/v1/reports/no-response``.

Both cover the whole org for every user: they count and list sends, which are
mail sent from the CRM and so public (seed 004), and count incoming mail without
showing any of it (see :mod:`gateway.receive.mailboxes.sharing`).
"""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.auth import int_param
from gateway.http.errors import JSON, ApiError
from gateway.http.resource import Resource
from storage import orgs
from tracking.reports import ReportError, email_report, no_response_report, parse_period


class ReportsApi(Resource):
    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/reports/emails", self.emails_report, methods=["GET"]),
            Route("/api/v1/reports/no-response", self.no_response, methods=["GET"]),
        ]

    async def _period(self, request: Request, org_id: int):
        async with self.db.connect() as conn:
            org = await orgs.get_org(conn, org_id)
        tz = (org or {}).get("timezone") or "UTC"
        try:
            return parse_period(
                request.query_params.get("from"), request.query_params.get("to"), tz
            )
        except ReportError as exc:
            raise ApiError(400, "bad_parameter", str(exc)) from exc

    async def emails_report(self, request: Request) -> Response:
        user = await self.user(request)
        period = await self._period(request, user["org_id"])
        group = request.query_params.get("group") or "day"
        by = request.query_params.get("by") or None
        try:
            body = await self.db.run_read(email_report, user["org_id"], period, group, by)
        except ReportError as exc:
            raise ApiError(400, "bad_parameter", str(exc)) from exc
        return JSON(body)

    async def no_response(self, request: Request) -> Response:
        """Records mailed from the CRM that did not respond: the whole org's, for everyone,
        but for sends to an excluded domain, which count for their sender alone.

        Sends are mail sent from the CRM, public whatever their sender's sharing mode
        (seed 004, 公開メール), so who was mailed is not hidden from colleagues; a send
        whose To or a CC is in an excluded domain is its sender's own, as in the event log.
        """
        user = await self.user(request)
        period = await self._period(request, user["org_id"])
        limit = int_param(request, "limit", 1000, lo=1, hi=10000)
        body = await self.db.run_read(
            partial(no_response_report, viewer_id=user["id"]), user["org_id"], period, limit
        )
        return JSON(body)
