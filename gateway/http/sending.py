"""Sending, quota and suppressions over HTTP.

``POST /api/v1/emails`` sends individual mail; ``POST /api/v1/emails/bulk``
is the mass path (one template or content to many records, counted against
the mass quota, ``List-Unsubscribe-Post`` one-click).  Both answer 202 only
after the sends, their quota and their filed copies are committed.

Individual mail may carry CC, attachments and ``in_reply_to`` (a filed email
the sender may see: the reply threads under it and is filed where it is), and
may name deals (mailed at the deal's contact): :mod:`gateway.sending.extras`
checks the request's values.  ``GET /api/v1/sends/{id}`` shows one send to any
user of the org -- mail sent from the CRM is public (seed 004: 公開メール) --
with its per-recipient tracking detail (human hits only).
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
from gateway.http.jsonutil import MAX_JSON_BYTES, path_id, read_json
from gateway.http.resource import Resource
from gateway.http.templates import MAX_PART, template_problem
from gateway.receive.mailboxes import sharing
from gateway.sending.extras import (
    MAX_ATTACHED_COPIES_BYTES,
    MAX_ATTACHMENT_BYTES,
    Attachment,
    CcEntry,
    RequestProblem,
    parse_attachments,
    parse_cc,
    reply_subject,
)
from gateway.sending.steps import (
    Content,
    MessageTooLarge,
    QuotaExceeded,
    RecipientProblem,
    ReplyTarget,
    SendRequest,
    Signer,
)
from gateway.sending.submit import enqueue
from gateway.sending.usage import org_quota
from storage import (
    mailboxes,
    org_addresses,
    orgs,
    sends,
    suppressions,
    templates_store,
    tracking_store,
)
from storage.db import Database
from templates.render import TemplateProblem, compile_template

MAX_RECIPIENTS = {"individual": 100, "mass": 5000}
#: A send request may carry its attachments as base64 (4/3 of their size) besides the body.
MAX_SEND_JSON_BYTES = MAX_ATTACHMENT_BYTES * 4 // 3 + MAX_JSON_BYTES
#: What only individual mail may carry (a mass send is one template to many records).
INDIVIDUAL_ONLY = ("cc", "attachments", "in_reply_to")


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


async def content_of(
    conn, org_id: int, body: dict[str, Any], *, subject_optional: bool = False
) -> Content:
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
    if subject is None and subject_optional:  # a reply: "Re: …" replaces it
        subject = ""
    elif not isinstance(subject, str) or not subject.strip():
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
    for module in sorted(modules & {"leads", "contacts", "deals"}):
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


def _in_reply_to(body: dict[str, Any]) -> int | None:
    value = body.get("in_reply_to")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ApiError(422, "invalid_field", "in_reply_to must be the id of a filed email")
    return value


async def reply_target(conn, user: dict[str, Any], message_pk: int) -> ReplyTarget:
    """The filed email a send answers, when the sender may see it; 404 as if absent otherwise
    (another org's, or a colleague's private or unshared mail)."""
    row = await sends.reply_target(conn, user["org_id"], message_pk)
    if row is not None:
        modes, shares = await mailboxes.sharing_rules(conn, user["org_id"])
        visible = sharing.sees_mail(
            user["id"],
            row["user_id"],
            set(row["records"]),
            modes,
            shares,
            shared=row["shared"],
            crm_sent=row["source"] in sharing.CRM_SOURCES,
        )
        if visible:
            return ReplyTarget(
                pk=row["id"],
                message_id=row["message_id"],
                references=tuple(r for r in row["references"] or () if isinstance(r, str)),
                subject=row["subject"] or "",
                records=tuple(row["records"]),
            )
    raise ApiError(404, "not_found", f"in_reply_to: no such email {message_pk}")


def _extras_of(
    body: dict[str, Any], kind: str, recipients: int
) -> tuple[list[CcEntry], list[Attachment]]:
    """CC entries and attachments of the request, checked (individual mail only)."""
    if kind != "individual":
        given = [k for k in INDIVIDUAL_ONLY if body.get(k) is not None]
        if given:
            raise ApiError(
                422,
                "not_for_mass",
                f"{', '.join(given)}: individual mail only (POST /api/v1/emails)",
            )
        return [], []
    try:
        cc = parse_cc(body.get("cc"))
        attachments = parse_attachments(body.get("attachments"))
    except RequestProblem as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    if sum(len(a.data) for a in attachments) * recipients > MAX_ATTACHED_COPIES_BYTES:
        raise ApiError(
            413,
            "attachments_too_large",
            f"attachments times recipients exceed {MAX_ATTACHED_COPIES_BYTES // 2**20} MiB: "
            "send fewer recipients per request",
        )
    return cc, attachments


def tracking_detail(send: dict[str, Any], hits: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-recipient tracking of one send: when it went out, its human opens and clicks.

    ``hits`` are :func:`storage.tracking_store.human_hits` rows.  One message
    carries one set of tracking tokens, so a CC recipient's open or click
    counts here as the To recipient's: they cannot be told apart.
    """
    links = list(send["links"] or [])
    opens: dict[str, Any] = {"first": None, "last": None, "count": 0}
    clicks: dict[str, Any] = {"first": None, "last": None, "count": 0}
    by_url: dict[str | None, dict[str, Any]] = {}  # one entry per URL, in the message's order
    for hit in hits:
        into = opens if hit["kind"] == "open" else clicks
        _count(into, hit)
        if hit["kind"] == "click":
            i = hit["link_index"]
            url = links[i] if i is not None and 0 <= i < len(links) else None
            _count(
                by_url.setdefault(url, {"url": url, "count": 0, "first": None, "last": None}), hit
            )
    clicks["links"] = list(by_url.values())
    return {"sent_at": send["sent_at"], "opens": opens, "clicks": clicks}


