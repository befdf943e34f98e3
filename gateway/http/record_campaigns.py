"""A record's campaign history, and the Campaigns → CRM settings.

- ``GET /api/v1/{module}/{id}/campaigns`` (leads, contacts): the campaigns the
  record was a recipient of, newest status first, as the hosted CRM shows them
  in the record's "Campaigns" related list (seed 001);
- ``GET|PUT /api/v1/campaign-crm-settings``: the CRM field each module's
  campaign status is also written into (seed 001's
  「メンバーのステータスをZoho CRMの項目として更新」); every user reads it,
  admins change it.

Both read what the ``campaigns_to_crm`` consumer (:mod:`sync.campaigns_to_crm`)
writes.  Mount this resource before the records API, whose generic
``/api/v1/{module}/…`` routes would otherwise take these paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.clock import Clock
from gateway.http.auth import int_param
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from storage import campaign_results
from storage.campaign_results import STATUS_FIELD_CHOICES
from storage.db import Database

SETTINGS = "/api/v1/campaign-crm-settings"


def status_field_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid ``status_field`` setting, or None."""
    if not isinstance(value, Mapping):
        return "status_field must be an object {module: field or null}"
    for module, field in value.items():
        if module not in STATUS_FIELD_CHOICES:
            return f"status_field: unknown module {module!r} (leads, contacts)"
        if field is not None and field not in STATUS_FIELD_CHOICES[module]:
            allowed = ", ".join(STATUS_FIELD_CHOICES[module])
            return f"status_field.{module} must be one of {allowed} or null"
    return None


def settings_body(stored: dict[str, str | None]) -> dict[str, Any]:
    """The setting as the API shows it: every module named, null when none is chosen."""
    return {"status_field": {m: stored.get(m) for m in STATUS_FIELD_CHOICES}}


class RecordCampaignsApi(Resource):
    def __init__(self, db: Database, clock: Clock) -> None:
        super().__init__(db)
        self.clock = clock

    def routes(self) -> list[Route]:
        return [
            Route(SETTINGS, self.get_settings, methods=["GET"]),
            Route(SETTINGS, self.put_settings, methods=["PUT"]),
            Route("/api/v1/{module}/{id}/campaigns", self.history, methods=["GET"]),
        ]

    async def history(self, request: Request) -> Response:
        """``{"items": [{"campaign_id", "name", "status", "at"}], "next"}``, newest first."""
        user = await self.user(request)
        module = request.path_params["module"]
        if module not in campaign_results.PEOPLE:
            raise ApiError(404, "not_found", f"{module!r} records have no campaign history")
        rid = path_id(request)
        limit = int_param(request, "limit", 100, lo=1, hi=500)
        offset = int_param(request, "cursor", 0)
        org_id = user["org_id"]

        def read(conn) -> list[dict[str, Any]] | None:
            if campaign_results.person(conn, org_id, module, rid) is None:
                return None
            return campaign_results.history(
                conn, org_id, module, rid, offset=offset, limit=limit + 1
            )

        rows = await self.db.run_read(read)
        if rows is None:
            raise ApiError(404, "not_found", f"no such {module[:-1]}")
        nxt = str(offset + limit) if len(rows) > limit else None
        return JSON({"items": rows[:limit], "next": nxt})

    async def get_settings(self, request: Request) -> Response:
        user = await self.user(request)
        stored = await self.db.run_read(campaign_results.status_field, user["org_id"])
        return JSON(settings_body(stored))

    async def put_settings(self, request: Request) -> Response:
        """``{"status_field": {"leads": "status"|"title"|null, "contacts": "title"|null}}``.

        A module left out keeps no field (the body is the whole setting, as PUT says).
        """
        user = await self.user(request)
        if not user["is_admin"]:
            raise ApiError(403, "forbidden", "only an admin changes the campaign CRM settings")
        body = await read_json(request)
        unknown = sorted(set(body) - {"status_field"})
        if unknown:
            raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
        value = body.get("status_field", {})
        problem = status_field_problem(value)
        if problem:
            raise ApiError(422, "invalid_field", problem)
        chosen = {m: value.get(m) for m in STATUS_FIELD_CHOICES}
        await self.db.run_write(
            lambda conn: campaign_results.set_status_field(
                conn, user["org_id"], chosen, user_id=user["id"], at=self.clock.now()
            )
        )
        return JSON(settings_body(chosen))
