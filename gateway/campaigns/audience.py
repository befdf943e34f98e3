"""Who a campaign goes to: the lists' members, deduplicated, each kept or skipped with a reason.

A pure function over rows the caller has loaded (members, suppressions, the
CRM records their addresses match), so every rule is testable without a
database and the ``send`` transaction only reads and writes around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.records.validation import record_problem
from gateway.sending.steps import deliverable

#: Member statuses that end marketing mail to the address (set by the Campaigns → CRM consumer).
STOPPED = ("unsubscribed", "bounced", "complained")


class CampaignSkip(StrEnum):
    """Why a member of the campaign's lists gets no message (the ``send`` answer's ``reason``)."""

    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    NON_MARKETING = "non_marketing"  # non-marketing members never get marketing mail
    CONSENT_PENDING = "consent_pending"  # asked for consent, not given yet
    SUPPRESSED = "suppressed"  # shown with the suppression's reason: suppressed:bounce
    DO_NOT_MAIL = "do_not_mail"  # the linked CRM record says so
    INVALID_ADDRESS = "invalid_address"
    INVALID_NAME = "invalid_name"  # a line break in a name would break the To: header
    ADDRESS_NOT_DELIVERABLE = "address_not_deliverable"


@dataclass(frozen=True, slots=True)
class Chosen:
    """A member who will get the campaign, and the CRM record it is linked to (if any)."""

    member: Mapping[str, Any]
    module: str | None
    record_id: int | None


@dataclass
class Audience:
    chosen: list[Chosen] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"email", "reason"}


def link_of(
    member: Mapping[str, Any], crm: Mapping[str, tuple[str, int, bool]]
) -> tuple[str, int] | None:
    """The member's own CRM record, else a lead/contact of the org with its address."""
    if member.get("module") and member.get("record_id") is not None:
        return member["module"], member["record_id"]
    found = crm.get(member["email_norm"])
    return (found[0], found[1]) if found else None


def member_skip(
    member: Mapping[str, Any],
    link: tuple[str, int] | None,
    *,
    suppressed: Mapping[str, str],
    do_not_mail: set[tuple[str, int]],
) -> str | None:
    """Why this member gets no marketing mail, or None; the first rule that applies wins."""
    if member["status"] in STOPPED:
        return str(CampaignSkip(member["status"]))
    if member["subscription"] != "marketing":
        return CampaignSkip.NON_MARKETING
    if member["consent"] == "pending":
        return CampaignSkip.CONSENT_PENDING
    if member["email_norm"] in suppressed:
        return f"{CampaignSkip.SUPPRESSED}:{suppressed[member['email_norm']]}"
    if link is not None and link in do_not_mail:
        return CampaignSkip.DO_NOT_MAIL
    problem = record_problem(member)
    if problem is not None:
        return CampaignSkip.INVALID_ADDRESS if problem[0] == "email" else CampaignSkip.INVALID_NAME
    if not deliverable(member["email"]):
        return CampaignSkip.ADDRESS_NOT_DELIVERABLE
    return None


def choose(
    members: Sequence[Mapping[str, Any]],
    *,
    suppressed: Mapping[str, str],
    crm: Mapping[str, tuple[str, int, bool]],
    do_not_mail: set[tuple[str, int]],
) -> Audience:
    """One message per address: the first list's member wins (its ``list_id`` is kept).

    ``members`` come list by list in the campaign's order; a later list's
    member with an address already seen is neither chosen nor reported.
    """
    out = Audience()
    seen: set[str] = set()
    for member in members:
        if member["email_norm"] in seen:
            continue
        seen.add(member["email_norm"])
        link = link_of(member, crm)
        reason = member_skip(member, link, suppressed=suppressed, do_not_mail=do_not_mail)
        if reason is None:
            out.chosen.append(Chosen(member, *(link or (None, None))))
        else:
            out.skipped.append({"email": member["email"], "reason": str(reason)})
    return out
