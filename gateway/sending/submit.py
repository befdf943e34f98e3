"""Accepting a send: recipients, suppressions, quota, composing, filing — one transaction.

:func:`enqueue` runs as synchronous SQL inside ``Database.run_write``.  The
quota reservation, the send rows with their composed bytes, the filed copy
of each message and the events all commit together or not at all, so a 202
from the API means the mail will go out (the relay worker finds it in the
database even after a restart) and a refusal leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select

from gateway.bounces.verp import verp_address
from gateway.ingest.parse import content_hash
from gateway.sending import quota as rules
from gateway.sending.compose import compose, make_message_id
from gateway.sending.dkim import sign as dkim_sign
from gateway.sending.tokens import new_verp_token
from storage import filing
from storage import quotas as quota_store
from storage import sends as send_store
from storage.events import NewEvent, append_sync
from storage.schema import accounts, contacts, leads, users
from storage.suppressions import suppressed_among
from templates.render import build_context, compile_template, full_name
from tracking.prepare import prepare_html, unsubscribe_link
from tracking.tokens import TokenSigner

RECIPIENT_MODULES = {"leads": leads, "contacts": contacts}
#: How many local days ahead ``defer_excess`` may book a bulk send.
MAX_DEFER_DAYS = 31


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


@dataclass
class Accepted:
    sends: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def _recipients(
    conn: Connection, org_id: int, to: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], dict[str, Any]]:
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for module, table in RECIPIENT_MODULES.items():
        ids = sorted({rid for m, rid in to if m == module})
        if not ids:
            continue
        q = select(table).where(table.c.org_id == org_id, table.c.id.in_(ids))
        for row in conn.execute(q).mappings():
            found[(module, row["id"])] = dict(row)
    account_ids = {
        r["account_id"] for (m, _), r in found.items() if m == "contacts" and r["account_id"]
    }
    if account_ids:
        q = select(accounts).where(accounts.c.org_id == org_id, accounts.c.id.in_(account_ids))
        by_id = {r["id"]: dict(r) for r in conn.execute(q).mappings()}
        for (m, _), r in found.items():
            if m == "contacts" and r["account_id"]:
                r["account"] = by_id.get(r["account_id"])
    return found


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


def active_users(conn: Connection, org_id: int) -> int:
    q = select(func.count()).select_from(users).where(users.c.org_id == org_id, users.c.active)
    return conn.execute(q).scalar_one()


def limit_for(conn: Connection, org: dict[str, Any], kind: str) -> int:
    return rules.daily_limit(kind, org["plan"], active_users(conn, org["id"]), org["mass_addon"])


def _reserve(
    conn: Connection, req: SendRequest, n: int, now: datetime, new_events: list[NewEvent]
) -> list[tuple[rules.QuotaDay, int]]:
    """Book ``n`` sends on today's counter, or spill over day by day when allowed."""
    tz = ZoneInfo(req.org["timezone"])
    org_id, kind = req.org["id"], req.kind
    limit = limit_for(conn, req.org, kind)
    day = rules.quota_day(now, tz)
    booked: list[tuple[rules.QuotaDay, int]] = []
    remaining = n
    for _ in range(MAX_DEFER_DAYS if req.defer_excess else 1):
        got = quota_store.reserve(
            conn, org_id, kind, day.day, remaining, limit, partial=req.defer_excess
        )
        if got.granted:
            booked.append((day, got.granted))
            remaining -= got.granted
            _quota_events(conn, req, day, got, limit, new_events)
        if remaining == 0:
            return booked
        if not booked and not req.defer_excess:
            break
        day = day.next(tz)
    today = rules.quota_day(now, tz)
    raise QuotaExceeded(
        kind,
        quota_store.used(conn, org_id, kind, today.day),
        limit,
        n,
        today.resets_at,
    )


