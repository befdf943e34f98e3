"""Sending, quota and suppressions over HTTP.

``POST /api/v1/emails`` sends individual mail; ``POST /api/v1/emails/bulk``
is the mass path (one template or content to many records, counted against
the mass quota, ``List-Unsubscribe-Post`` one-click).  Both answer 202 only
after the sends, their quota and their filed copies are committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.addresses import normalise
from gateway.clock import Clock
from gateway.http.auth import int_param
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from gateway.http.templates import MAX_PART, template_problem
from gateway.receive.mailboxes import sharing
from gateway.sending.steps import Content, QuotaExceeded, SendRequest, Signer
from gateway.sending.submit import enqueue
from gateway.sending.usage import org_quota
from storage import events, mailboxes, org_addresses, orgs, sends, suppressions, templates_store
from storage.db import Database
from storage.payloads import suppression_lifted
from templates.render import TemplateProblem, compile_template

MAX_RECIPIENTS = {"individual": 100, "mass": 5000}


# --------------------------------------------------------------------------- sending


def _recipients(body: dict[str, Any], kind: str) -> list[tuple[str, int]]:
    to = body.get("to")
    if not isinstance(to, list) or not to:
        raise ApiError(422, "missing_field", 'to must be a non-empty list of {"module", "id"}')
    if len(to) > MAX_RECIPIENTS[kind]:
        raise ApiError(
            422, "too_many_recipients", f"at most {MAX_RECIPIENTS[kind]} recipients per request"
        )
    out = []
    for item in to:
        if not isinstance(item, dict):
            raise ApiError(422, "invalid_field", 'each recipient must be {"module", "id"}')
        module, rid = item.get("module"), item.get("id")
        if not isinstance(module, str) or not isinstance(rid, int) or isinstance(rid, bool):
            raise ApiError(422, "invalid_field", 'each recipient must be {"module", "id"}')
        out.append((module, rid))
    return out


async def content_of(conn, org_id: int, body: dict[str, Any]) -> Content:
    tid = body.get("template_id")
    if tid is not None:
        if not isinstance(tid, int) or isinstance(tid, bool):
            raise ApiError(422, "invalid_field", "template_id must be an integer")
        if any(body.get(k) is not None for k in ("subject", "html", "text")):
            raise ApiError(422, "invalid_field", "give template_id or subject/html/text, not both")
        row = await templates_store.get(conn, org_id, tid)
        if row is None:
            raise ApiError(422, "invalid_field", f"template {tid} does not exist")
        return Content(
            subject=row["subject"],
            html=row["html"],
            text=row["text"],
            header=row["header"],
            footer=row["footer"],
            module=row["module"],
            template_id=row["id"],
            template_version=row["version"],
        )
    subject, html, text = body.get("subject"), body.get("html"), body.get("text")
    if not isinstance(subject, str) or not subject.strip():
        raise ApiError(422, "missing_field", "subject (or template_id) is required")
    if html is None and text is None:
        raise ApiError(422, "missing_field", "html or text is required")
    for key, value in (("html", html), ("text", text)):
        if value is not None and (not isinstance(value, str) or len(value) > MAX_PART):
            raise ApiError(422, "invalid_field", f"{key} must be a string under {MAX_PART} bytes")
    return Content(subject=subject, html=html or "", text=text)


def check_inline(content: Content, modules: set[str]) -> None:
    if content.template_id is not None:
        return
    for module in sorted(modules & {"leads", "contacts"}):
        try:
            compile_template(content.subject, content.html, content.text, None, None, module)
        except TemplateProblem as exc:
            raise template_problem(exc) from None


async def from_address(conn, user: dict[str, Any], given: Any) -> tuple[str, str]:
    """The user's own address, or one of the org's shared addresses."""
    if given is None:
        return user["email"], user["name"]
    name = None
    if isinstance(given, dict):
        name, given = given.get("name"), given.get("email")
    if not isinstance(given, str) or (name is not None and not isinstance(name, str)):
        raise ApiError(422, "invalid_field", 'from must be an address or {"email", "name"}')
    norm = normalise(given)
    if norm is None:
        raise ApiError(422, "invalid_field", f"from {given!r} is not an email address")
    if norm == user["email_norm"]:
        return user["email"], name if name is not None else user["name"]
    row = await org_addresses.get_by_email(conn, user["org_id"], norm)
    if row is None:
        raise ApiError(
            422,
            "from_not_allowed",
            f"{given} is neither your address nor one of the organization's addresses",
        )
    return norm, name if name is not None else row["name"]


def quota_refusal(exc: QuotaExceeded) -> ApiError:
    """The 429 of a send (or campaign) that does not fit the day's quota."""
    return ApiError(
        429,
        "quota_exceeded",
        str(exc),
        resets_at=exc.resets_at.isoformat(),
        kind=exc.kind,
        limit=exc.limit,
        used=exc.used,
        requested=exc.requested,
    )


