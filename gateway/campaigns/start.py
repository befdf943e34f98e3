"""Sending a campaign: choose its recipients, book the mass quota, fix them, in one transaction.

:func:`start` runs inside ``Database.run_write``.  The campaign leaves
``draft`` first (a guarded UPDATE, so a second ``send`` finds nothing to do),
then its audience is chosen (:func:`gateway.campaigns.audience.choose`), the
quota is booked by the send path's own :func:`~gateway.sending.steps.book_quota`
(refused whole, or spread over the following days with ``defer_excess``) and
one ``campaign_recipients`` row is written per recipient.  A refusal raises
and the transaction rolls back: the campaign is a draft again and nothing
was booked.  The campaign runner composes the rows when they fall due.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from gateway.campaigns.audience import Audience, choose
from gateway.sending.steps import book_quota
from storage import campaigns as store
from storage.events import NewEvent, append_sync
from storage.suppressions import suppressed_among

#: What the mass quota is booked under.
KIND = "mass"


class NotFound(LookupError):
    """No such campaign in the org."""


class NotDraft(Exception):
    """The campaign was already sent (or scheduled, or cancelled)."""

    def __init__(self, status: str) -> None:
        self.status = status
        super().__init__(f"the campaign is {status}, not a draft")


@dataclass
class Started:
    """The ``send`` answer."""

    status: str
    recipients: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def not_registered_reason(register: dict[str, Any] | None) -> str:
    """What a recipient's registration column starts as: nothing asked, or no activity yet."""
    wanted = any(v for v in (register or {}).values())
    return "no_activity" if wanted else "not_requested"


def recipient_rows(
    campaign: dict[str, Any], audience: Audience, due: list[datetime], reason: str
) -> list[dict[str, Any]]:
    """One pending ``campaign_recipients`` row per chosen member, due when its day allows."""
    return [
        {
            "org_id": campaign["org_id"],
            "campaign_id": campaign["id"],
            "member_id": c.member["id"],
            "list_id": c.member["list_id"],
            "email": c.member["email"],
            "email_norm": c.member["email_norm"],
            "first_name": c.member["first_name"],
            "last_name": c.member["last_name"],
            "company": c.member["company"],
            "module": c.module,
            "record_id": c.record_id,
            "due_at": at,
            "status": "pending",
            "not_registered_reason": reason,
        }
        for c, at in zip(audience.chosen, due, strict=True)
    ]


def load_audience(conn: Connection, org_id: int, list_ids: list[int]) -> Audience:
    """The lists' members with what judges them (suppressions, CRM links), chosen."""
    members = store.audience(conn, org_id, list_ids)
    emails = [m["email_norm"] for m in members]
    crm = store.crm_matches(conn, org_id, [m["email_norm"] for m in members if not m["module"]])
    own = [(m["module"], m["record_id"]) for m in members if m["module"] and m["record_id"]]
    flagged = store.do_not_mail_records(conn, org_id, own)
    flagged |= {(module, rid) for module, rid, dnm in crm.values() if dnm}
    return choose(
        members,
        suppressed=suppressed_among(conn, org_id, emails),
        crm=crm,
        do_not_mail=flagged,
    )


def start(
    conn: Connection,
    org: dict[str, Any],
    campaign_id: int,
    now: datetime,
    send_at: datetime | None,
    defer_excess: bool,
) -> Started:
    """Fix the recipients and book their quota; raises NotFound, NotDraft or QuotaExceeded."""
    org_id = org["id"]
    campaign = store.get_campaign(conn, org_id, campaign_id)
    if campaign is None:
        raise NotFound(campaign_id)
    at = send_at if send_at is not None and send_at > now else now
    status = "scheduled" if at > now else "sending"
    if not store.update_campaign(conn, org_id, campaign_id, {"status": status}, status=("draft",)):
        raise NotDraft(campaign["status"])
    audience = load_audience(conn, org_id, list(campaign["list_ids"]))
    events: list[NewEvent] = []
    days = book_quota(
        conn, org, KIND, at, len(audience.chosen), defer_excess=defer_excess, events=events
    )
    due = [max(at, day.starts_at) for day in days]
    rows = recipient_rows(campaign, audience, due, not_registered_reason(campaign["register"]))
    store.insert_recipients(conn, rows)
    store.update_campaign(
        conn,
        org_id,
        campaign_id,
        {
            "send_at": at,
            "defer_excess": defer_excess,
            "recipients": len(rows),
            "skipped": len(audience.skipped),
            "started_at": now,
            "updated_at": now,
        },
        status=(status,),
    )
    append_sync(conn, events)
    return Started(status=status, recipients=len(rows), skipped=audience.skipped)
