"""Accepting a send, as a declared sequence of verb-named guard steps.

:data:`STEPS` is the order :func:`gateway.sending.submit.enqueue` runs them in,
all inside one transaction.  Every step has one signature, ``step(conn,
submission) -> Flow``: it reads and extends the :class:`Submission`, and
either lets the request go on (``Flow.CONTINUE``), finds nothing left to do
(``Flow.DONE``: every recipient was skipped), or refuses the whole request
by raising :class:`QuotaExceeded` (the transaction rolls back, nothing is
kept).  A recipient a step will not mail is recorded with a
:class:`SkipReason`, never silently dropped.

Steps that only decide (check recipients, render, track links, compose and
sign) touch no database: ``conn`` is there for the uniform signature, and
their unit tests pass ``None``.  The steps that read or write call
:mod:`storage` functions, one per statement.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from gateway.addresses import normalise
from gateway.bounces.verp import verp_address
from gateway.ingest.parse import content_hash
from gateway.org.plans import daily_limit
from gateway.receive.mailboxes import sharing
from gateway.records.validation import NAME_FIELDS, address_problem, name_problem
from gateway.sending import quota as rules
from gateway.sending.compose import attachment_part, compose, make_message_id
from gateway.sending.dkim import sign as dkim_sign
from gateway.sending.extras import Attachment, CcEntry, thread_references, usable_id
from gateway.sending.tokens import new_verp_token
from storage import crm, filing, mailboxes, orgs, quotas, sends
from storage.events import EventType, NewEvent, append_sync
from storage.payloads import email_filed, quota_event
from storage.suppressions import suppressed_among
from templates.render import (
    Rendered,
    build_context,
    compile_template,
    current_limits,
    full_name,
)
from tracking.prepare import prepare_html, unsubscribe_link
from tracking.tokens import TokenSigner

#: Modules whose records carry an address we can send to.
RECIPIENT_MODULES = ("leads", "contacts")
#: Modules a request may name: a deal is mailed at its contact (the copy is filed on both).
REQUEST_MODULES = (*RECIPIENT_MODULES, "deals")
#: How many local days ahead ``defer_excess`` may book a bulk send.
MAX_DEFER_DAYS = 31


class SkipReason(StrEnum):
    """Why one recipient of an accepted request gets no mail (the API's ``reason``)."""

    UNSUPPORTED_MODULE = "unsupported_module"
    NOT_FOUND = "not_found"
    NO_EMAIL = "no_email"
    INVALID_ADDRESS = "invalid_address"  # shown with why: ``invalid_address:The part …``
    INVALID_NAME = "invalid_name"  # a line break in a name would break the To: header
    SUPPRESSED = "suppressed"  # shown with the suppression's reason: ``suppressed:bounce``
    MODULE_MISMATCH = "module_mismatch"
    ADDRESS_NOT_DELIVERABLE = "address_not_deliverable"
    DUPLICATE = "duplicate"


class RecipientProblem(ValueError):
    """A recipient the request cannot mean (a deal without a contact): the whole request is 422."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MessageTooLarge(ValueError):
    """The composed message exceeds the deployment's maximum message size (the API's 413)."""


class Flow(Enum):
    """What a step tells the sequence: go on, or stop with what has been decided."""

    CONTINUE = "continue"
    DONE = "done"


class QuotaExceeded(Exception):
    """The send does not fit in the day's quota (and was not allowed to spill over)."""

    def __init__(self, kind: str, used: int, limit: int, requested: int, resets_at: datetime):
        self.kind, self.used, self.limit = kind, used, limit
        self.requested, self.resets_at = requested, resets_at
        left = max(limit - used, 0)
        super().__init__(
            f"daily {kind} quota exceeded: {requested} requested, {left} of {limit} left today"
            f"; it resets at {resets_at.isoformat()}"
        )


