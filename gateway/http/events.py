"""``GET /api/v1/events``: the org's event log, read from an offset (``after``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.auth import int_param
from gateway.http.errors import JSON
from gateway.http.resource import Resource
from storage import events


class EventsApi(Resource):
    def routes(self) -> list[Route]:
        return [Route("/api/v1/events", self.list_events, methods=["GET"])]

    async def list_events(self, request: Request) -> Response:
        user = await self.user(request)
        after = int_param(request, "after", 0)
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        async with self.db.connect() as conn:
            items = await events.read_after(conn, after=after, limit=limit, org_id=user["org_id"])
        return JSON({"items": items, "next": str(items[-1]["id"]) if len(items) == limit else None})