def _quota_events(
    conn: Connection,
    req: SendRequest,
    day: rules.QuotaDay,
    got: quota_store.Reservation,
    limit: int,
    new_events: list[NewEvent],
) -> None:
    crossed = rules.crossings(got.before, got.after, limit)
    data = {
        "kind": req.kind,
        "day": day.day,
        "used": got.after,
        "limit": limit,
        "resets_at": day.resets_at.isoformat(),
    }
    warn_at = -(-limit * 8 // 10)
    if got.after >= warn_at and quota_store.claim_warning(conn, req.org["id"], req.kind, day.day):
        new_events.append(NewEvent(req.org["id"], "quota.warning", data))
    if crossed.exhausted:
        new_events.append(NewEvent(req.org["id"], "quota.exhausted", data))


def _unsubscribe(signer: Signer, send_id: int, verp_token: str) -> tuple[str, str]:
    https = unsubscribe_link(signer.public_url, signer.tracker, send_id)
    mailto = f"mailto:{verp_address(verp_token, signer.mail_domain)}?subject={quote('unsubscribe')}"
    return mailto, https


def enqueue(conn: Connection, req: SendRequest, signer: Signer, now: datetime) -> Accepted:
    """Queue one message per deliverable recipient; refuse whole when over quota."""
    org_id = req.org["id"]
    result = Accepted()
    records = _recipients(conn, org_id, req.to)
    emails = [r["email_norm"] for r in records.values() if r.get("email_norm")]
    suppressed = suppressed_among(conn, org_id, emails)
    targets: list[tuple[str, int, dict[str, Any]]] = []
    seen_emails: set[str] = set()
    for module, rid in req.to:
        to = {"module": module, "id": rid}
        record = records.get((module, rid))
        reason = None
        if module not in RECIPIENT_MODULES:
            reason = "unsupported_module"
        elif record is None:
            reason = "not_found"
        elif not record.get("email_norm"):
            reason = "no_email"
        elif record["email_norm"] in suppressed:
            reason = f"suppressed:{suppressed[record['email_norm']]}"
        elif req.content.module and req.content.module != module:
            reason = "module_mismatch"
        elif not deliverable(record["email"]):
            reason = "address_not_deliverable"
        elif record["email_norm"] in seen_emails:
            reason = "duplicate"
        if reason:
            if record and record.get("email"):
                to["email"] = record["email"]
            result.skipped.append({"to": to, "reason": reason})
            continue
        seen_emails.add(record["email_norm"])
        targets.append((module, rid, record))
    if not targets:
        return result

    new_events: list[NewEvent] = []
    booked = _reserve(conn, req, len(targets), now, new_events)
    schedule: list[rules.QuotaDay] = [day for day, count in booked for _ in range(count)]
    today = schedule[0].day if schedule else None

    rows = []
    for (module, rid, record), day in zip(targets, schedule, strict=True):
        rows.append(
            {
                "org_id": org_id,
                "user_id": req.user["id"],
                "kind": req.kind,
                "module": module,
                "record_id": rid,
                "to_email": record["email"],
                "from_email": req.from_email,
                "subject": "",
                "template_id": req.content.template_id,
                "template_version": req.content.template_version,
                "campaign_id": req.campaign_id,
                "message_id": make_message_id(signer.mail_domain)[1:-1],
                "verp_token": new_verp_token(),
                "links": [],
                "state": "queued",
                "attempts": 0,
                "status": "queued",
                "next_attempt_at": now if day.day == today else day.starts_at,
                "created_at": now,
            }
        )
    ids = send_store.insert_sends(conn, rows)

    raws: list[tuple[int, bytes]] = []
    messages: list[dict[str, Any]] = []
    for sid, row, (module, rid, record), day in zip(ids, rows, targets, schedule, strict=True):
        c = req.content
        compiled = compile_template(c.subject, c.html, c.text, c.header, c.footer, module)
        mailto, https = _unsubscribe(signer, sid, row["verp_token"])
        context = build_context(
            module,
            record,
            {"account": record.get("account")},
            req.user,
            req.org,
            unsubscribe_url=https,
        )
        rendered = compiled.render(context)
        sent_html, links = rendered.html, []
        if rendered.html:
            # The recipient's copy is tracked; the copy filed in the CRM is not.
            sent_html, links, _ = prepare_html(
                rendered.html,
                send_id=sid,
                signer=signer.tracker,
                public_url=signer.public_url,
                skip_domains=frozenset(req.org.get("tracking_skip_domains") or ()),
            )
        to_name = full_name(record.get("first_name"), record.get("last_name"), req.org["locale"])
        raw = compose(
            from_addr=req.from_email,
            from_name=req.from_name or None,
            to_addr=record["email"],
            to_name=to_name or None,
            subject=rendered.subject,
            html=sent_html,
            text=rendered.text,
            message_id=row["message_id"],
            headers={"X-Mailgate-Send": str(sid)},
            list_unsubscribe=(mailto, https),
            one_click=req.kind == "mass" and https.startswith("https://"),
            date=now,
        )
        if signer.dkim_key and signer.dkim_domain and signer.dkim_selector:
            raw = dkim_sign(
                raw,
                selector=signer.dkim_selector,
                domain=signer.dkim_domain,
                private_key_pem=signer.dkim_key,
            )
        row["id"], row["subject"], row["links"] = sid, rendered.subject, links
        raws.append((sid, raw))
        messages.append(
            {
                "org_id": org_id,
                "user_id": req.user["id"],
                "message_id": row["message_id"],
                "content_hash": content_hash(raw),
                "subject": rendered.subject,
                "from_addr": req.from_email.lower(),
                "from_name": req.from_name,
                "to_addrs": [{"name": to_name, "email": record["email_norm"]}],
                "cc_addrs": [],
                "date": now,
                "direction": "outgoing",
                "source": req.source,
                "in_reply_to": None,
                "references": [],
                "text_body": rendered.text,
                "html_body": rendered.html,
                "defects": [],
                "size": len(raw),
                "send_id": sid,
                "raw": raw,
            }
        )
        scheduled = day.day != today
        result.sends.append(
            {
                "id": sid,
                "to": {"module": module, "id": rid, "email": record["email"]},
                "status": "scheduled" if scheduled else "queued",
                "message_id": f"<{row['message_id']}>",
                **({"send_at": day.starts_at.isoformat()} if scheduled else {}),
            }
        )
    send_store.set_composed(
        conn,
        [
            (sid, row["subject"], raw, row["links"])
            for (sid, raw), row in zip(raws, rows, strict=True)
        ],
    )
    message_pks = filing.insert_messages(conn, messages)
    filing.insert_links(
        conn,
        [
            {"org_id": org_id, "message_id": pk, "module": module, "record_id": rid}
            for pk, (module, rid, _) in zip(message_pks, targets, strict=True)
        ],
    )
    for pk, row in zip(message_pks, rows, strict=True):
        new_events.append(
            NewEvent(
                org_id,
                "email.filed",
                {
                    "message_id": pk,
                    "header_message_id": row["message_id"],
                    "user_id": req.user["id"],
                    "direction": "outgoing",
                    "source": req.source,
                    "subject": row["subject"][:200],
                    "records": [{"module": row["module"], "id": row["record_id"]}],
                    "send_id": row["id"],
                },
                at=now,
            )
        )
    append_sync(conn, new_events)
    return result