@dataclass(frozen=True, slots=True)
class Content:
    """What to send: a template's saved version, or inline parts (``template_id`` None)."""

    subject: str
    html: str
    text: str | None = None
    header: str | None = None
    footer: str | None = None
    module: str | None = None  # a template's module; inline content fits any recipient
    template_id: int | None = None
    template_version: int | None = None


@dataclass(frozen=True, slots=True)
class Signer:
    """Where and how outbound mail is addressed and signed (from the settings)."""

    mail_domain: str
    public_url: str
    #: Signs the open/click/unsubscribe tokens the ``/t`` and ``/u`` endpoints verify.
    tracker: TokenSigner
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """The filed message a send answers (``in_reply_to``), as the sender may see it."""

    pk: int
    message_id: str | None  # bare, as filed; None when it had none we can quote
    references: tuple[str, ...]
    subject: str
    records: tuple[tuple[str, int], ...]  # where it is filed; the reply is filed there too


@dataclass
class SendRequest:
    org: dict[str, Any]
    user: dict[str, Any]
    kind: str  # individual | mass
    to: list[tuple[str, int]]
    content: Content
    from_email: str
    from_name: str
    defer_excess: bool = False
    source: str = "api"  # api | campaign (how the filed copy is labelled)
    campaign_id: int | None = None
    cc: list[CcEntry] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    reply: ReplyTarget | None = None
    #: A literal subject replacing the rendered one (a reply's ``Re: …``); never a template.
    subject: str | None = None
    #: The deployment's maximum message size; a larger composed message is refused.
    max_message_size: int | None = None


@dataclass(frozen=True, slots=True)
class CcRecipient:
    """One CC address every message of the request carries."""

    email: str  # as written (or as the record has it)
    name: str | None
    norm: str
    #: Named as a record: the copy is filed there too (a deal: the deal and its contact),
    #: as the dropbox files mail on every To and Cc record.
    records: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class CcSkipped:
    """A CC entry that gets no copy, and why (the API's ``cc_skipped``)."""

    entry: CcEntry
    reason: SkipReason
    detail: str | None = None
    email: str | None = None

    def as_json(self) -> dict[str, Any]:
        cc = self.entry.as_json()
        if self.email:
            cc["email"] = self.email
        reason = f"{self.reason}:{self.detail}" if self.detail else str(self.reason)
        return {"cc": cc, "reason": reason}


@dataclass(frozen=True, slots=True)
class Skipped:
    """A recipient that gets no mail, and why."""

    module: str
    record_id: int
    reason: SkipReason
    detail: str | None = None  # the suppression's own reason
    email: str | None = None

    def as_json(self) -> dict[str, Any]:
        to: dict[str, Any] = {"module": self.module, "id": self.record_id}
        if self.email:
            to["email"] = self.email
        reason = f"{self.reason}:{self.detail}" if self.detail else str(self.reason)
        return {"to": to, "reason": reason}


@dataclass
class Outgoing:
    """One message to one recipient, filled in step by step.

    A campaign's recipient may be a list member with no CRM record
    (``module``/``record_id`` None, ``record`` = the member's fields); it is
    then rendered through ``catalogue`` and no copy is filed.
    """

    module: str | None
    record_id: int | None
    record: dict[str, Any]
    #: The merge-field catalogue (module) to render with; the record's module when empty.
    catalogue: str = ""
    day: rules.QuotaDay | None = None
    scheduled: bool = False
    row: dict[str, Any] = field(default_factory=dict)  # the ``sends`` row
    rendered: Rendered | None = None
    sent_html: str = ""  # the recipient's (tracked) HTML; the filed copy keeps ``rendered``
    links: list[str] = field(default_factory=list)
    unsubscribe: tuple[str, str] = ("", "")  # (mailto, https)
    raw: bytes = b""
    to_name: str = ""
    #: Sent to a deal: the deal (with its ``account``); ``record`` is then its contact.
    deal: dict[str, Any] | None = None

    @property
    def send_id(self) -> int:
        return self.row["id"]


