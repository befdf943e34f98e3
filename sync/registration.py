"""The Campaigns → CRM rules, pure: what a send event means for its campaign recipient.

Three questions, each answered here without touching the database, so the
consumer (:mod:`sync.campaigns_to_crm`) only gathers inputs and writes answers:

- **What happened?** :func:`activity_of` turns a send event into an
  :class:`Activity`, or None when it counts for nothing: a machine open or
  click (a scanner, Apple's privacy proxy, a prefetch) is not a person and
  never moves a status or registers anybody; a deferral is not an outcome.
- **Where does the recipient stand?** :class:`RecipientStatus` is ordered:
  a recipient's status is the strongest activity so far
  (complained > unsubscribed > bounced > clicked > opened > sent > failed >
  queued > pending), so events applied in any order give the same status.
  A list member's own status (:class:`MemberStatus`) moves only on what ends
  a subscription: an unsubscribe, a complaint, a hard bounce.
- **Is the recipient registered in the CRM, and if not, why?** (seed 000,
  「一部の連絡先が、Zoho CRMに登録されていません。この理由は何ですか?」)
  :func:`decide_registration` evaluates, in this order: no target for this
  activity (``not_requested``), the recipient's list not configured for
  registration (``list_not_configured``), the address already belongs to a
  lead or contact (``already_in_crm``), a required field empty
  (``missing_fields``: last name, first name, email; company too for a
  contact); otherwise register into the target module.  ``no_activity`` is
  the sender's reason for a recipient nobody has opened or clicked for yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from storage.events import EventType


class Activity(StrEnum):
    """What a (human) send event says the recipient did, or what became of the message."""

    SENT = "sent"
    FAILED = "failed"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"


class RecipientStatus(StrEnum):
    """A campaign recipient's status, weakest first (the order is the precedence)."""

    PENDING = "pending"
    QUEUED = "queued"
    FAILED = "failed"
    SENT = "sent"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"

    @property
    def rank(self) -> int:
        return _RECIPIENT_ORDER.index(self)


_RECIPIENT_ORDER = tuple(RecipientStatus)


class MemberStatus(StrEnum):
    """A list member's status, weakest first: only what ends a subscription moves it."""

    SUBSCRIBED = "subscribed"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"
    COMPLAINED = "complained"


class NotRegistered(StrEnum):
    """Why a recipient was not registered in the CRM (``not_registered_reason``)."""

    NOT_REQUESTED = "not_requested"
    LIST_NOT_CONFIGURED = "list_not_configured"
    ALREADY_IN_CRM = "already_in_crm"
    MISSING_FIELDS = "missing_fields"
    NO_ACTIVITY = "no_activity"


#: The CRM modules a recipient can be registered into.
TARGET_MODULES = ("leads", "contacts")

#: The recipient's timestamp column each activity sets (first one wins).
TIMESTAMP_OF: dict[Activity, str] = {
    Activity.SENT: "sent_at",
    Activity.OPENED: "opened_at",
    Activity.CLICKED: "clicked_at",
    Activity.BOUNCED: "bounced_at",
    Activity.UNSUBSCRIBED: "unsubscribed_at",
    Activity.COMPLAINED: "complained_at",
}

#: Activities that stop mail to the address: written back as ``do_not_mail`` on CRM records.
DO_NOT_MAIL = frozenset({Activity.UNSUBSCRIBED, Activity.COMPLAINED})

#: Activities that may register a recipient, and the campaign ``register`` key of each.
REGISTERING = frozenset({Activity.OPENED, Activity.CLICKED})

_SIMPLE: dict[str, Activity] = {
    EventType.EMAIL_SENT: Activity.SENT,
    EventType.EMAIL_FAILED: Activity.FAILED,
    EventType.EMAIL_BOUNCED: Activity.BOUNCED,
    EventType.EMAIL_COMPLAINED: Activity.COMPLAINED,
    EventType.EMAIL_UNSUBSCRIBED: Activity.UNSUBSCRIBED,
}
_TRACKED: dict[str, Activity] = {
    EventType.EMAIL_OPENED: Activity.OPENED,
    EventType.EMAIL_CLICKED: Activity.CLICKED,
}


def activity_of(event_type: str, data: Mapping[str, Any]) -> Activity | None:
    """The activity a send event records, or None when it must count for nothing.

    Opens and clicks count only with ``verdict == "human"``: anything else
    (``machine``, or a verdict missing from a malformed event) is ignored.
    """
    if event_type in _SIMPLE:
        return _SIMPLE[event_type]
    if event_type in _TRACKED and data.get("verdict") == "human":
        return _TRACKED[event_type]
    return None


