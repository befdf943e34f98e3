"""``/api/v1/tokens``: a user's API tokens, listed, issued and revoked.

A token is shown once, when issued; listings carry its id, a short hint
(``mg_AbCd…``) and a label, never the token or its hash.  A user manages
their own tokens; an org admin sees and revokes every token of the org.
Revoking the token a request carries is allowed: it is how one logs out a
leaked token from a script.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from gateway.org import admin
from storage import orgs

MAX_LABEL = 100


class TokensApi(Resource):
    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/tokens", self.list_tokens, methods=["GET"]),
            Route("/api/v1/tokens", self.create_token, methods=["POST"]),
            Route("/api/v1/tokens/{id}", self.revoke_token, methods=["DELETE"]),
        ]

    async def list_tokens(self, request: Request) -> Response:
        """Own tokens; an admin gets the whole org's (``?user_id=`` narrows it)."""
        user = await self.user(request)
        only: int | None = user["id"]
        if user["is_admin"]:
            raw = request.query_params.get("user_id")
            only = None
            if raw:
                if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
                    raise ApiError(400, "bad_parameter", "user_id must be an integer")
                only = int(raw)
        async with self.db.connect() as conn:
            rows = await orgs.list_api_tokens(conn, org_id=user["org_id"], user_id=only)
        items = [{**admin.token_view(r), "current": r["id"] == user["token_id"]} for r in rows]
        return JSON({"items": items, "next": None})

    async def create_token(self, request: Request) -> Response:
        """``POST {"label"?}``: a new token for the caller, in the answer only."""
        user = await self.user(request)
        body = await read_json(request)
        label = body.get("label", "api")
        if not isinstance(label, str) or len(label) > MAX_LABEL or not label.isprintable():
            raise ApiError(
                422, "invalid_field", f"label must be printable text of at most {MAX_LABEL}"
            )
        token = await admin.issue_api_token(self.db, user["id"], label=label or "api")
        async with self.db.connect() as conn:
            issued = await orgs.user_by_api_token(conn, token)
        return JSON(
            {"id": issued["token_id"], "api_token": token, "label": label or "api"},
            status_code=201,
        )

    async def revoke_token(self, request: Request) -> Response:
        user = await self.user(request)
        token_id = path_id(request)
        async with self.db.begin() as conn:
            row = await orgs.get_api_token(conn, token_id)
            # Another org's token, or a colleague's for a non-admin, is simply not there.
            if row is None or row["org_id"] != user["org_id"]:
                raise ApiError(404, "not_found", "no such token")
            if row["user_id"] != user["id"] and not user["is_admin"]:
                raise ApiError(404, "not_found", "no such token")
            await orgs.revoke_api_tokens(conn, row["user_id"], token_id=token_id)
        return Response(status_code=204)