@dataclass
class Submission:
    """The typed context every step reads and extends."""

    request: SendRequest
    signer: Signer
    now: datetime
    records: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    suppressed: Mapping[str, str] = field(default_factory=dict)  # email_norm → reason
    outgoing: list[Outgoing] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)
    deals: dict[int, dict[str, Any]] = field(default_factory=dict)  # deal id → deal (+ contact)
    #: The CC every message carries.
    cc: list[CcRecipient] = field(default_factory=list)
    cc_skipped: list[CcSkipped] = field(default_factory=list)
    #: Attachment parts, built once for every message of the request.
    attachment_parts: list[bytes] = field(default_factory=list)


Step = Callable[[Connection, Submission], Flow]


# -- check recipients ----------------------------------------------------------------


def look_up_recipients(conn: Connection, sub: Submission) -> Flow:
    """Load the named records (To and CC; a deal with its contact; accounts) and which
    of their addresses, and the CC's, are suppressed.

    A deal without a contact, or whose contact has no address, cannot be mailed:
    :class:`RecipientProblem` refuses the request (the caller named it on purpose).
    """
    req = sub.request
    org_id = req.org["id"]
    named = [*req.to, *((c.module, c.record_id) for c in req.cc if c.module)]
    deal_ids = [rid for m, rid in named if m == "deals"]
    if deal_ids:
        sub.deals = crm.records_by_ids(conn, "deals", org_id, deal_ids)
        named += [("contacts", d["contact_id"]) for d in sub.deals.values() if d["contact_id"]]
    for module in RECIPIENT_MODULES:
        ids = [rid for m, rid in named if m == module]
        if ids:
            for rid, row in crm.records_by_ids(conn, module, org_id, ids).items():
                sub.records[(module, rid)] = row
    to_deals = {rid for m, rid in req.to if m == "deals"}
    for deal_id, deal in sub.deals.items():
        contact = sub.records.get(("contacts", deal["contact_id"] or 0))
        deal["contact"] = contact
        if deal_id not in to_deals:  # a CC deal that cannot be mailed is only skipped
            continue
        if contact is None:
            raise RecipientProblem(
                "deal_without_contact", f"deal {deal_id} has no contact to send the mail to"
            )
        if not contact.get("email_norm"):
            raise RecipientProblem(
                "deal_contact_without_email",
                f"the contact of deal {deal_id} (contact {contact['id']}) has no email address",
            )
    _attach_accounts(conn, org_id, [r for (m, _), r in sub.records.items() if m == "contacts"])
    _attach_accounts(conn, org_id, list(sub.deals.values()))
    emails = [r["email_norm"] for r in sub.records.values() if r.get("email_norm")]
    emails += [n for c in req.cc if c.email and (n := normalise(c.email))]
    sub.suppressed = suppressed_among(conn, org_id, emails)
    return Flow.CONTINUE


def _attach_accounts(conn: Connection, org_id: int, rows: list[dict[str, Any]]) -> None:
    """Put each row's account (``account_id``) on it as ``account`` (merge fields reach it)."""
    ids = {r["account_id"] for r in rows if r.get("account_id")}
    if ids:
        accounts = crm.records_by_ids(conn, "accounts", org_id, ids)
        for r in rows:
            if r.get("account_id"):
                r["account"] = accounts.get(r["account_id"])


def deliverable(email: str) -> bool:
    """An address an ASCII-only relay session can carry (no SMTPUTF8 local part)."""
    local, at, domain = email.rpartition("@")
    if not at or not local or not local.isascii():
        return False
    try:
        domain.encode("idna")
    except UnicodeError:
        return False
    return True


