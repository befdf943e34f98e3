"""The CRM → Campaigns sync's rules, decided purely: what one record means for one list.

The consumer (:mod:`sync.crm_to_campaigns`) gathers, for each record a round
or a full run looks at, the record as it is *now* (not as an event described
it), the account and latest deal a contact's mapping reads, the member at the
record's address and the member the record is already linked to.  :func:`decide`
answers with one :class:`Decision`; the consumer writes it.  Deciding from the
current state is what makes the sync idempotent: replaying the log from offset
0 decides the same thing again, and an unchanged member is never written.

The order of the checks is the order a user reads in ``docs/syncs.md``:
deleted → outside the filter → invalid address → role address → do-not-mail →
converted → the list's member at that address (removed once: duplicate; linked
to another record: duplicate) → update, follow an email change, or add.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from gateway.addresses import ROLE_LOCAL_PARTS, is_role_address, normalise
from gateway.records.validation import address_problem


class Module(StrEnum):
    """The CRM tab a sync mirrors."""

    LEADS = "leads"
    CONTACTS = "contacts"


class Subscription(StrEnum):
    """Given to newly added members only; existing members keep theirs (seed 002)."""

    MARKETING = "marketing"
    NON_MARKETING = "non_marketing"


class ConsentMode(StrEnum):
    """``none``: new members get ``none``, existing keep theirs; otherwise every synced member."""

    NONE = "none"
    PENDING = "pending"  # seed 002: 「同意が必要」 (consent required)
    CONFIRMED = "confirmed"  # 「同意の意思表示済み」 (consent given)


class DoNotMail(StrEnum):
    """What a do-not-mail record does to the list (seed 002's advanced settings)."""

    EXCLUDE = "exclude"  # skipped; an existing member is left as it is
    REMOVE = "remove"  # its member is removed from the list, and it is skipped


class SkipReason(StrEnum):
    """Why a record did not reach the list (``GET …/runs/{id}/skipped``)."""

    ROLE_ADDRESS = "role_address"
    DO_NOT_MAIL = "do_not_mail"
    CONVERTED = "converted"
    INVALID_EMAIL = "invalid_email"
    DUPLICATE = "duplicate"


class Outcome(StrEnum):
    """What one decision does to the list."""

    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REMOVED = "removed"
    SKIPPED = "skipped"
    IGNORED = "ignored"  # not in the sync's selection (filter), or deleted with no member


#: The member's own columns; every other mapped member field goes to ``list_members.fields``.
MEMBER_COLUMNS = ("first_name", "last_name", "company")
#: Limits of the member's columns (``storage.schema_campaigns.list_members``).
COLUMN_LIMITS = {"first_name": 100, "last_name": 100, "company": 300}
#: Extra fields are cut to this length.
FIELD_LIMIT = 500
MAX_FIELD_MAP = 50
MAX_FILTER = 5
MEMBER_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

#: The CRM fields a mapping or a filter may read, per tab.  Bookkeeping (ids, owners,
#: ``email_norm``) is not offered.
RECORD_FIELDS: dict[str, frozenset[str]] = {
    "leads": frozenset(
        {"first_name", "last_name", "email", "company", "phone", "title", "status", "source"}
    ),
    "contacts": frozenset({"first_name", "last_name", "email", "phone", "title", "source"}),
}
ACCOUNT_FIELDS = frozenset({"name"})
DEAL_FIELDS = frozenset({"name", "stage", "amount"})

#: Seed 002: 「基本の項目は、最初から関連付けられています」: basic fields are mapped from the start.
DEFAULT_MAP: dict[str, dict[str, str]] = {
    "leads": {"first_name": "first_name", "last_name": "last_name", "company": "company"},
    "contacts": {"first_name": "first_name", "last_name": "last_name", "company": "account.name"},
}

#: The role mailboxes skipped (``role_address``): the one list the dropbox also uses.
ROLE_ADDRESSES = ROLE_LOCAL_PARTS


def crm_field_problem(module: str, crm_field: str) -> str | None:
    """Why ``crm_field`` cannot be read for a record of ``module``, or None."""
    kind, dot, name = crm_field.partition(".")
    if not dot:
        if crm_field in RECORD_FIELDS[module]:
            return None
        return f"{module} have no field {crm_field!r}"
    if module != Module.CONTACTS:
        return f"{crm_field!r}: account and deal fields are mapped for contacts only"
    allowed = {"account": ACCOUNT_FIELDS, "deal": DEAL_FIELDS}.get(kind)
    if allowed is None or name not in allowed:
        return f"unknown field {crm_field!r} (account.name, deal.name, deal.stage, deal.amount)"
    return None


def resolved_map(module: str, field_map: Mapping[str, str | None]) -> dict[str, str]:
    """The default mapping with the sync's own on top; a ``null`` unmaps a default."""
    merged: dict[str, str | None] = {**DEFAULT_MAP[module], **field_map}
    return {k: v for k, v in merged.items() if v}


def reads_related(field_map: Mapping[str, str]) -> frozenset[str]:
    """Which related records (``account``, ``deal``) a resolved mapping reads."""
    return frozenset(v.partition(".")[0] for v in field_map.values() if "." in v)


def matches(selection: Mapping[str, str] | None, record: Mapping[str, Any]) -> bool:
    """Whether ``record`` is in the sync's saved selection (equality on each field)."""
    if not selection:
        return True
    return all(_text(record.get(k)) == v for k, v in selection.items())


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral() else str(value)
    return str(value).strip()


@dataclass(frozen=True, slots=True)
class Rules:
    """One sync's configuration, as the decision needs it."""

    sync_id: int
    org_id: int
    module: str
    list_id: int
    subscription: str = Subscription.MARKETING
    consent: str = ConsentMode.NONE
    legal_basis: str | None = None
    #: Seed 002's 「空の値を更新する」: an emptied CRM value empties the member's field.
    update_empty: bool = False
    do_not_mail: str = DoNotMail.EXCLUDE
    exclude_converted: bool = True
    field_map: Mapping[str, str] = field(default_factory=dict)  # resolved (defaults included)
    selection: Mapping[str, str] | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Rules:
        return cls(
            sync_id=row["id"],
            org_id=row["org_id"],
            module=row["module"],
            list_id=row["list_id"],
            subscription=row["subscription"],
            consent=row["consent"],
            legal_basis=row["legal_basis"],
            update_empty=bool(row["update_empty_only"]),
            do_not_mail=row["do_not_mail"],
            exclude_converted=bool(row["exclude_converted"]),
            field_map=resolved_map(row["module"], row["field_map"] or {}),
            selection=row["filter"] or None,
        )


@dataclass(frozen=True, slots=True)
class Source:
    """A record as it is now; ``record`` None: it was deleted."""

    module: str
    id: int
    record: Mapping[str, Any] | None
    account: Mapping[str, Any] | None = None
    deal: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """A list member as the decision sees it."""

    id: int
    email: str
    email_norm: str
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    consent: str = ConsentMode.NONE
    legal_basis: str | None = None
    module: str | None = None
    record_id: int | None = None
    sync_id: int | None = None
    removed: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Member:
        return cls(
            id=row["id"],
            email=row["email"],
            email_norm=row["email_norm"],
            first_name=row["first_name"],
            last_name=row["last_name"],
            company=row["company"],
            fields=row["fields"] or {},
            consent=row["consent"],
            legal_basis=row["legal_basis"],
            module=row["module"],
            record_id=row["record_id"],
            sync_id=row["sync_id"],
            removed=row["removed_at"] is not None,
        )

    def linked_to(self, source: Source) -> bool:
        return self.module == source.module and self.record_id == source.id

    def with_values(self, values: Mapping[str, Any]) -> Member:
        """This member after ``values`` were written (for later records of the same run)."""
        known = {k: v for k, v in values.items() if k in Member.__dataclass_fields__}
        return Member(**{**{f: getattr(self, f) for f in Member.__slots__}, **known})


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do for one record; ``values`` are columns to write (insert or update)."""

    outcome: Outcome
    reason: SkipReason | None = None
    email: str | None = None
    member_id: int | None = None  # the member updated
    values: Mapping[str, Any] = field(default_factory=dict)
    remove: tuple[int, ...] = ()  # members removed from the list
    detach: int | None = None  # the record's old member, left on the list unlinked

    @property
    def counts_removed(self) -> bool:
        return bool(self.remove)


def skip(reason: SkipReason, email: str | None, remove: tuple[int, ...] = ()) -> Decision:
    return Decision(Outcome.SKIPPED, reason=reason, email=email, remove=remove)


def mapped_values(rules: Rules, source: Source) -> dict[str, str]:
    """Member field → the CRM value it maps (``""`` when empty), cut to the column's size."""
    record = source.record or {}
    related = {"account": source.account or {}, "deal": source.deal or {}}
    out: dict[str, str] = {}
    for member_field, crm_field in rules.field_map.items():
        kind, dot, name = crm_field.partition(".")
        value = _text(related[kind].get(name)) if dot else _text(record.get(crm_field))
        out[member_field] = value[: COLUMN_LIMITS.get(member_field, FIELD_LIMIT)]
    return out


def member_changes(
    rules: Rules, member: Member, source: Source, wanted: Mapping[str, str], email: str
) -> dict[str, Any]:
    """The columns of an existing ``member`` that differ from what the record maps."""
    out: dict[str, Any] = {}
    extra = dict(member.fields)
    for name, value in wanted.items():
        if not value and not rules.update_empty:
            continue  # 「空の値を更新する」 off: an empty CRM value never overwrites
        if name in MEMBER_COLUMNS:
            if getattr(member, name) != value:
                out[name] = value
        elif extra.get(name, "") != value:
            extra[name] = value
    if extra != dict(member.fields):
        out["fields"] = extra
    if member.email != email:
        out["email"] = email
        out["email_norm"] = normalise(email)
    if rules.consent != ConsentMode.NONE:
        if member.consent != rules.consent:
            out["consent"] = rules.consent
        if rules.legal_basis and member.legal_basis != rules.legal_basis:
            out["legal_basis"] = rules.legal_basis
    if not member.linked_to(source) or member.sync_id != rules.sync_id:
        out.update(module=source.module, record_id=source.id, sync_id=rules.sync_id)
    return out


def new_member(
    rules: Rules, source: Source, wanted: Mapping[str, str], email: str
) -> dict[str, Any]:
    """The columns of a member the sync adds."""
    return {
        "email": email,
        "email_norm": normalise(email),
        **{c: wanted.get(c, "") for c in MEMBER_COLUMNS},
        "fields": {k: v for k, v in wanted.items() if k not in MEMBER_COLUMNS and v},
        "subscription": rules.subscription,
        "consent": rules.consent,
        "legal_basis": rules.legal_basis,
        "status": "subscribed",
        "module": source.module,
        "record_id": source.id,
        "source": "sync",
        "sync_id": rules.sync_id,
    }


def _ours(member: Member | None, source: Source) -> bool:
    """An active member that is this record's, or nobody's (added by hand, CSV)."""
    return (
        member is not None
        and not member.removed
        and (member.linked_to(source) or member.record_id is None)
    )


def decide(
    rules: Rules, source: Source, at_address: Member | None, linked: Member | None
) -> Decision:
    """What ``source`` does to the list.

    ``at_address``: the list's member (removed or not) at the record's current
    address; ``linked``: the list's member already linked to this record, if
    it is another one (the record's address changed).
    """
    record = source.record
    if record is None:
        if linked is not None and not linked.removed:
            return Decision(Outcome.REMOVED, email=linked.email, remove=(linked.id,))
        return Decision(Outcome.IGNORED)
    if not matches(rules.selection, record):
        return Decision(Outcome.IGNORED)
    email = (record.get("email") or "").strip()
    norm = normalise(email)
    if not email or norm is None or address_problem(email):
        return skip(SkipReason.INVALID_EMAIL, email or None)
    if is_role_address(norm):
        return skip(SkipReason.ROLE_ADDRESS, email)
    if record.get("do_not_mail"):
        remove: tuple[int, ...] = ()
        if rules.do_not_mail == DoNotMail.REMOVE:
            remove = tuple(
                sorted({m.id for m in (at_address, linked) if m is not None and _ours(m, source)})
            )
        return skip(SkipReason.DO_NOT_MAIL, email, remove)
    if source.module == Module.LEADS and rules.exclude_converted and record.get("converted_at"):
        return skip(SkipReason.CONVERTED, email)
    wanted = mapped_values(rules, source)
    if at_address is not None:
        if at_address.removed:
            return skip(SkipReason.DUPLICATE, email)
        if at_address.record_id is not None and not at_address.linked_to(source):
            return skip(SkipReason.DUPLICATE, email)
        changes = member_changes(rules, at_address, source, wanted, email)
        detach = linked.id if linked is not None and linked.id != at_address.id else None
        outcome = Outcome.UPDATED if changes or detach else Outcome.UNCHANGED
        return Decision(
            outcome, email=email, member_id=at_address.id, values=changes, detach=detach
        )
    if linked is not None:
        if linked.removed:
            return skip(SkipReason.DUPLICATE, email)
        changes = member_changes(rules, linked, source, wanted, email)
        return Decision(Outcome.UPDATED, email=email, member_id=linked.id, values=changes)
    return Decision(Outcome.ADDED, email=email, values=new_member(rules, source, wanted, email))


@dataclass(slots=True)
class Tally:
    """A run's counts (``sync_runs``) and its skipped records (``sync_skips``)."""

    total: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    skips: list[tuple[str, int, str | None, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(self.skipped_reasons.values())

    def merge(self, other: Tally) -> None:
        """Add ``other``'s counts and skips (a part of the same run)."""
        self.total += other.total
        self.added += other.added
        self.updated += other.updated
        self.removed += other.removed
        for reason, n in other.skipped_reasons.items():
            self.skipped_reasons[reason] = self.skipped_reasons.get(reason, 0) + n
        self.skips.extend(other.skips)

    def count(self, source: Source, decision: Decision) -> None:
        if decision.outcome == Outcome.IGNORED:
            return
        self.total += 1
        self.removed += len(decision.remove) > 0
        match decision.outcome:
            case Outcome.ADDED:
                self.added += 1
            case Outcome.UPDATED:
                self.updated += 1
            case Outcome.SKIPPED:
                assert decision.reason is not None
                reason = str(decision.reason)
                self.skipped_reasons[reason] = self.skipped_reasons.get(reason, 0) + 1
                self.skips.append((source.module, source.id, decision.email, reason))
