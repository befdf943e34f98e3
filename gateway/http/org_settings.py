"""Org sending settings: `/api/v1/org-addresses` (shared From addresses) and
`/api/v1/tracking-skip-domains`.

Every user of the org may read them (to choose a ``from``); only admins change them.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from gateway.org import shared_addresses, tracking_domains


def _api_error(exc: shared_addresses.OrgAddressError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message)


# --------------------------------------------------------------------------- tracking skip domains


class OrgSettingsApi(Resource):
    def routes(self) -> list[Route]:
        a, t = "/api/v1/org-addresses", "/api/v1/tracking-skip-domains"
        return [
            Route(a, self.list_addresses, methods=["GET"]),
            Route(a, self.create_address, methods=["POST"]),
            Route(a + "/{id}", self.delete_address, methods=["DELETE"]),
            Route(t, self.get_tracking_skip_domains, methods=["GET"]),
            Route(t, self.put_tracking_skip_domains, methods=["PUT"]),
        ]

    async def _admin(self, request: Request) -> dict[str, Any]:
        user = await self.user(request)
        if not user["is_admin"]:
            raise ApiError(403, "forbidden", "only an admin manages organization addresses")
        return user

    async def list_addresses(self, request: Request) -> Response:
        user = await self.user(request)
        items = await shared_addresses.list_all(self.db, user["org_id"])
        return JSON({"items": items, "next": None})

    async def create_address(self, request: Request) -> Response:
        user = await self._admin(request)
        body = await read_json(request)
        unknown = sorted(set(body) - {"email", "name"})
        if unknown:
            raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
        try:
            created = await shared_addresses.add(
                self.db, user["org_id"], body.get("email"), body.get("name")
            )
        except shared_addresses.OrgAddressError as exc:
            raise _api_error(exc) from None
        return JSON(created, status_code=201)

    async def delete_address(self, request: Request) -> Response:
        user = await self._admin(request)
        try:
            await shared_addresses.remove(self.db, user["org_id"], path_id(request))
        except shared_addresses.OrgAddressError as exc:
            raise _api_error(exc) from None
        return Response(status_code=204)

    async def get_tracking_skip_domains(self, request: Request) -> Response:
        user = await self.user(request)
        domains = await tracking_domains.get(self.db, user["org_id"])
        return JSON({"domains": domains})

    async def put_tracking_skip_domains(self, request: Request) -> Response:
        """``PUT /api/v1/tracking-skip-domains`` ``{"domains": [...]}`` (admins): not tracked."""
        user = await self.user(request)
        if not user["is_admin"]:
            raise ApiError(403, "forbidden", "only an admin sets tracking skip domains")
        body = await read_json(request)
        unknown = sorted(set(body) - {"domains"})
        if unknown:
            raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
        try:
            domains = await tracking_domains.replace(self.db, user["org_id"], body.get("domains"))
        except tracking_domains.InvalidDomains as exc:
            raise ApiError(422, "invalid_field", str(exc)) from None
        return JSON({"domains": domains})