def skip_reason(
    module: str,
    record: Mapping[str, Any] | None,
    *,
    suppressed: Mapping[str, str],
    content_module: str | None,
    seen: set[str],
) -> SkipReason | None:
    """Why this recipient gets no mail, or None; the first reason that applies wins.

    A record mail cannot carry (an invalid address, a line break in a name)
    is skipped here, before any quota is booked, rather than failing the
    composer and with it every other recipient of the request.
    """
    if module not in RECIPIENT_MODULES:
        return SkipReason.UNSUPPORTED_MODULE
    if record is None:
        return SkipReason.NOT_FOUND
    if not record.get("email_norm"):
        return SkipReason.NO_EMAIL
    if record["email_norm"] in suppressed:
        return SkipReason.SUPPRESSED
    if content_module and content_module != module:
        return SkipReason.MODULE_MISMATCH
    if address_problem(record["email"]):
        return SkipReason.INVALID_ADDRESS
    if _name_problem(record):
        return SkipReason.INVALID_NAME
    if not deliverable(record["email"]):
        return SkipReason.ADDRESS_NOT_DELIVERABLE
    if record["email_norm"] in seen:
        return SkipReason.DUPLICATE
    return None


def _name_problem(record: Mapping[str, Any]) -> str | None:
    for key in NAME_FIELDS:
        problem = name_problem(record.get(key) or "")
        if problem:
            return f"{key} {problem}"
    return None


def skip_detail(
    reason: SkipReason, record: Mapping[str, Any], suppressed: Mapping[str, str]
) -> str | None:
    """What the API shows after the reason: the suppression's reason, or what is invalid."""
    if reason is SkipReason.SUPPRESSED:
        return suppressed[record["email_norm"]]
    if reason is SkipReason.INVALID_ADDRESS:
        return address_problem(record["email"])
    if reason is SkipReason.INVALID_NAME:
        return _name_problem(record)
    return None


def _deal_catalogue(content_module: str | None) -> str | None:
    """The merge fields a deal's mail renders with: a deals template (or inline content)
    as the deal, a contacts template as its contact; None: any other template does not fit."""
    if content_module in (None, "deals"):
        return "deals"
    return "contacts" if content_module == "contacts" else None


def check_recipients(conn: Connection | None, sub: Submission) -> Flow:
    """Keep each deliverable, unsuppressed recipient once, in the order given; skip the rest.

    A deal is checked as its contact (suppression, address, duplicates).
    """
    seen: set[str] = set()
    content_module = sub.request.content.module
    for module, rid in sub.request.to:
        deal = sub.deals.get(rid) if module == "deals" else None
        catalogue = ""
        if deal is not None:
            record, check_module = deal["contact"], "contacts"
            catalogue = _deal_catalogue(content_module) or ""
            fits = None if catalogue else content_module
        else:
            record, check_module, fits = sub.records.get((module, rid)), module, content_module
            if module == "deals":  # a deal that does not exist (in this org)
                check_module = "contacts"
        reason = skip_reason(
            check_module, record, suppressed=sub.suppressed, content_module=fits, seen=seen
        )
        if deal is not None and not catalogue and reason is None:
            reason = SkipReason.MODULE_MISMATCH
        if reason is None:
            seen.add(record["email_norm"])
            out = Outgoing(check_module, record["id"] if deal else rid, record, catalogue=catalogue)
            out.deal = deal
            sub.outgoing.append(out)
            continue
        detail = skip_detail(reason, record, sub.suppressed) if record else None
        email = (record or {}).get("email")
        sub.skipped.append(Skipped(module, rid, reason, detail=detail, email=email))
    if sub.outgoing:
        check_cc(sub, seen)
    return Flow.CONTINUE if sub.outgoing else Flow.DONE


