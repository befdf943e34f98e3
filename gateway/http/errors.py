"""JSON errors of one shape: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse


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


async def on_unexpected(request: Request, exc: Exception) -> JSON:
    return error_response(500, "internal", "unexpected error; it has been logged")
