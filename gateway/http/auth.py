"""Bearer tokens (each one sees its own organization only), and request parsing."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from gateway.http.errors import ApiError
from storage import orgs as org_store
from storage.db import Database

MAX_JSON_BYTES = 1024 * 1024


async def authenticate(db: Database, request: Request) -> dict[str, Any]:
    """The active user whose API token the request carries, or a 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <api_token>")
    async with db.connect() as conn:
        user = await org_store.user_by_api_token(conn, token.strip())
    if user is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API token")
    return user


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object, refusing oversized or malformed bodies clearly."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_JSON_BYTES:
        raise ApiError(413, "too_large", f"request body over {MAX_JSON_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ApiError(413, "too_large", f"request body over {MAX_JSON_BYTES} bytes")
    if not body:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a megabyte of ``[[[[`` nests deeper than the parser recurses.
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    return data


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


def path_id(request: Request, name: str = "id") -> int:
    raw = request.path_params[name]
    # ASCII only: str.isdigit() also accepts "１" (an alias of 1) and "²" (int() refuses it).
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(404, "not_found", "no such record")
    return int(raw)