def check_cc(sub: Submission, to_addresses: set[str]) -> None:
    """The CC every message carries: each address once, not a To address, not suppressed.

    A CC that cannot be mailed is dropped and named in ``cc_skipped``; the
    message still goes to everyone else.
    """
    seen = set(to_addresses)
    for entry in sub.request.cc:
        name: str | None = entry.name
        records: tuple[tuple[str, int], ...] = ()
        if entry.module is not None:
            record = sub.records.get((entry.module, entry.record_id or 0))
            if record is not None:
                records = ((entry.module, record["id"]),)
            deal = sub.deals.get(entry.record_id or 0) if entry.module == "deals" else None
            if deal is not None:  # mailed at its contact, filed on both
                record = deal["contact"] or {}
                records = (("deals", deal["id"]), ("contacts", record.get("id", 0)))
            if record is None or not record.get("email_norm"):
                reason = SkipReason.NOT_FOUND if record is None else SkipReason.NO_EMAIL
                sub.cc_skipped.append(CcSkipped(entry, reason))
                continue
            email, norm = record["email"], record["email_norm"]
            name = full_name(
                record.get("first_name"), record.get("last_name"), sub.request.org["locale"]
            )
        else:
            email, norm = entry.email or "", normalise(entry.email) or ""
        reason = None
        if norm in sub.suppressed:
            reason = SkipReason.SUPPRESSED
        elif address_problem(email):
            reason = SkipReason.INVALID_ADDRESS
        elif name and name_problem(name):
            reason = SkipReason.INVALID_NAME
        elif not deliverable(email):
            reason = SkipReason.ADDRESS_NOT_DELIVERABLE
        elif norm in seen:
            reason = SkipReason.DUPLICATE
        if reason is not None:
            detail = {
                SkipReason.SUPPRESSED: sub.suppressed.get(norm),
                SkipReason.INVALID_ADDRESS: address_problem(email),
            }.get(reason)
            sub.cc_skipped.append(CcSkipped(entry, reason, detail=detail, email=email))
            continue
        seen.add(norm)
        sub.cc.append(CcRecipient(email, name or None, norm, records))


# -- reserve quota -------------------------------------------------------------------


def book_quota(
    conn: Connection,
    org: Mapping[str, Any],
    kind: str,
    at: datetime,
    n: int,
    *,
    defer_excess: bool,
    events: list[NewEvent],
) -> list[rules.QuotaDay]:
    """Book ``n`` messages on the org's ``kind`` counter of the day of ``at``; the day of each.

    Without ``defer_excess`` all ``n`` fit that day or :class:`QuotaExceeded` is
    raised (nothing booked once the transaction rolls back); with it, what does
    not fit spills over to the following days (at most :data:`MAX_DEFER_DAYS`).
    Appends ``quota.warning`` (once a day at 80 %) and ``quota.exhausted`` (at
    100 %) to ``events``.  The send API and campaigns both book through here.
    """
    tz = ZoneInfo(org["timezone"])
    org_id = org["id"]
    users = orgs.active_users(conn, org_id)
    limit = daily_limit(kind, org["plan"], users, org["mass_addon"])
    first = rules.quota_day(at, tz)
    day = first
    schedule: list[rules.QuotaDay] = []
    remaining = n
    for _ in range(MAX_DEFER_DAYS if defer_excess else 1):
        got = quotas.reserve(conn, org_id, kind, day.day, remaining, limit, partial=defer_excess)
        if got.granted:
            schedule += [day] * got.granted
            remaining -= got.granted
            events += _quota_events(conn, org_id, kind, day, got, limit)
        if remaining == 0:
            break
        if not schedule and not defer_excess:
            break
        day = day.next(tz)
    if remaining:
        used = quotas.used(conn, org_id, kind, first.day)
        raise QuotaExceeded(kind, used, limit, n, first.resets_at)
    return schedule


def reserve_quota(conn: Connection, sub: Submission) -> Flow:
    """Book every message on today's counter, or spill over day by day when allowed.

    Refuses the whole request (:class:`QuotaExceeded`) when it does not fit;
    emits ``quota.warning`` once a day at 80 % and ``quota.exhausted`` at 100 %.
    """
    req = sub.request
    today = rules.quota_day(sub.now, ZoneInfo(req.org["timezone"]))
    # Each CC recipient counts as a To recipient does: one message to 1 To + 2 CC books 3.
    per_message = 1 + len(sub.cc)
    schedule = book_quota(
        conn,
        req.org,
        req.kind,
        sub.now,
        len(sub.outgoing) * per_message,
        defer_excess=req.defer_excess,
        events=sub.events,
    )
    for i, out in enumerate(sub.outgoing):
        booked = schedule[(i + 1) * per_message - 1]  # due once all its recipients are booked
        out.day, out.scheduled = booked, booked.day != today.day
    return Flow.CONTINUE