def _count(into: dict[str, Any], hit: dict[str, Any]) -> None:
    """Add one group of hits to a tally: the count, and the earliest and latest."""
    into["count"] += hit["count"]
    into["first"] = min(t for t in (into["first"], hit["first"]) if t is not None)
    into["last"] = max(t for t in (into["last"], hit["last"]) if t is not None)


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
        self,
        db: Database,
        *,
        clock: Clock,
        signer: Signer,
        wake_relay: Callable[[], None],
        max_message_size: int | None = None,
    ) -> None:
        super().__init__(db)
        self.clock, self.signer, self.wake_relay = clock, signer, wake_relay
        #: What the SMTP receiver accepts: a composed send (attachments included) must fit it.
        self.max_message_size = max_message_size

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
        limit = MAX_SEND_JSON_BYTES if kind == "individual" else MAX_JSON_BYTES
        body = await read_json(request, limit)
        if kind == "individual" and body.get("kind") == "mass":
            kind = "mass"
        defer = body.get("defer_excess", False)
        if not isinstance(defer, bool):
            raise ApiError(422, "invalid_field", "defer_excess must be true or false")
        to = _recipients(body, kind)
        cc, attachments = _extras_of(body, kind, len(to))
        reply_pk = _in_reply_to(body) if kind == "individual" else None
        async with self.db.connect() as conn:
            reply = await reply_target(conn, user, reply_pk) if reply_pk else None
            content = await content_of(
                conn, user["org_id"], body, subject_optional=reply is not None
            )
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
            cc=cc,
            attachments=attachments,
            reply=reply,
            # A reply keeps the thread's subject ("Re: …") unless the caller wrote one.
            subject=reply_subject(reply.subject) if reply and not body.get("subject") else None,
            max_message_size=self.max_message_size,
        )
        try:
            accepted = await self.db.run_write(enqueue, req, self.signer, self.clock.now())
        except QuotaExceeded as exc:
            raise quota_refusal(exc) from None
        except TemplateProblem as exc:
            raise template_problem(exc) from None
        except RecipientProblem as exc:
            raise ApiError(422, exc.code, str(exc)) from None
        except MessageTooLarge as exc:
            raise ApiError(413, "message_too_large", str(exc)) from None
        except ValueError as exc:  # a header the composer refused (e.g. a line break in a name)
            raise ApiError(422, "cannot_compose", str(exc)) from None
        if accepted.sends:
            self.wake_relay()
        out = {"sends": accepted.sends, "skipped": accepted.skipped}
        if cc:  # only requests with a CC have CC to report
            out["cc_skipped"] = accepted.cc_skipped
        return JSON(out, status_code=202)

    async def send_emails(self, request: Request) -> Response:
        return await self._send(request, "individual")

    async def send_bulk(self, request: Request) -> Response:
        return await self._send(request, "mass")

    async def get_send(self, request: Request) -> Response:
        user = await self.user(request)
        async with self.db.connect() as conn:
            row = await sends.get(conn, user["org_id"], path_id(request))
            if row is None:  # another org's send is as absent as one that does not exist
                raise ApiError(404, "not_found", "no such send")
            modes, shares = await mailboxes.sharing_rules(conn, user["org_id"])
            excluded = await mailboxes.list_excluded(conn, user["org_id"])
            # Mail sent from the CRM is public (seed 004: 公開メール), whatever the
            # sender's sharing mode: every user of the org sees its sends.  Mail to an
            # excluded domain is not shared at all: its sender's only.
            if not sharing.sees_mail(
                user["id"],
                row["user_id"],
                {(row["module"], row["record_id"])},
                modes,
                shares,
                shared=not sharing.involves_excluded(sharing.send_addresses(row), excluded),
                crm_sent=True,
            ):
                raise ApiError(404, "not_found", "no such send")
            hits = await tracking_store.human_hits(conn, user["org_id"], row["id"])
        keys = (
            "id", "kind", "module", "record_id", "deal_id", "to_email", "from_email", "subject",
            "template_id", "template_version", "message_id", "state", "status", "attempts",
            "next_attempt_at", "last_reply", "sent_at", "bounced_at", "bounce_type", "replied_at",
            "created_at",
        )  # fmt: skip
        out = {k: row[k] for k in keys}
        out["message_id"] = f"<{row['message_id']}>"
        out["cc"] = list(row["cc_emails"] or [])
        out["in_reply_to"] = row["reply_to_pk"]
        out["tracking"] = tracking_detail(row, hits)
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
            removed = await suppressions.lift_recorded(conn, user["org_id"], norm, user["id"])
        if removed is None:
            raise ApiError(404, "not_found", f"{norm} is not suppressed")
        return Response(status_code=204)
