"""Bearer tokens (each one sees its own organization only), and request parsing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from starlette.requests import Request

from gateway.http.errors import ApiError
from storage import orgs
from storage.db import Database


async def authenticate(db: Database, request: Request) -> dict[str, Any]:
    """The active user whose API token the request carries, or a 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api_token>")
    async with db.connect() as conn:
        user = await orgs.user_by_api_token(conn, token.strip())
    if user is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API token")
    return user


def choice_param(request: Request, name: str, choices: Iterable[str]) -> str | None:
    """An optional query parameter that must be one of ``choices`` (400 naming them)."""
    value = request.query_params.get(name) or None
    choices = tuple(choices)
    if value is not None and value not in choices:
        raise ApiError(400, "bad_parameter", f"{name} must be one of {', '.join(choices)}")
    return value


def page(
    rows: Sequence[Mapping[str, Any]], limit: int, item: Callable[[Any], Any]
) -> dict[str, Any]:
    """``{"items", "next"}`` from up to ``limit + 1`` rows read in id order.

    ``next`` is the last item's id as a string when more rows follow (pass it
    back as ``after``/``cursor``), else null: one extra row read tells.
    """
    nxt = str(rows[limit - 1]["id"]) if len(rows) > limit else None
    return {"items": [item(r) for r in rows[:limit]], "next": nxt}


def int_param(request: Request, name: str, default: int, *, lo: int = 0, hi: int = 10**18) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer") from exc
    if not lo <= value <= hi:
        raise ApiError(400, "bad_parameter", f"{name} must be between {lo} and {hi}")
    return value