def _quota_events(
    conn: Connection,
    org_id: int,
    kind: str,
    day: rules.QuotaDay,
    got: quotas.Reservation,
    limit: int,
) -> list[NewEvent]:
    fields = {"kind": kind, "day": day.day, "used": got.after, "limit": limit}
    out = []
    if got.after >= rules.warning_threshold(limit) and quotas.claim_warning(
        conn, org_id, kind, day.day
    ):
        out.append(quota_event(EventType.QUOTA_WARNING, org_id, resets_at=day.resets_at, **fields))
    if rules.crossings(got.before, got.after, limit).exhausted:
        out.append(
            quota_event(EventType.QUOTA_EXHAUSTED, org_id, resets_at=day.resets_at, **fields)
        )
    return out


# -- create sends --------------------------------------------------------------------


def create_sends(conn: Connection, sub: Submission) -> Flow:
    """Insert one queued ``sends`` row per message; a later day's start is its due time."""
    req, now = sub.request, sub.now
    for out in sub.outgoing:
        out.row = {
            "org_id": req.org["id"],
            "user_id": req.user["id"],
            "kind": req.kind,
            "module": out.module,
            "record_id": out.record_id,
            "to_email": out.record["email"],
            "from_email": req.from_email,
            "subject": "",
            "template_id": req.content.template_id,
            "template_version": req.content.template_version,
            "campaign_id": req.campaign_id,
            "message_id": make_message_id(sub.signer.mail_domain)[1:-1],
            "verp_token": new_verp_token(),
            "links": [],
            "cc_emails": [c.email for c in sub.cc],
            "reply_to_pk": req.reply.pk if req.reply else None,
            "deal_id": out.deal["id"] if out.deal else None,
            "state": "queued",
            "attempts": 0,
            "status": "queued",
            "next_attempt_at": out.day.starts_at if out.scheduled else now,
            "created_at": now,
        }
    ids = sends.insert_sends(conn, [out.row for out in sub.outgoing])
    for out, sid in zip(sub.outgoing, ids, strict=True):
        out.row["id"] = sid
    return Flow.CONTINUE


# -- render, track links, compose and sign (pure) ------------------------------------


def unsubscribe_targets(signer: Signer, send_id: int, verp_token: str) -> tuple[str, str]:
    """(mailto, https) for ``List-Unsubscribe``: the VERP address and the signed ``/u`` page."""
    https = unsubscribe_link(signer.public_url, signer.tracker, send_id)
    mailto = f"mailto:{verp_address(verp_token, signer.mail_domain)}?subject={quote('unsubscribe')}"
    return mailto, https


def render(conn: Connection | None, sub: Submission) -> Flow:
    """Merge each recipient's fields into the content (the unsubscribe link is per send)."""
    req, c = sub.request, sub.request.content
    compiled: dict[str, Any] = {}
    # One time limit for the whole request, not one per message: on PostgreSQL this
    # step runs on the event loop (run_write), and 5,000 near-limit renders must not
    # hold it for minutes.  Ordinary templates render 5,000 messages in well under it.
    deadline = time.monotonic() + current_limits().seconds
    for out in sub.outgoing:
        module = out.catalogue or out.module
        if module not in compiled:
            compiled[module] = compile_template(
                c.subject, c.html, c.text, c.header, c.footer, module
            )
        out.unsubscribe = unsubscribe_targets(sub.signer, out.send_id, out.row["verp_token"])
        if module == "deals" and out.deal is not None:
            record = out.deal
            related = {"account": out.deal.get("account"), "contact": out.record}
        else:
            record, related = out.record, {"account": out.record.get("account")}
        context = build_context(
            module, record, related, req.user, req.org, unsubscribe_url=out.unsubscribe[1]
        )
        out.rendered = compiled[module].render(context, deadline=deadline)
        if req.subject is not None:  # a reply's "Re: …": literal, never a template
            out.rendered = dataclasses.replace(out.rendered, subject=req.subject)
        out.sent_html = out.rendered.html
        out.row["subject"] = out.rendered.subject
        out.to_name = full_name(
            out.record.get("first_name"), out.record.get("last_name"), req.org["locale"]
        )
    return Flow.CONTINUE


