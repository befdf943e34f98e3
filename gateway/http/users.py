"""``/api/v1/users`` (org admins) and ``/api/v1/me/dropbox`` (every rep, their own).

An admin lists the org's users, deactivates and reactivates them, and sets a
rep's dropbox options.  A rep reads their own dropbox address, downloads it as
a vCard, regenerates it and names the (at most five) other addresses allowed
to write to it — seed 004's BCC Dropbox settings page, over HTTP.  Another
org's user is 404, never 403: an id of another org names nothing here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.clock import Clock
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from gateway.org import admin
from storage.db import Database

#: The vCard's file name: ASCII, so every browser and client keeps it as given.
VCARD_FILENAME = "mailgate-dropbox.vcf"


def _api_error(exc: admin.AdminError) -> ApiError:
    return ApiError(exc.status, str(exc.code), exc.message)


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(unknown)}")


class UsersApi(Resource):
    def __init__(self, db: Database, *, clock: Clock, mail_domain: str) -> None:
        super().__init__(db)
        self.clock, self.mail_domain = clock, mail_domain

    def routes(self) -> list[Route]:
        u, me = "/api/v1/users", "/api/v1/me/dropbox"
        return [
            Route(u, self.list_users, methods=["GET"]),
            Route(u + "/{id}/deactivate", self.deactivate, methods=["POST"]),
            Route(u + "/{id}/activate", self.activate, methods=["POST"]),
            Route(u + "/{id}/dropbox", self.patch_user_dropbox, methods=["PATCH"]),
            Route(u + "/{id}/password", self.put_password, methods=["PUT"]),
            Route(me, self.get_dropbox, methods=["GET"]),
            Route(me, self.patch_dropbox, methods=["PATCH"]),
            Route(me + ".vcf", self.vcard, methods=["GET"]),
            Route(me + "/regenerate", self.regenerate, methods=["POST"]),
            Route(me + "/senders", self.put_senders, methods=["PUT"]),
        ]

    async def _admin(self, request: Request) -> dict[str, Any]:
        user = await self.user(request)
        if not user["is_admin"]:
            raise ApiError(403, "forbidden", "only an org admin manages users")
        return user

    # -- admins ------------------------------------------------------------------------

    async def list_users(self, request: Request) -> Response:
        """The org's users, active or not (``active``, ``deactivated_at``)."""
        caller = await self._admin(request)
        return JSON({"items": await admin.list_users(self.db, caller["org_id"]), "next": None})

    async def put_password(self, request: Request) -> Response:
        """``PUT {"password": "…"}`` (or null to remove it): an admin sets or resets a
        user's dashboard password; the user's open dashboard sessions end."""
        caller = await self._admin(request)
        user_id = path_id(request)
        body = await read_json(request)
        _only(body, {"password"})
        password = body.get("password")
        if password is not None and not isinstance(password, str):
            raise ApiError(422, "invalid_field", "password must be a string or null")
        try:
            view = await admin.set_password(self.db, caller["org_id"], str(user_id), password)
        except admin.AdminError as exc:
            raise _api_error(exc) from None
        return JSON(view)

    async def _set_active(self, request: Request, active: bool) -> Response:
        caller = await self._admin(request)
        user_id = path_id(request)
        try:
            view = await admin.set_active(
                self.db, caller["org_id"], str(user_id), active=active, now=self.clock.now()
            )
        except admin.AdminError as exc:
            raise _api_error(exc) from None
        return JSON(view)

    async def deactivate(self, request: Request) -> Response:
        """Their tokens and dropbox stop at once; their seat is freed; their mail stays."""
        return await self._set_active(request, False)

    async def activate(self, request: Request) -> Response:
        """Back, if the plan has a seat (409 ``user_cap_reached`` otherwise)."""
        return await self._set_active(request, True)

    async def patch_user_dropbox(self, request: Request) -> Response:
        caller = await self._admin(request)
        return await self._patch(request, caller["org_id"], path_id(request))

    # -- the rep's own dropbox ------------------------------------------------------------

    async def _view(self, user: dict[str, Any]) -> dict[str, Any]:
        try:
            return await admin.dropbox_view(self.db, user, self.mail_domain)
        except admin.AdminError as exc:
            raise _api_error(exc) from None

    async def get_dropbox(self, request: Request) -> Response:
        """``{address, setting, search, allowed_senders}``."""
        return JSON(await self._view(await self.user(request)))

    async def patch_dropbox(self, request: Request) -> Response:
        user = await self.user(request)
        return await self._patch(request, user["org_id"], user["id"])

    async def _patch(self, request: Request, org_id: int, user_id: int) -> Response:
        """``{"setting"?: lead|contact|none, "search"?: leads|contacts|both}``."""
        body = await read_json(request)
        _only(body, {"setting", "search"})
        try:
            changed = await admin.set_dropbox_options(
                self.db, org_id, user_id, setting=body.get("setting"), search=body.get("search")
            )
        except admin.AdminError as exc:
            raise _api_error(exc) from None
        return JSON(changed)

    async def vcard(self, request: Request) -> Response:
        """The address as a vCard (3.0: every address book reads it), to save and BCC."""
        user = await self.user(request)
        view = await self._view(user)
        return Response(
            admin.vcard(user["name"], view["address"]).encode(),
            media_type="text/vcard; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{VCARD_FILENAME}"',
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def regenerate(self, request: Request) -> Response:
        """A new address; mail to the old one is refused (550) from now on."""
        user = await self.user(request)
        await admin.regenerate_dropbox(self.db, user, mail_domain=self.mail_domain)
        return JSON(await self._view(user))

    async def put_senders(self, request: Request) -> Response:
        """``{"senders": [...]}``: exactly these (at most 5) may write besides the rep."""
        user = await self.user(request)
        body = await read_json(request)
        _only(body, {"senders"})
        if "senders" not in body:
            raise ApiError(422, "missing_field", "senders is required (a list, maybe empty)")
        try:
            await admin.replace_senders(self.db, user, body["senders"])
        except admin.AdminError as exc:
            raise _api_error(exc) from None
        return JSON(await self._view(user))
