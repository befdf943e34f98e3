"""Campaigns over HTTP (``/api/v1/campaigns``): drafts, sending, stats and per-member status.

A campaign is made as a ``draft`` (lists, a template or inline content, a
From address, who is registered in the CRM), checked exactly as the send API
checks a bulk send; ``send`` fixes its recipients and books the mass quota in
one transaction (:mod:`gateway.campaigns.start`) and the ``campaigns`` runner
composes them.  Any user of the org may create and send campaigns; another
org's campaign is as absent as one that does not exist (404).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.campaigns import start as starting
from gateway.clock import Clock
from gateway.http.auth import choice_param, int_param, page
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from gateway.http.sending import check_inline, content_of, from_address, quota_refusal
from gateway.records.validation import name_problem
from gateway.sending.steps import QuotaExceeded
from storage import campaigns as store
from storage import orgs
from storage.db import Database

#: Lists one campaign may go to.
MAX_LISTS = 50
REGISTER_KEYS = ("opened", "clicked")
REGISTER_TARGETS = ("leads", "contacts", None)
CONTENT_KEYS = ("template_id", "subject", "html", "text")
RECIPIENT_STATUSES = (
    "pending", "queued", "sent", "opened", "clicked", "bounced", "unsubscribed",
    "complained", "failed", "unopened",
)  # fmt: skip


def campaign_json(row: dict[str, Any], stats: dict[str, int] | None = None) -> dict[str, Any]:
    keys = (
        "id", "name", "status", "list_ids", "template_id", "subject", "from_email", "register",
        "send_at", "sent_at", "started_at", "recipients", "skipped", "created_at",
    )  # fmt: skip
    out = {k: row[k] for k in keys}
    out["from"] = {"email": row["from_email"], "name": row["from_name"]}
    del out["from_email"]
    if stats is not None:
        out["stats"] = stats
    return out


def recipient_json(row: dict[str, Any]) -> dict[str, Any]:
    if row["registered_module"]:
        record = {"module": row["registered_module"], "id": row["registered_id"]}
    elif row["module"]:
        record = {"module": row["module"], "id": row["record_id"]}
    else:
        record = None
    return {
        "email": row["email"],
        "status": row["status"],
        "record": record,
        "not_registered_reason": row["not_registered_reason"],
        "sent_at": row["sent_at"],
        "opened_at": row["opened_at"],
        "clicked_at": row["clicked_at"],
    }


def checked_name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(422, "missing_field", "name is required")
    if len(name) > 200 or name_problem(name):
        raise ApiError(422, "invalid_field", "name must be one line of at most 200 characters")
    return name.strip()


def checked_list_ids(body: dict[str, Any]) -> list[int]:
    ids = body.get("list_ids")
    if not isinstance(ids, list) or not ids:
        raise ApiError(422, "missing_field", "list_ids must be a non-empty list of list ids")
    if len(ids) > MAX_LISTS:
        raise ApiError(422, "invalid_field", f"at most {MAX_LISTS} lists per campaign")
    if any(not isinstance(i, int) or isinstance(i, bool) or i <= 0 for i in ids):
        raise ApiError(422, "invalid_field", "list_ids must be list ids (integers)")
    return list(dict.fromkeys(ids))  # the order given, each once


def checked_register(body: dict[str, Any]) -> dict[str, str | None]:
    given = body.get("register")
    if given is None:
        return {"opened": None, "clicked": None}
    if not isinstance(given, dict) or set(given) - set(REGISTER_KEYS):
        raise ApiError(422, "invalid_field", 'register must be {"opened": …, "clicked": …}')
    for key in REGISTER_KEYS:
        if given.get(key) not in REGISTER_TARGETS:
            raise ApiError(422, "invalid_field", f"register.{key} must be leads, contacts or null")
    return {key: given.get(key) for key in REGISTER_KEYS}


def checked_send_at(body: dict[str, Any]) -> datetime | None:
    raw = body.get("send_at")
    if raw is None:
        return None
    try:
        at = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise ApiError(422, "invalid_field", "send_at must be an ISO 8601 time with a UTC offset")
    return at


def patched_content(row: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """What a PATCH asks for: a new template, or the inline parts with some changed."""
    if "template_id" in body and body["template_id"] is not None:
        return body
    given = {k: body[k] for k in ("subject", "html", "text") if k in body}
    if row["template_id"] is not None and "template_id" not in body:
        return {"template_id": row["template_id"], **given}
    kept = {"subject": row["subject"], "html": row["html"] or None, "text": row["text"]}
    return {**kept, **given}


class CampaignsApi(Resource):
    """``/api/v1/campaigns``: create, change and delete drafts; send, cancel; stats, members."""

    def __init__(self, db: Database, *, clock: Clock, wake_runner: Callable[[], None]) -> None:
        super().__init__(db)
        self.clock, self.wake_runner = clock, wake_runner

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/campaigns", self.list_campaigns, methods=["GET"]),
            Route("/api/v1/campaigns", self.create, methods=["POST"]),
            Route("/api/v1/campaigns/{id}", self.get, methods=["GET"]),
            Route("/api/v1/campaigns/{id}", self.patch, methods=["PATCH"]),
            Route("/api/v1/campaigns/{id}", self.delete, methods=["DELETE"]),
            Route("/api/v1/campaigns/{id}/send", self.send, methods=["POST"]),
            Route("/api/v1/campaigns/{id}/cancel", self.cancel, methods=["POST"]),
            Route("/api/v1/campaigns/{id}/members", self.members, methods=["GET"]),
        ]

    async def _campaign(self, org_id: int, campaign_id: int) -> dict[str, Any]:
        row = await self.db.run_read(store.get_campaign, org_id, campaign_id)
        if row is None:
            raise ApiError(404, "not_found", "no such campaign")
        return row

    async def _values(
        self,
        user: dict[str, Any],
        body: dict[str, Any],
        *,
        creating: bool,
        content_body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The campaign columns ``body`` sets, each checked as the send API checks it.

        ``content_body`` is what the content is read from when it is not ``body``
        (a PATCH that changes one part of the inline content keeps the others).
        """
        org_id = user["org_id"]
        out: dict[str, Any] = {}
        if creating or "name" in body:
            out["name"] = checked_name(body)
        if creating or "list_ids" in body:
            ids = checked_list_ids(body)
            found = await self.db.run_read(store.lists_of_org, org_id, ids)
            missing = [i for i in ids if i not in found]
            if missing:
                raise ApiError(422, "invalid_field", f"no such list: {missing[0]}")
            out["list_ids"] = ids
        if creating or "register" in body:
            out["register"] = checked_register(body)
        async with self.db.connect() as conn:
            if creating or any(k in body for k in CONTENT_KEYS):
                content = await content_of(conn, org_id, content_body or body)
                # Members render through the leads catalogue unless a template says otherwise.
                check_inline(content, {content.module or "leads"})
                out.update(
                    template_id=content.template_id,
                    template_version=content.template_version,
                    subject=content.subject,
                    html=content.html,
                    text=content.text,
                    header=content.header,
                    footer=content.footer,
                    catalogue=content.module,
                )
            if creating or "from" in body:
                out["from_email"], out["from_name"] = await from_address(
                    conn, user, body.get("from")
                )
        return out

    async def list_campaigns(self, request: Request) -> Response:
        user = await self.user(request)
        limit = int_param(request, "limit", 100, lo=1, hi=500)
        after = int_param(request, "after", 0)
        rows = await self.db.run_read(store.campaigns_page, user["org_id"], after, limit + 1)
        return JSON(page(rows, limit, campaign_json))

    async def create(self, request: Request) -> Response:
        user = await self.user(request)
        values = await self._values(user, await read_json(request), creating=True)
        now = self.clock.now()
        values.update(
            org_id=user["org_id"],
            user_id=user["id"],
            status="draft",
            created_at=now,
            updated_at=now,
        )
        new_id = await self.db.run_write(store.insert_campaign, values)
        return JSON({"id": new_id, "status": "draft", "name": values["name"]}, status_code=201)

    async def get(self, request: Request) -> Response:
        user = await self.user(request)
        row = await self._campaign(user["org_id"], path_id(request))
        stats = await self.db.run_read(store.stats, row["id"])
        return JSON(campaign_json(row, stats))

    async def patch(self, request: Request) -> Response:
        user = await self.user(request)
        cid = path_id(request)
        row = await self._campaign(user["org_id"], cid)
        body = await read_json(request)
        if row["status"] != "draft":
            raise ApiError(409, "not_draft", f"the campaign is {row['status']}; only drafts change")
        values = await self._values(
            user, body, creating=False, content_body=patched_content(row, body)
        )
        values["updated_at"] = self.clock.now()
        changed = await self.db.run_write(
            lambda conn: store.update_campaign(conn, user["org_id"], cid, values, status=("draft",))
        )
        if not changed:
            raise ApiError(409, "not_draft", "the campaign was sent meanwhile; only drafts change")
        return JSON(campaign_json(await self._campaign(user["org_id"], cid)))

    async def delete(self, request: Request) -> Response:
        user = await self.user(request)
        cid = path_id(request)
        row = await self._campaign(user["org_id"], cid)
        if not await self.db.run_write(store.delete_draft, user["org_id"], cid):
            raise ApiError(409, "not_draft", f"the campaign is {row['status']}; only drafts go")
        return Response(status_code=204)

    async def send(self, request: Request) -> Response:
        user = await self.user(request)
        cid = path_id(request)
        body = await read_json(request)
        send_at = checked_send_at(body)
        defer = body.get("defer_excess", False)
        if not isinstance(defer, bool):
            raise ApiError(422, "invalid_field", "defer_excess must be true or false")
        async with self.db.connect() as conn:
            org = await orgs.get_org(conn, user["org_id"])
        try:
            started = await self.db.run_write(
                starting.start, org, cid, self.clock.now(), send_at, defer
            )
        except starting.NotFound:
            raise ApiError(404, "not_found", "no such campaign") from None
        except starting.NotDraft as exc:
            raise ApiError(409, "not_draft", str(exc), campaign_status=exc.status) from None
        except QuotaExceeded as exc:
            raise quota_refusal(exc) from None
        self.wake_runner()
        return JSON(
            {
                "id": cid,
                "status": started.status,
                "recipients": started.recipients,
                "skipped": started.skipped,
            },
            status_code=202,
        )

    async def cancel(self, request: Request) -> Response:
        user = await self.user(request)
        cid = path_id(request)
        row = await self._campaign(user["org_id"], cid)
        now = self.clock.now()
        values = {"status": "cancelled", "updated_at": now}
        cancelled = await self.db.run_write(
            lambda conn: store.update_campaign(conn, user["org_id"], cid, values, status=store.LIVE)
        )
        if not cancelled:
            raise ApiError(
                409,
                "not_cancellable",
                f"the campaign is {row['status']}; only a scheduled or sending one is cancelled",
            )
        return JSON(campaign_json(await self._campaign(user["org_id"], cid)))

    async def members(self, request: Request) -> Response:
        user = await self.user(request)
        cid = path_id(request)
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        after = int_param(request, "after", 0)
        status = choice_param(request, "status", RECIPIENT_STATUSES)
        await self._campaign(user["org_id"], cid)
        rows = await self.db.run_read(
            lambda conn: store.recipients_page(
                conn, cid, after=after, limit=limit + 1, status=status
            )
        )
        return JSON(page(rows, limit, recipient_json))