def track_links(conn: Connection | None, sub: Submission) -> Flow:
    """Rewrite the recipient's HTML for open and click tracking; the filed copy stays clean."""
    skip = frozenset(sub.request.org.get("tracking_skip_domains") or ())
    for out in sub.outgoing:
        if not out.rendered.html:
            continue
        out.sent_html, out.links, _ = prepare_html(
            out.rendered.html,
            send_id=out.send_id,
            signer=sub.signer.tracker,
            public_url=sub.signer.public_url,
            skip_domains=skip,
        )
        out.row["links"] = out.links
    return Flow.CONTINUE


def compose_and_sign(conn: Connection | None, sub: Submission) -> Flow:
    """Build each message's bytes (one-click unsubscribe for mass mail) and DKIM-sign them.

    A header the composer refuses raises ``ValueError`` (the API answers 422); a
    message over the deployment's maximum size (attachments and signature
    included) raises :class:`MessageTooLarge` (413), and nothing is kept.
    """
    req, signer = sub.request, sub.signer
    if req.attachments and not sub.attachment_parts:
        sub.attachment_parts = [
            attachment_part(a.filename, a.content_type, a.data) for a in req.attachments
        ]
    in_reply_to, references = thread_headers(req.reply)
    for out in sub.outgoing:
        mailto, https = out.unsubscribe
        raw = compose(
            from_addr=req.from_email,
            from_name=req.from_name or None,
            to_addr=out.record["email"],
            to_name=out.to_name or None,
            subject=out.rendered.subject,
            html=out.sent_html,
            text=out.rendered.text,
            message_id=out.row["message_id"],
            headers={"X-Mailgate-Send": str(out.send_id)},
            list_unsubscribe=(mailto, https),
            one_click=req.kind == "mass" and https.startswith("https://"),
            date=sub.now,
            cc=[(c.email, c.name) for c in sub.cc],
            in_reply_to=in_reply_to,
            references=references,
            attachments=sub.attachment_parts,
        )
        if signer.dkim_key and signer.dkim_domain and signer.dkim_selector:
            raw = dkim_sign(
                raw,
                selector=signer.dkim_selector,
                domain=signer.dkim_domain,
                private_key_pem=signer.dkim_key,
            )
        if req.max_message_size is not None and len(raw) > req.max_message_size:
            raise MessageTooLarge(
                f"the message would be {len(raw)} bytes, over the maximum message size "
                f"of {req.max_message_size} bytes (attachments included)"
            )
        out.raw = raw
    return Flow.CONTINUE


def thread_headers(reply: ReplyTarget | None) -> tuple[str | None, list[str]]:
    """(In-Reply-To, References) of a reply, bare ids; nothing when there is no quotable id."""
    if reply is None:
        return None, []
    refs = thread_references(list(reply.references), reply.message_id)
    parent = reply.message_id if usable_id(reply.message_id) else None
    return parent, refs


# -- file copies, emit ---------------------------------------------------------------


def filed_on(sub: Submission, out: Outgoing) -> list[tuple[str, int]]:
    """The records a copy is filed on: its deal, its recipient, the CC records, and the
    original's records when it is a reply — each once, in that order."""
    records: list[tuple[str, int]] = []
    if out.deal is not None:
        records.append(("deals", out.deal["id"]))
    records.append((out.module, out.record_id))
    for cc in sub.cc:
        records += cc.records
    if sub.request.reply is not None:
        records += sub.request.reply.records
    return list(dict.fromkeys(records))


