"""JSON errors of one shape: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.outage import _PG_OUTAGES, RETRY_AFTER_SECONDS, STORAGE, is_storage_outage
from storage.db import StorageUnavailable


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        # Imported here: jsonutil raises ApiError, so it imports this module.
        from gateway.http.jsonutil import dumps

        return dumps(content)


def error_response(status: int, code: str, message: str, **extra: Any) -> JSON:
    return JSON({"error": {"code": code, "message": message, **extra}}, status_code=status)


async def on_api_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, **exc.extra)


_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 400: "bad_request"}


async def on_http_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, _CODES.get(exc.status_code, "error"), str(exc.detail))


def storage_unavailable() -> JSON:
    """The API's answer while storage cannot be reached: 503, ``Retry-After``, one code."""
    response = error_response(
        503, "storage_unavailable", "storage is unavailable; try again shortly"
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def on_storage_error(request: Request, exc: Exception) -> JSON:
    """503 for an outage (logged once per outage by :data:`gateway.outage.STORAGE`).

    Registered for the exception classes an outage raises, so it runs before
    Starlette's last-resort handler, which would log a traceback per request.
    Anything else of those classes (a constraint violation) is re-raised: a 500.
    """
    if not is_storage_outage(exc):
        raise exc
    STORAGE.failed(exc, "http")
    return storage_unavailable()


#: The handlers ``create_app`` registers for storage failures: every class an outage raises.
STORAGE_HANDLERS = {
    cls: on_storage_error
    for cls in (StorageUnavailable, sqlalchemy.exc.SQLAlchemyError, OSError, *_PG_OUTAGES)
}


async def on_unexpected(request: Request, exc: Exception) -> JSON:
    if is_storage_outage(exc):  # e.g. wrapped in an ExceptionGroup
        STORAGE.failed(exc, "http")
        return storage_unavailable()
    return error_response(500, "internal", "unexpected error; it has been logged")