def stronger_status(current: str | None, new: RecipientStatus) -> RecipientStatus:
    """The stronger of a stored status and ``new`` (statuses only ever move up).

    An unknown stored status (a newer writer's) counts as the weakest, so an
    activity still moves it rather than fail the consumer.
    """
    try:
        old = RecipientStatus(current or RecipientStatus.PENDING)
    except ValueError:
        return new
    return new if new.rank > old.rank else old


def status_after(current: str | None, activity: Activity) -> RecipientStatus:
    """The recipient's status once ``activity`` is applied."""
    return stronger_status(current, RecipientStatus(activity.value))


def member_status_for(activity: Activity, bounce_type: str | None) -> MemberStatus | None:
    """The list-member status an activity sets: unsubscribe, complaint, hard bounce only.

    A soft bounce is transient (a full mailbox): the member stays subscribed,
    as the suppression consumer only suppresses repeated soft bounces.
    """
    match activity:
        case Activity.UNSUBSCRIBED:
            return MemberStatus.UNSUBSCRIBED
        case Activity.COMPLAINED:
            return MemberStatus.COMPLAINED
        case Activity.BOUNCED if bounce_type == "hard":
            return MemberStatus.BOUNCED
    return None


def weaker_members(status: MemberStatus) -> list[str]:
    """The member statuses ``status`` may replace (a complaint is never undone by a bounce)."""
    order = tuple(MemberStatus)
    return [s.value for s in order[: order.index(status)]]


# -- registration --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """What the recipient row says about the person (the list member's fields at send time)."""

    first_name: str
    last_name: str
    email: str
    company: str


REQUIRED: dict[str, tuple[str, ...]] = {
    "leads": ("last_name", "first_name", "email"),
    "contacts": ("last_name", "first_name", "email", "company"),
}


def missing_fields(module: str, person: Person) -> list[str]:
    """The required fields of ``module`` that ``person`` leaves empty (seed 000)."""
    return [f for f in REQUIRED[module] if not (getattr(person, f) or "").strip()]


def register_target(register: Any, activity: Activity) -> str | None:
    """The module the campaign registers recipients into for ``activity``, if any.

    ``register`` is the campaign's stored setting (``{"opened": "leads"|"contacts"|None,
    "clicked": …}``); anything else there (a missing or malformed setting) names no target.
    """
    if not isinstance(register, Mapping):
        return None
    target = register.get(activity.value)
    return target if target in TARGET_MODULES else None


@dataclass(frozen=True, slots=True)
class Register:
    """Create a record of ``module`` for the recipient."""

    module: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Do not register; store ``reason`` (and link ``existing`` for the history, if found)."""

    reason: NotRegistered
    existing: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Keep:
    """Change nothing (already registered, or a better reason is already stored)."""


Decision = Register | Skip | Keep


@dataclass(frozen=True, slots=True)
class Candidate:
    """Everything the registration decision needs, gathered by the consumer.

    ``existing`` is a lead or contact of the org with the recipient's address
    (any module), ``list_configured`` whether the recipient's list has
    ``register`` set, ``reason`` the currently stored ``not_registered_reason``.
    """

    activity: Activity
    target: str | None
    registered: bool
    reason: str | None
    list_configured: bool
    existing: tuple[str, int] | None
    person: Person


#: Reasons a later activity may replace with ``not_requested``: they say less.
_WEAK_REASONS = frozenset({None, NotRegistered.NO_ACTIVITY.value})


def decide_registration(c: Candidate) -> Decision:
    """Seed 000's rules, in order; see the module docstring."""
    if c.registered or c.activity not in REGISTERING:
        return Keep()
    if c.target is None:
        # Another activity's target may still apply later (a click after an open).
        if c.reason in _WEAK_REASONS:
            return Skip(NotRegistered.NOT_REQUESTED)
        return Keep()
    if not c.list_configured:
        return Skip(NotRegistered.LIST_NOT_CONFIGURED)
    if c.existing is not None:
        return Skip(NotRegistered.ALREADY_IN_CRM, c.existing)
    if missing_fields(c.target, c.person):
        return Skip(NotRegistered.MISSING_FIELDS)
    return Register(c.target)