def shared_copy(sub: Submission, out: Outgoing, excluded: list[str]) -> bool:
    """False when the To or a CC sits in one of the org's excluded domains.

    Seed 004 excludes those domains from sharing, not from filing, and that
    outranks "mail sent from the CRM is public": only the sender sees the copy
    (and the send), as ingest files such mail from the dropbox or a mailbox.
    """
    to = out.record.get("email_norm") or out.record.get("email")
    return not sharing.involves_excluded((to, *(c.norm for c in sub.cc)), excluded)


def filed_copy(sub: Submission, out: Outgoing, shared: bool = True) -> dict[str, Any]:
    """The ``messages`` row of the copy filed on the record (untracked HTML)."""
    req = sub.request
    in_reply_to, references = thread_headers(req.reply)
    return {
        "org_id": req.org["id"],
        "user_id": req.user["id"],
        "message_id": out.row["message_id"],
        "content_hash": content_hash(out.raw),
        "subject": out.rendered.subject,
        "from_addr": req.from_email.lower(),
        "from_name": req.from_name,
        "to_addrs": [{"name": out.to_name, "email": out.record["email_norm"]}],
        "cc_addrs": [{"name": c.name, "email": c.norm} for c in sub.cc],
        "date": sub.now,
        "direction": "outgoing",
        "source": req.source,
        "in_reply_to": in_reply_to,
        "references": references,
        "text_body": out.rendered.text,
        "html_body": out.rendered.html,
        "defects": [],
        "size": len(out.raw),
        "send_id": out.send_id,
        "raw": out.raw,
        "shared": shared,
    }


def file_copies(conn: Connection, sub: Submission) -> Flow:
    """Store the composed bytes on the sends, and file a copy of each on its record.

    A recipient without a CRM record (a campaign's list member) gets no copy.
    """
    req = sub.request
    org_id = req.org["id"]
    sends.set_composed(
        conn, [(out.send_id, out.row["subject"], out.raw, out.links) for out in sub.outgoing]
    )
    linked = [out for out in sub.outgoing if out.module and out.record_id is not None]
    excluded = mailboxes.excluded_by_org(conn, [org_id]).get(org_id, []) if linked else []
    shared = [shared_copy(sub, out, excluded) for out in linked]
    pks = filing.insert_messages(
        conn, [filed_copy(sub, out, s) for out, s in zip(linked, shared, strict=True)]
    )
    records = [filed_on(sub, out) for out in linked]
    filing.insert_links(
        conn,
        [
            {"org_id": org_id, "message_id": pk, "module": module, "record_id": rid}
            for pk, on in zip(pks, records, strict=True)
            for module, rid in on
        ],
    )
    sub.events += [
        email_filed(
            org_id,
            message_pk=pk,
            header_message_id=out.row["message_id"],
            user_id=req.user["id"],
            direction="outgoing",
            source=req.source,
            subject=out.row["subject"],
            records=on,
            send_id=out.send_id,
            shared=is_shared,
            at=sub.now,
        )
        for pk, out, on, is_shared in zip(pks, linked, records, shared, strict=True)
    ]
    return Flow.CONTINUE


def emit(conn: Connection, sub: Submission) -> Flow:
    """Append the request's events (quota, filed copies) last, just before commit."""
    append_sync(conn, sub.events)
    return Flow.DONE


#: What the campaign runner runs for recipients already chosen and paid for at ``send``.
COMPOSE_STEPS: tuple[Step, ...] = (
    create_sends,
    render,
    track_links,
    compose_and_sign,
    file_copies,
    emit,
)

#: The order a send request is accepted in; ``enqueue`` runs them until one says DONE.
STEPS: tuple[Step, ...] = (look_up_recipients, check_recipients, reserve_quota, *COMPOSE_STEPS)