class SendingApi(Resource):
    """Sends (individual and bulk), their status, the org's quota and suppression list."""

    def __init__(
        self, db: Database, *, clock: Clock, signer: Signer, wake_relay: Callable[[], None]
    ) -> None:
        super().__init__(db)
        self.clock, self.signer, self.wake_relay = clock, signer, wake_relay

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/emails", self.send_emails, methods=["POST"]),
            Route("/api/v1/emails/bulk", self.send_bulk, methods=["POST"]),
            Route("/api/v1/sends/{id}", self.get_send, methods=["GET"]),
            Route("/api/v1/quota", self.get_quota, methods=["GET"]),
            Route("/api/v1/suppressions", self.list_suppressions, methods=["GET"]),
            Route("/api/v1/suppressions/{email}", self.delete_suppression, methods=["DELETE"]),
        ]

    async def _send(self, request: Request, kind: str) -> Response:
        user = await self.user(request)
        body = await read_json(request)
        if kind == "individual" and body.get("kind") == "mass":
            kind = "mass"
        defer = body.get("defer_excess", False)
        if not isinstance(defer, bool):
            raise ApiError(422, "invalid_field", "defer_excess must be true or false")
        to = _recipients(body, kind)
        async with self.db.connect() as conn:
            content = await content_of(conn, user["org_id"], body)
            from_email, from_name = await from_address(conn, user, body.get("from"))
            org = await orgs.get_org(conn, user["org_id"])
        check_inline(content, {m for m, _ in to})
        req = SendRequest(
            org=org,
            user=user,
            kind=kind,
            to=to,
            content=content,
            from_email=from_email,
            from_name=from_name,
            defer_excess=defer,
        )
        try:
            accepted = await self.db.run_write(enqueue, req, self.signer, self.clock.now())
        except QuotaExceeded as exc:
            raise quota_refusal(exc) from None
        except TemplateProblem as exc:
            raise template_problem(exc) from None
        except ValueError as exc:  # a header the composer refused (e.g. a line break in a name)
            raise ApiError(422, "cannot_compose", str(exc)) from None
        if accepted.sends:
            self.wake_relay()
        return JSON({"sends": accepted.sends, "skipped": accepted.skipped}, status_code=202)

    async def send_emails(self, request: Request) -> Response:
        return await self._send(request, "individual")

    async def send_bulk(self, request: Request) -> Response:
        return await self._send(request, "mass")

    async def get_send(self, request: Request) -> Response:
        user = await self.user(request)
        async with self.db.connect() as conn:
            row = await sends.get(conn, user["org_id"], path_id(request))
            modes, shares = await mailboxes.sharing_rules(conn, user["org_id"])
        # A colleague's private send is as absent as one that does not exist.
        if row is None or not sharing.sees_mail(
            user["id"], row["user_id"], {(row["module"], row["record_id"])}, modes, shares
        ):
            raise ApiError(404, "not_found", "no such send")
        keys = (
            "id", "kind", "module", "record_id", "to_email", "from_email", "subject", "template_id",
            "template_version", "message_id", "state", "status", "attempts", "next_attempt_at",
            "last_reply", "sent_at", "bounced_at", "bounce_type", "created_at",
        )  # fmt: skip
        out = {k: row[k] for k in keys}
        out["message_id"] = f"<{row['message_id']}>"
        return JSON(out)

    async def get_quota(self, request: Request) -> Response:
        user = await self.user(request)
        async with self.db.connect() as conn:
            org = await orgs.get_org(conn, user["org_id"])
            status = await conn.run_sync(org_quota, org, self.clock.now())
        return JSON(status)

    async def list_suppressions(self, request: Request) -> Response:
        user = await self.user(request)
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        after = int_param(request, "cursor", 0)
        async with self.db.connect() as conn:
            rows = await suppressions.list_page(conn, user["org_id"], after=after, limit=limit + 1)
        items = [
            {
                "email": r["email_norm"],
                "reason": r["reason"],
                "detail": r["detail"],
                "send_id": r["send_id"],
                "created_at": r["created_at"],
            }
            for r in rows[:limit]
        ]
        nxt = str(rows[limit - 1]["id"]) if len(rows) > limit else None
        return JSON({"items": items, "next": nxt})

    async def delete_suppression(self, request: Request) -> Response:
        user = await self.user(request)
        norm = normalise(request.path_params["email"])
        if norm is None:
            raise ApiError(404, "not_found", "not a suppressed address")
        async with self.db.begin() as conn:
            removed = await suppressions.lift(conn, user["org_id"], norm)
            if removed is None:
                raise ApiError(404, "not_found", f"{norm} is not suppressed")
            await events.append(
                conn,
                [
                    suppression_lifted(
                        user["org_id"], email=norm, reason=removed["reason"], user_id=user["id"]
                    )
                ],
            )
        return Response(status_code=204)
