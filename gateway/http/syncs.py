"""CRM → Campaigns syncs over HTTP: configure, pause, resume, resync, and read the history;
and the events the log's consumers parked (org admins: list, replay, skip).

The API only writes configuration and asks for full runs (``full_requested_at``);
the ``crm_to_campaigns`` consumer does every run (:mod:`sync.crm_to_campaigns`).
The limits (5 active syncs per user, 15 per org) are checked under the org's
lock in the same transaction as the insert or resume
(:func:`storage.syncs.lock_org`), so concurrent requests never pass them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.clock import Clock
from gateway.http.auth import int_param, page
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import MAX_INT, path_id, read_json
from gateway.http.resource import Resource
from storage import parked as parked_store
from storage import syncs as store
from storage.db import Database
from sync.consumer import (
    AlreadyResolved,
    ParkedError,
    ParkedNotFound,
    ReplayFailed,
    parked_json,
    replay_parked,
    skip_parked,
)
from sync.mirror import (
    MAX_FIELD_MAP,
    MAX_FILTER,
    MEMBER_FIELD,
    RECORD_FIELDS,
    ConsentMode,
    DoNotMail,
    Module,
    Subscription,
    crm_field_problem,
    resolved_map,
)

#: Seed 001: at most 5 active syncs per user and 15 per organization.
USER_LIMIT, ORG_LIMIT = 5, 15
#: What PATCH may change (the tab and the list are the sync's identity: make a new one).
PATCHABLE = (
    "field_map",
    "update_empty_only",
    "do_not_mail",
    "exclude_converted",
    "consent",
    "legal_basis",
    "filter",
)
#: Seed 002's toggle is 「空の値を更新する」 ("update empty values"); CONTRACT.md calls it
#: ``update_empty_only``.  Both names are accepted, with the seed's meaning.
ALIASES = {"update_empty_values": "update_empty_only"}
CREATE_FIELDS = ("module", "list_id", "subscription", *PATCHABLE)


def _choice(body: dict[str, Any], key: str, allowed: type) -> str:
    value = body[key]
    options = [str(o) for o in allowed]
    if value not in options:
        raise ApiError(422, "invalid_field", f"{key} must be one of {', '.join(options)}")
    return value


def _flag(body: dict[str, Any], key: str) -> bool:
    if not isinstance(body[key], bool):
        raise ApiError(422, "invalid_field", f"{key} must be true or false")
    return body[key]


def _field_map(module: str, value: Any) -> dict[str, str | None]:
    if not isinstance(value, dict):
        raise ApiError(
            422, "invalid_field", "field_map must be an object {member_field: crm_field}"
        )
    if len(value) > MAX_FIELD_MAP:
        raise ApiError(422, "invalid_field", f"field_map maps at most {MAX_FIELD_MAP} fields")
    out: dict[str, str | None] = {}
    for member_field, crm_field in value.items():
        if member_field == "email" or not MEMBER_FIELD.match(member_field):
            raise ApiError(
                422,
                "invalid_field",
                f"field_map: {member_field!r} is not a member field name "
                "(lower-case letters, digits, _; the email is always the record's)",
            )
        if crm_field is None:
            out[member_field] = None
            continue
        if not isinstance(crm_field, str):
            raise ApiError(422, "invalid_field", f"field_map.{member_field} must be a string")
        problem = crm_field_problem(module, crm_field)
        if problem:
            raise ApiError(422, "invalid_field", f"field_map.{member_field}: {problem}")
        out[member_field] = crm_field
    return out


def _selection(module: str, value: Any) -> dict[str, str] | None:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or len(value) > MAX_FILTER:
        raise ApiError(
            422, "invalid_field", f"filter must be an object of at most {MAX_FILTER} fields"
        )
    for key, wanted in value.items():
        if key not in RECORD_FIELDS[module] or key == "email":
            raise ApiError(422, "invalid_field", f"filter: {module} cannot be selected by {key!r}")
        if not isinstance(wanted, str) or len(wanted) > 300:
            raise ApiError(422, "invalid_field", f"filter.{key} must be a string")
    return dict(value)


def sync_values(body: dict[str, Any], module: str, *, partial: bool) -> dict[str, Any]:
    """The columns a create or PATCH body sets, refusing anything unknown or malformed (422)."""
    for alias, name in ALIASES.items():
        if alias in body:
            if name in body and body[name] != body[alias]:
                raise ApiError(422, "invalid_field", f"{alias} and {name} disagree")
            body = {**{k: v for k, v in body.items() if k != alias}, name: body[alias]}
    unknown = sorted(set(body) - set(PATCHABLE if partial else CREATE_FIELDS))
    if unknown:
        raise ApiError(
            422, "unknown_field", f"unknown or unchangeable field(s): {', '.join(unknown)}"
        )
    values: dict[str, Any] = {}
    for key in body:
        match key:
            case "module":
                values[key] = _choice(body, key, Module)
            case "list_id":
                raw = body[key]
                if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw <= MAX_INT:
                    raise ApiError(422, "invalid_field", "list_id must be a list's id")
                values[key] = raw
            case "subscription":
                values[key] = _choice(body, key, Subscription)
            case "consent":
                values[key] = _choice(body, key, ConsentMode)
            case "do_not_mail":
                values[key] = _choice(body, key, DoNotMail)
            case "update_empty_only" | "exclude_converted":
                values[key] = _flag(body, key)
            case "legal_basis":
                raw = body[key]
                if raw is not None and (not isinstance(raw, str) or not 0 < len(raw) <= 40):
                    raise ApiError(
                        422, "invalid_field", "legal_basis must be text of 1-40 characters"
                    )
                values[key] = raw
            case "field_map":
                values[key] = _field_map(module, body[key])
            case "filter":
                values[key] = _selection(module, body[key])
    if not partial:
        for required in ("module", "list_id", "subscription", "do_not_mail"):
            if required not in values:
                raise ApiError(422, "missing_field", f"{required} is required")
    return values


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def run_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "started_at": _when(row["started_at"]),
        "finished_at": _when(row["finished_at"]),
        "total": row["total"],
        "added": row["added"],
        "updated": row["updated"],
        "removed": row["removed"],
        "skipped": row["skipped"],
        "skipped_reasons": row["skipped_reasons"],
    }


def sync_json(row: dict[str, Any], last_run: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": row["id"],
        "state": row["state"],
        "module": row["module"],
        "list_id": row["list_id"],
        "user_id": row["user_id"],
        "subscription": row["subscription"],
        "consent": row["consent"],
        "legal_basis": row["legal_basis"],
        "update_empty_only": row["update_empty_only"],
        "update_empty_values": row["update_empty_only"],
        "do_not_mail": row["do_not_mail"],
        "exclude_converted": row["exclude_converted"],
        "field_map": row["field_map"],
        # What is mapped in effect: the basic fields with the sync's own on top.
        "mapping": {"email": "email", **resolved_map(row["module"], row["field_map"] or {})},
        "filter": row["filter"],
        "full_run_requested": row["full_requested_at"] is not None,
        "created_at": _when(row["created_at"]),
        "last_run": run_json(last_run) if last_run else None,
    }


def _check_limits(conn: Connection, org_id: int, user_id: int | None) -> None:
    """409 ``sync_limit`` when one more active sync would pass a limit (under the org's lock)."""
    store.lock_org(conn, org_id)
    mine, org = store.active_counts(conn, org_id, user_id)
    if mine >= USER_LIMIT:
        raise ApiError(
            409,
            "sync_limit",
            f"a user may have at most {USER_LIMIT} active syncs; pause or delete one first",
            limit="user",
        )
    if org >= ORG_LIMIT:
        raise ApiError(
            409,
            "sync_limit",
            f"an organization may have at most {ORG_LIMIT} active syncs; pause or delete one first",
            limit="org",
        )


class SyncsApi(Resource):
    """``/api/v1/syncs``: one sync per CRM tab and list, and its run history."""

    def __init__(self, db: Database, clock: Clock, wake: Callable[[], None] | None = None) -> None:
        super().__init__(db)
        self.clock = clock
        self.wake = wake or (lambda: None)

    def routes(self) -> list[Route]:
        s = "/api/v1/syncs"
        return [
            # Before the ``/{id}`` routes: "parked" is not a sync's id.
            Route(s + "/parked", self.list_parked, methods=["GET"]),
            Route(s + "/parked/{id}/replay", self.replay_parked, methods=["POST"]),
            Route(s + "/parked/{id}/skip", self.skip_parked, methods=["POST"]),
            Route(s, self.create_sync, methods=["POST"]),
            Route(s, self.list_syncs, methods=["GET"]),
            Route(s + "/{id}", self.get_sync, methods=["GET"]),
            Route(s + "/{id}", self.patch_sync, methods=["PATCH"]),
            Route(s + "/{id}", self.delete_sync, methods=["DELETE"]),
            Route(s + "/{id}/pause", self.pause, methods=["POST"]),
            Route(s + "/{id}/resume", self.resume, methods=["POST"]),
            Route(s + "/{id}/run", self.run, methods=["POST"]),
            Route(s + "/{id}/runs", self.runs, methods=["GET"]),
            Route(s + "/{id}/runs/{run_id}/skipped", self.skipped, methods=["GET"]),
        ]

    async def create_sync(self, request: Request) -> Response:
        user = await self.user(request)
        body = await read_json(request)
        module = body.get("module")
        if module not in list(Module):
            raise ApiError(422, "invalid_field", "module must be leads or contacts")
        values = sync_values(body, module, partial=False)
        org_id, now = user["org_id"], self.clock.now()

        def go(conn: Connection) -> int:
            if not store.list_exists(conn, org_id, values["list_id"]):
                raise ApiError(404, "not_found", "no such list")
            _check_limits(conn, org_id, user["id"])
            # Under the org's lock: two syncs of one tab into one list would fight over
            # the same members.
            taken = store.existing_for(conn, org_id, values["list_id"], values["module"])
            if taken is not None:
                raise ApiError(
                    409,
                    "sync_exists",
                    f"sync {taken} already mirrors {values['module']} into this list",
                    sync_id=taken,
                )
            return store.create(
                conn,
                {
                    "consent": ConsentMode.NONE,
                    "update_empty_only": False,
                    "exclude_converted": True,
                    "field_map": {},
                    **values,
                    "org_id": org_id,
                    "user_id": user["id"],
                    "state": "active",
                    "full_requested_at": now,
                    "created_at": now,
                    "updated_at": now,
                },
            )

        sync_id = await self.db.run_write(go)
        self.wake()
        return JSON({"id": sync_id, "state": "active"}, status_code=201)

    async def list_syncs(self, request: Request) -> Response:
        user = await self.user(request)

        def go(conn: Connection) -> list[dict[str, Any]]:
            return [
                sync_json(r, _last_run(conn, r["id"]))
                for r in store.list_for_org(conn, user["org_id"])
            ]

        return JSON({"items": await self.db.run_read(go)})

    async def get_sync(self, request: Request) -> Response:
        user = await self.user(request)
        sync_id = path_id(request)

        def go(conn: Connection) -> dict[str, Any]:
            return sync_json(_found(conn, user["org_id"], sync_id), _last_run(conn, sync_id))

        return JSON(await self.db.run_read(go))

    async def patch_sync(self, request: Request) -> Response:
        """Change the settings; a full run is asked for so every member reflects them."""
        user = await self.user(request)
        sync_id = path_id(request)
        body = await read_json(request)
        org_id, now = user["org_id"], self.clock.now()

        def go(conn: Connection) -> dict[str, Any]:
            row = _found(conn, org_id, sync_id)
            values = sync_values(body, row["module"], partial=True)
            if values:
                extra = {"full_requested_at": now} if row["state"] == "active" else {}
                store.change(conn, org_id, sync_id, {**values, **extra, "updated_at": now})
            return sync_json(_found(conn, org_id, sync_id), _last_run(conn, sync_id))

        out = await self.db.run_write(go)
        self.wake()
        return JSON(out)

    async def delete_sync(self, request: Request) -> Response:
        user = await self.user(request)
        sync_id = path_id(request)
        if not await self.db.run_write(store.remove, user["org_id"], sync_id):
            raise ApiError(404, "not_found", "no such sync")
        return Response(status_code=204)

    async def pause(self, request: Request) -> Response:
        """Paused: record changes are passed over until resume (which catches up in full)."""
        user = await self.user(request)
        sync_id = path_id(request)
        await self.db.run_write(pause_sync, user["org_id"], sync_id, self.clock.now())
        return JSON({"id": sync_id, "state": "paused"})

    async def resume(self, request: Request) -> Response:
        """Active again, counted against the limits, with a full run to catch up."""
        user = await self.user(request)
        sync_id = path_id(request)
        await self.db.run_write(resume_sync, user["org_id"], sync_id, self.clock.now())
        self.wake()
        return JSON({"id": sync_id, "state": "active"})

    async def run(self, request: Request) -> Response:
        """A full resync on demand (202: the consumer does it shortly)."""
        user = await self.user(request)
        sync_id = path_id(request)
        org_id, now = user["org_id"], self.clock.now()

        def go(conn: Connection) -> None:
            row = _found(conn, org_id, sync_id)
            if row["state"] != "active":
                raise ApiError(409, "sync_paused", "this sync is paused; resume it to run it")
            store.change(conn, org_id, sync_id, {"full_requested_at": now, "updated_at": now})

        await self.db.run_write(go)
        self.wake()
        return JSON({"id": sync_id, "state": "active", "full_run_requested": True}, 202)

    async def runs(self, request: Request) -> Response:
        """The sync's runs, newest first; ``cursor`` is the last id of the previous page."""
        user = await self.user(request)
        sync_id = path_id(request)
        limit = int_param(request, "limit", 50, lo=1, hi=500)
        before = int_param(request, "cursor", MAX_INT, lo=1, hi=MAX_INT)

        def go(conn: Connection) -> list[dict[str, Any]]:
            _found(conn, user["org_id"], sync_id)
            return store.runs_page(conn, sync_id, before=before, limit=limit + 1)

        rows = await self.db.run_read(go)
        return JSON(page(rows, limit, run_json))

    async def skipped(self, request: Request) -> Response:
        """Why each skipped record of a run was skipped (seed 002's history)."""
        user = await self.user(request)
        sync_id = path_id(request)
        run_id = path_id(request, "run_id")
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        after = int_param(request, "cursor", 0, lo=0, hi=MAX_INT)

        def go(conn: Connection) -> list[dict[str, Any]]:
            _found(conn, user["org_id"], sync_id)
            if store.get_run(conn, sync_id, run_id) is None:
                raise ApiError(404, "not_found", "no such run")
            return store.skips_page(conn, run_id, after=after, limit=limit + 1)

        rows = await self.db.run_read(go)
        return JSON(page(rows, limit, skip_json))

    # -- parked events (org admins; their org's events only) ------------------------------

    async def _admin(self, request: Request) -> dict[str, Any]:
        user = await self.user(request)
        if not user["is_admin"]:
            raise ApiError(403, "forbidden", "only an org admin sees and replays parked events")
        return user

    async def list_parked(self, request: Request) -> Response:
        """The org's events a consumer parked, oldest first (``?all=true``: resolved too)."""
        user = await self._admin(request)
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        after = int_param(request, "cursor", 0, lo=0, hi=MAX_INT)
        everything = request.query_params.get("all") in ("1", "true")
        consumer = (request.query_params.get("consumer") or "")[:100] or None  # a column's width

        def go(conn: Connection) -> list[dict[str, Any]]:
            return parked_store.listing(
                conn,
                consumer=consumer,
                org_id=user["org_id"],
                everything=everything,
                after=after,
                limit=limit + 1,
            )

        rows = await self.db.run_read(go)
        items = [parked_json(r) for r in rows[:limit]]
        return JSON({"items": items, "next": rows[limit - 1]["id"] if len(rows) > limit else None})

    async def replay_parked(self, request: Request) -> Response:
        """Apply the parked event again (200, ``replayed``); 409 ``replay_failed`` if it raises."""
        user = await self._admin(request)
        parked_id = path_id(request)
        try:
            found = await replay_parked(self.db, self.clock, parked_id, org_id=user["org_id"])
        except ParkedError as exc:
            raise parked_error(exc) from None
        return JSON(found)

    async def skip_parked(self, request: Request) -> Response:
        """Never apply the parked event (200, ``skipped``)."""
        user = await self._admin(request)
        parked_id = path_id(request)
        try:
            found = await skip_parked(self.db, self.clock, parked_id, org_id=user["org_id"])
        except ParkedError as exc:
            raise parked_error(exc) from None
        return JSON(found)


def parked_error(exc: ParkedError) -> ApiError:
    """The API's answer to a parked event that cannot be replayed or skipped as asked."""
    if isinstance(exc, ParkedNotFound):
        return ApiError(404, "not_found", "no such parked event")
    if isinstance(exc, AlreadyResolved):
        return ApiError(409, "parked_resolved", str(exc))
    if isinstance(exc, ReplayFailed):
        return ApiError(409, "replay_failed", str(exc))
    return ApiError(409, "parked_unavailable", str(exc))


def skip_json(row: dict[str, Any]) -> dict[str, Any]:
    """One skipped record of a run: which, and why."""
    return {
        "module": row["module"],
        "id": row["record_id"],
        "email": row["email"],
        "reason": row["reason"],
    }


def pause_sync(conn: Connection, org_id: int, sync_id: int, now: datetime) -> None:
    """Pause a sync of the org (the API and the dashboard): changes are passed over until
    resume; 404 ``ApiError`` for another org's or a missing sync."""
    _found(conn, org_id, sync_id)
    store.change(
        conn, org_id, sync_id, {"state": "paused", "full_requested_at": None, "updated_at": now}
    )


def resume_sync(conn: Connection, org_id: int, sync_id: int, now: datetime) -> None:
    """Make a sync active again, counted against the limits (409 ``sync_limit``), with a
    full run asked for to catch up; an active sync is left as it is."""
    row = _found(conn, org_id, sync_id)
    if row["state"] == "active":
        return
    _check_limits(conn, org_id, row["user_id"])
    store.change(
        conn, org_id, sync_id, {"state": "active", "full_requested_at": now, "updated_at": now}
    )


def _found(conn: Connection, org_id: int, sync_id: int) -> dict[str, Any]:
    row = store.get(conn, org_id, sync_id)
    if row is None:
        raise ApiError(404, "not_found", "no such sync")
    return row


def _last_run(conn: Connection, sync_id: int) -> dict[str, Any] | None:
    rows = store.runs_page(conn, sync_id, before=MAX_INT, limit=1)
    return rows[0] if rows else None
