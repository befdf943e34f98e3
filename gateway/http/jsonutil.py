"""JSON in and out of the API.

Out: times ISO 8601, decimals as numbers.  In: :func:`read_json` and
:func:`path_id` are the one place request bodies and path ids are parsed, so
hostile input is refused here, once, for every endpoint: JSON may legally
carry an unpaired surrogate (``"\\ud800"``), a NUL, or an integer of any
size, and none of them can reach a database column (UTF-8 text without NUL,
64-bit integers), so each is a 422 naming the field here rather than a driver error (500)
later.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request

from gateway.http.errors import ApiError

MAX_JSON_BYTES = 1024 * 1024
#: The range of a PostgreSQL ``bigint`` (and of SQLite's integers).
MIN_INT, MAX_INT = -(2**63), 2**63 - 1


def _default(o: Any) -> Any:
    if isinstance(o, datetime | date):
        return o.isoformat()
    if isinstance(o, Decimal):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, default=_default, separators=(",", ":")).encode()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def hostile(value: Any, where: str = "body") -> str | None:
    """Why ``value`` (parsed JSON) cannot be stored, or None; names the first bad place.

    Walks iteratively: a megabyte of nesting must not recurse.
    """
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                return f"{path} {problem}"
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                return f"{path} is an integer outside the 64-bit range"
        elif isinstance(item, dict):
            for key, sub in item.items():
                problem = _bad_text(key)
                if problem:
                    return f"a key in {path} {problem}"
                stack.append((sub, f"{path}.{key}" if path != "body" else key))
        elif isinstance(item, list):
            stack.extend((sub, f"{path}[{i}]") for i, sub in enumerate(item))
    return None


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (not valid Unicode text)"
    return None


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The request body, refused (413) once it is known to exceed ``limit`` bytes: by its
    declared length before reading, else as soon as the stream passes it."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"{what} over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"{what} over {limit} bytes")
    return bytes(body)


async def read_json(request: Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The request's JSON object, refusing oversized, malformed or unstorable bodies clearly.

    ``limit``: a larger body for the one endpoint that carries files (a send's attachments).
    """
    body = await read_body(request, limit)
    if not body:
        return {}
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a megabyte of ``[[[[`` nests deeper than the parser recurses.
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    problem = hostile(data)
    if problem:
        raise ApiError(422, "invalid_field", problem)
    return data


def positive_id(raw: str) -> int | None:
    """``raw`` as a positive 64-bit id, or None.

    ASCII only: str.isdigit() also accepts "１" (an alias of 1) and "²" (int() refuses it).
    """
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 0 < int(raw) <= MAX_INT:
        return None
    return int(raw)


def path_id(request: Request, name: str = "id") -> int:
    """A positive 64-bit id from the path; anything else names no record (404)."""
    found = positive_id(request.path_params[name])
    if found is None:
        raise ApiError(404, "not_found", "no such record")
    return found
