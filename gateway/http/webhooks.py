"""``/api/v1/webhooks``: an org's signed webhook endpoints and their delivery logs.

An endpoint receives every event of the org of the types it subscribes to,
whoever's mail it is: so only org admins (``is_admin``) manage them, and
another org's endpoints are simply not there (404).  The signing secret
(``whsec_…``) is shown once, when made or rotated; listings never carry it.
A URL must be ``http(s)://`` without credentials, and its host must resolve
to public addresses only unless ``MAILGATE_ALLOW_PRIVATE_TARGETS`` is set
(checked again before every delivery, see :mod:`sync.webhook_delivery`).
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.clock import Clock
from gateway.http.auth import int_param, page
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from gateway.targets import TargetRefused, resolve_target
from storage import webhooks as store
from storage.db import Database
from storage.events import EVENT_TYPES

MAX_URL = 2000
#: How long a rotated-out secret still signs (beside the new one).
ROTATION_GRACE = timedelta(hours=24)
FIELDS = {"url", "events"}
PATCH_FIELDS = {"url", "events", "state"}
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be an endpoint (before its host is resolved), or None."""
    if not isinstance(url, str) or not url:
        return "url must be a non-empty string"
    if len(url) > MAX_URL:
        return f"url must be at most {MAX_URL} characters"
    if _CONTROL.search(url):
        return "url must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "url is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "url must start with http:// or https://"
    if not parts.hostname:
        return "url must name a host"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "url must not carry credentials (user:password@); authenticate by the signature"
    if parts.fragment:
        return "url must not have a #fragment"
    return None


def event_types(value: Any) -> list[str]:
    """The subscribed types, checked and deduplicated in the order given."""
    if not isinstance(value, list) or not value:
        raise ApiError(422, "invalid_field", "events must be a non-empty list of event types")
    unknown = [t for t in value if not isinstance(t, str) or t not in EVENT_TYPES]
    if unknown:
        shown = ", ".join(repr(t)[:60] for t in unknown[:5])
        raise ApiError(
            422,
            "invalid_field",
            f"events: unknown event type(s) {shown}; known: {', '.join(sorted(EVENT_TYPES))}",
        )
    return list(dict.fromkeys(value))


