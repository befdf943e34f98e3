"""Mailing lists and their members over HTTP (``/api/v1/lists``).

Any user of the org may create and change lists and members (as in the
hosted Campaigns, where lists are shared by the org).  Another org's list is
as absent as one that does not exist (404).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.campaigns.members import (
    CsvRefused,
    add_members,
    member_problem,
    member_row,
    parse_members_csv,
)
from gateway.clock import Clock
from gateway.http.auth import choice_param, int_param, page
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_body, read_json
from gateway.http.resource import Resource
from gateway.records.validation import name_problem
from storage import campaigns as store
from storage.db import Database

LIST_KINDS = ("list", "topic")
MEMBER_STATUSES = ("subscribed", "unsubscribed", "bounced", "complained")
#: The largest CSV body accepted (a 413 past it).
MAX_CSV_BYTES = 10 * 1024 * 1024


def list_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "kind": row["kind"],
        "register": row["register"],
        "members": row.get("members", {}),
        "created_at": row["created_at"],
    }


def member_json(row: dict[str, Any]) -> dict[str, Any]:
    record = {"module": row["module"], "id": row["record_id"]} if row["module"] else None
    keys = (
        "id", "email", "first_name", "last_name", "company", "subscription", "consent",
        "legal_basis", "status", "source",
    )  # fmt: skip
    return {**{k: row[k] for k in keys}, "record": record}


def _text(body: dict[str, Any], key: str, limit: int, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(422, "missing_field", f"{key} is required")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ApiError(422, "invalid_field", f"{key} must be a non-empty string")
    if len(value) > limit:
        raise ApiError(422, "invalid_field", f"{key} is longer than {limit} characters")
    return value.strip()


def list_values(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """The list columns a body sets (name, description, kind, register), checked."""
    out: dict[str, Any] = {}
    name = _text(body, "name", 200, required=creating)
    if name is not None:
        if not name or name_problem(name):
            raise ApiError(422, "invalid_field", "name must be one line of text")
        out["name"] = name
    description = _text(body, "description", 5000)
    if description is not None:
        out["description"] = description
    if creating:
        kind = body.get("kind", "list")
        if kind not in LIST_KINDS:
            raise ApiError(422, "invalid_field", "kind must be list or topic")
        out["kind"] = kind
    elif "kind" in body:
        raise ApiError(422, "invalid_field", "kind cannot be changed")
    if "register" in body:
        if not isinstance(body["register"], bool):
            raise ApiError(422, "invalid_field", "register must be true or false")
        out["register"] = body["register"]
    return out


class ListsApi(Resource):
    """``/api/v1/lists``: lists, their members, members by hand and by CSV."""

    def __init__(self, db: Database, *, clock: Clock) -> None:
        super().__init__(db)
        self.clock = clock

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/lists", self.list_lists, methods=["GET"]),
            Route("/api/v1/lists", self.create_list, methods=["POST"]),
            Route("/api/v1/lists/{id}", self.get_list, methods=["GET"]),
            Route("/api/v1/lists/{id}", self.patch_list, methods=["PATCH"]),
            Route("/api/v1/lists/{id}/members", self.list_members, methods=["GET"]),
            Route("/api/v1/lists/{id}/members", self.add_member, methods=["POST"]),
            Route("/api/v1/lists/{id}/members/import", self.import_members, methods=["POST"]),
            Route("/api/v1/lists/{id}/members/{member_id}", self.remove_member, methods=["DELETE"]),
        ]

    async def _list(self, org_id: int, list_id: int) -> dict[str, Any]:
        row = await self.db.run_read(store.get_list, org_id, list_id)
        if row is None:
            raise ApiError(404, "not_found", "no such list")
        return row

    async def list_lists(self, request: Request) -> Response:
        user = await self.user(request)
        limit = int_param(request, "limit", 100, lo=1, hi=500)
        after = int_param(request, "after", 0)
        rows = await self.db.run_read(store.lists_page, user["org_id"], after, limit + 1)
        return JSON(page(rows, limit, list_json))

    async def create_list(self, request: Request) -> Response:
        user = await self.user(request)
        values = list_values(await read_json(request), creating=True)
        values.setdefault("description", "")
        values.setdefault("register", False)
        now = self.clock.now()
        values.update(created_by=user["id"], created_at=now)
        new_id = await self.db.run_write(store.insert_list, user["org_id"], values)
        if new_id is None:
            raise ApiError(409, "duplicate_name", f"a list named {values['name']!r} exists")
        return JSON(list_json(await self._list(user["org_id"], new_id)), status_code=201)

    async def get_list(self, request: Request) -> Response:
        user = await self.user(request)
        return JSON(list_json(await self._list(user["org_id"], path_id(request))))

    async def patch_list(self, request: Request) -> Response:
        user = await self.user(request)
        list_id = path_id(request)
        values = list_values(await read_json(request), creating=False)
        await self._list(user["org_id"], list_id)

        if values and not await self.db.run_write(
            store.update_list, user["org_id"], list_id, values
        ):
            raise ApiError(409, "duplicate_name", f"a list named {values['name']!r} exists")
        return JSON(list_json(await self._list(user["org_id"], list_id)))

    async def list_members(self, request: Request) -> Response:
        user = await self.user(request)
        list_id = path_id(request)
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        after = int_param(request, "after", 0)
        status = choice_param(request, "status", MEMBER_STATUSES)
        await self._list(user["org_id"], list_id)
        rows = await self.db.run_read(
            lambda conn: store.members_page(
                conn, list_id, after=after, limit=limit + 1, status=status
            )
        )
        return JSON(page(rows, limit, member_json))

    async def add_member(self, request: Request) -> Response:
        user = await self.user(request)
        list_id = path_id(request)
        body = await read_json(request)
        problem = member_problem(body)
        if problem is not None:
            code = "missing_field" if problem.reason == "missing_email" else "invalid_field"
            raise ApiError(422, code, problem.message, field=problem.field)
        row = member_row(body)
        await self._list(user["org_id"], list_id)
        written = await self.db.run_write(
            lambda conn: add_members(
                conn, user["org_id"], list_id, [row], source="manual",
                now=self.clock.now(), update_existing=False,
            )
        )  # fmt: skip
        if written.existing:
            raise ApiError(409, "already_member", f"{row['email']} is already on the list")
        rows = await self.db.run_read(store.members_by_email, list_id, [row["email_norm"]])
        return JSON(member_json(rows[row["email_norm"]]), status_code=201)

    async def import_members(self, request: Request) -> Response:
        user = await self.user(request)
        list_id = path_id(request)
        await self._list(user["org_id"], list_id)
        data = await read_body(request, MAX_CSV_BYTES, "CSV body")
        try:
            parsed = parse_members_csv(data)
        except CsvRefused as exc:
            raise ApiError(422, "bad_csv", str(exc)) from None
        written = await self.db.run_write(
            lambda conn: add_members(
                conn, user["org_id"], list_id, parsed.rows, source="csv",
                now=self.clock.now(), update_existing=True,
            )
        )  # fmt: skip
        return JSON(
            {
                "added": len(written.added),
                "updated": len(written.updated),
                "unchanged": len(written.existing),
                "skipped": parsed.skipped,
            }
        )

    async def remove_member(self, request: Request) -> Response:
        user = await self.user(request)
        list_id, member_id = path_id(request), path_id(request, "member_id")
        removed = await self.db.run_write(
            store.remove_member, user["org_id"], list_id, member_id, self.clock.now()
        )
        if not removed:
            raise ApiError(404, "not_found", "no such member on this list")
        return Response(status_code=204)
