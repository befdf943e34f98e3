"""The base of every API resource: handlers are methods of an object built with its needs.

``create_app`` constructs each resource with exactly what it uses (the
database, a clock, the signer, the relay's wake) and mounts its
:meth:`Resource.routes`; no handler reaches into application state, so what a
resource depends on is visible in its constructor, and a test can build one
with stand-ins.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from gateway.http.auth import authenticate
from gateway.outage import STORAGE
from storage.db import Database


class Resource:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def user(self, request: Request) -> dict[str, Any]:
        """The caller, from the bearer token (401 without a valid one).

        Every authenticated request reads storage here first, so a success here is
        what ends an outage in the log (:data:`gateway.outage.STORAGE`).
        """
        user = await authenticate(self.db, request)
        STORAGE.succeeded()
        return user

    def routes(self) -> list[Route]:
        raise NotImplementedError