def view(row: dict[str, Any]) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret."""
    return {
        "id": row["id"],
        "url": row["url"],
        "events": row["events"],
        "state": row["state"],
        "failing_since": row["failing_since"],
        "disabled_at": row["disabled_at"],
        "last_error": row["last_error"],
        "created_at": row["created_at"],
    }


def delivery_view(row: dict[str, Any]) -> dict[str, Any]:
    """One delivery in the log: where it stands and every attempt (cut to the last 50)."""
    return {
        "id": row["id"],
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "state": row["state"],
        "attempts": row["attempts"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "next_attempt_at": row["next_attempt_at"] if row["state"] == "pending" else None,
        "delivered_at": row["delivered_at"],
        "created_at": row["created_at"],
        "log": row["log"] or [],
    }


class WebhooksApi(Resource):
    def __init__(self, db: Database, *, clock: Clock, allow_private: bool) -> None:
        super().__init__(db)
        self.clock = clock
        self.allow_private = allow_private

    def routes(self) -> list[Route]:
        base = "/api/v1/webhooks"
        return [
            Route(base, self.list_webhooks, methods=["GET"]),
            Route(base, self.create_webhook, methods=["POST"]),
            Route(base + "/{id}", self.get_webhook, methods=["GET"]),
            Route(base + "/{id}", self.change_webhook, methods=["PATCH"]),
            Route(base + "/{id}", self.delete_webhook, methods=["DELETE"]),
            Route(base + "/{id}/rotate-secret", self.rotate_secret, methods=["POST"]),
            Route(base + "/{id}/deliveries", self.list_deliveries, methods=["GET"]),
        ]

    async def admin(self, request: Request) -> dict[str, Any]:
        """The caller, who must be an org admin: webhooks carry the whole org's events."""
        user = await self.user(request)
        if not user["is_admin"]:
            raise ApiError(403, "forbidden", "only org admins manage webhooks")
        return user

    async def checked_url(self, value: Any) -> str:
        """A URL that may be an endpoint now: well formed, its host public (or allowed)."""
        problem = url_problem(value)
        if problem:
            raise ApiError(422, "invalid_field", problem)
        parts = urlsplit(value)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            await resolve_target(parts.hostname or "", port, allow_private=self.allow_private)
        except TargetRefused as exc:
            raise ApiError(422, exc.code, f"url: {exc}") from exc
        return value

    async def _found(self, org_id: int, webhook_id: int) -> dict[str, Any]:
        row = await self.db.run_read(store.get, org_id, webhook_id)
        if row is None:
            raise ApiError(404, "not_found", "no such webhook")
        return row

    async def list_webhooks(self, request: Request) -> Response:
        user = await self.admin(request)
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        after = int_param(request, "cursor", 0)
        rows = await self.db.run_read(
            lambda c: store.list_page(c, user["org_id"], after=after, limit=limit + 1)
        )
        return JSON(page(rows, limit, view))

    async def create_webhook(self, request: Request) -> Response:
        """``POST {"url", "events"}`` → ``201 {"id", "secret", …}``; the secret shown once."""
        user = await self.admin(request)
        body = await read_json(request)
        _no_unknown(body, FIELDS)
        if "url" not in body:
            raise ApiError(422, "missing_field", "url is required")
        if "events" not in body:
            raise ApiError(422, "missing_field", "events is required")
        types = event_types(body["events"])
        url = await self.checked_url(body["url"])
        secret = new_secret()
        now = self.clock.now()
        webhook_id = await self.db.run_write(
            lambda c: store.create(
                c,
                org_id=user["org_id"],
                url=url,
                types=types,
                secret=secret,
                created_by=user["id"],
                now=now,
            )
        )
        row = await self._found(user["org_id"], webhook_id)
        return JSON({**view(row), "secret": secret}, status_code=201)

    async def get_webhook(self, request: Request) -> Response:
        user = await self.admin(request)
        return JSON(view(await self._found(user["org_id"], path_id(request))))

    async def change_webhook(self, request: Request) -> Response:
        """``PATCH {"url"?, "events"?, "state"?}``; ``state: "active"`` re-enables."""
        user = await self.admin(request)
        webhook_id = path_id(request)
        body = await read_json(request)
        _no_unknown(body, PATCH_FIELDS)
        await self._found(user["org_id"], webhook_id)
        values: dict[str, Any] = {}
        if "events" in body:
            values["events"] = event_types(body["events"])
        if "url" in body:
            values["url"] = await self.checked_url(body["url"])
        state = body.get("state")
        if "state" in body and state not in ("active", "disabled"):
            raise ApiError(422, "invalid_field", 'state must be "active" or "disabled"')
        now = self.clock.now()
        org_id = user["org_id"]

        def write(conn) -> bool:
            if not store.change(conn, org_id, webhook_id, values, now):
                return False
            if state == "active":
                return store.enable(conn, org_id, webhook_id, now)
            if state == "disabled":
                return store.disable_by_hand(conn, org_id, webhook_id, now)
            return True

        if not await self.db.run_write(write):
            raise ApiError(404, "not_found", "no such webhook")
        return JSON(view(await self._found(org_id, webhook_id)))

    async def delete_webhook(self, request: Request) -> Response:
        user = await self.admin(request)
        webhook_id = path_id(request)
        removed = await self.db.run_write(
            store.remove, user["org_id"], webhook_id, self.clock.now()
        )
        if not removed:
            raise ApiError(404, "not_found", "no such webhook")
        return Response(status_code=204)

    async def rotate_secret(self, request: Request) -> Response:
        """A new secret, shown once; the old one keeps signing for :data:`ROTATION_GRACE`."""
        user = await self.admin(request)
        webhook_id = path_id(request)
        secret = new_secret()
        until = self.clock.now() + ROTATION_GRACE
        rotated = await self.db.run_write(
            store.rotate_secret, user["org_id"], webhook_id, secret, until
        )
        if not rotated:
            raise ApiError(404, "not_found", "no such webhook")
        return JSON({"id": webhook_id, "secret": secret, "previous_valid_until": until})

    async def list_deliveries(self, request: Request) -> Response:
        """The endpoint's delivery log in event order, paged by ``cursor``."""
        user = await self.admin(request)
        webhook_id = path_id(request)
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        after = int_param(request, "cursor", 0)
        await self._found(user["org_id"], webhook_id)
        rows = await self.db.run_read(
            lambda c: store.delivery_page(
                c, user["org_id"], webhook_id, after=after, limit=limit + 1
            )
        )
        return JSON(page(rows, limit, delivery_view))


def _no_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        shown = ", ".join(u[:40] for u in unknown[:5])
        raise ApiError(422, "unknown_field", f"unknown field(s): {shown}")
