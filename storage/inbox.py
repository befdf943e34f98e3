"""The SalesInbox: a user's polled incoming mail in the seed's columns, decided at read time.

Which column a message is in depends on its sender (``messages.from_addr``,
normalised at filing) and the CRM *as it is now*, never on what was linked at
filing: a sender added to the CRM later moves to the right column at once, and
one deleted falls back to "not in the CRM".  Each column is one statement over
the user's own mail (``ix_messages_user``) with ``EXISTS`` look-ups on the
indexed ``email_norm`` of contacts, leads and users; its total comes from a
window count in the same statement.

A sender is in exactly one column, decided in this order:

1. ``colleagues``: an address of the org's own domains (or a subdomain), or a
   user of the org — a colleague is never a prospect, even if recorded as one;
2. ``deals``: a contact of the org with an *open* deal (:func:`open_stage`);
3. ``records``: a contact, or a lead not yet converted;
4. ``not_in_crm``: anyone else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    exists,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.schema import contacts, deals, leads, messages, orgs, users


class InboxColumn(StrEnum):
    """The seed's columns (商談, 連絡先&見込み客, CRMに未登録, 同僚), in its order."""

    DEALS = "deals"
    RECORDS = "records"
    NOT_IN_CRM = "not_in_crm"
    COLLEAGUES = "colleagues"


#: Where polled mail comes from (the dropbox only files the rep's outgoing mail).
POLLED_SOURCES = ("imap", "pop")

#: Stages (compared lower-case) that close a deal, besides any starting with "closed"
#: (the hosted CRM's "Closed Won", "Closed Lost", "Closed-Lost to Competition"; our
#: ``closed_won``): its Japanese names and the bare words.
CLOSED_STAGES = ("won", "lost", "受注", "失注", "競合に失注")


def open_stage(stage: ColumnElement[str]) -> ColumnElement[bool]:
    """A deal is open unless its stage closes it (see :data:`CLOSED_STAGES`)."""
    lowered = func.lower(stage)
    return and_(not_(lowered.like("closed%")), lowered.not_in(CLOSED_STAGES))


@dataclass(frozen=True, slots=True)
class InboxOrg:
    """What the columns need to know about the org."""

    domains: tuple[str, ...]
    timezone: str
    keep_unknown: bool


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in a column: ordered by ``rank`` (deals closing this month: 1), then id."""

    rank: int
    id: int


@dataclass(frozen=True, slots=True)
class Page:
    column: InboxColumn
    count: int
    rows: list[dict[str, Any]]
    next: Cursor | None


async def inbox_org(conn: AsyncConnection, org_id: int) -> InboxOrg:
    q = select(orgs.c.domains, orgs.c.timezone, orgs.c.inbox_keep_unknown).where(
        orgs.c.id == org_id
    )
    row = (await conn.execute(q)).mappings().one()
    domains = tuple(str(d).lower() for d in row["domains"] or () if d)
    return InboxOrg(domains, row["timezone"], bool(row["inbox_keep_unknown"]))


async def set_keep_unknown(conn: AsyncConnection, org_id: int, keep: bool) -> None:
    await conn.execute(update(orgs).where(orgs.c.id == org_id).values(inbox_keep_unknown=keep))


# --------------------------------------------------------------------------- column predicates


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _colleague(org_id: int, domains: Sequence[str]) -> ColumnElement[bool]:
    sender = messages.c.from_addr
    in_domain = [
        cond
        for d in domains
        for cond in (
            sender.like(f"%@{_like_escape(d)}", escape="\\"),
            sender.like(f"%.{_like_escape(d)}", escape="\\"),
        )
    ]
    a_user = exists().where(users.c.org_id == org_id, users.c.email_norm == sender)
    return or_(*in_domain, a_user)


def _open_deal(org_id: int, closing: tuple[date, date] | None = None) -> ColumnElement[bool]:
    """The sender is a contact with an open deal (closing within ``closing``, if given)."""
    conds = [
        contacts.c.org_id == org_id,
        contacts.c.email_norm == messages.c.from_addr,
        deals.c.org_id == org_id,
        deals.c.contact_id == contacts.c.id,
        open_stage(deals.c.stage),
    ]
    if closing is not None:
        conds += [deals.c.closing_date >= closing[0], deals.c.closing_date < closing[1]]
    return (
        exists()
        .select_from(contacts.join(deals, deals.c.contact_id == contacts.c.id))
        .where(*conds)
    )


def _record(org_id: int) -> ColumnElement[bool]:
    sender = messages.c.from_addr
    contact = exists().where(contacts.c.org_id == org_id, contacts.c.email_norm == sender)
    lead = exists().where(
        leads.c.org_id == org_id, leads.c.email_norm == sender, leads.c.converted_at.is_(None)
    )
    return or_(contact, lead)


def column_filter(column: InboxColumn, org_id: int, domains: Sequence[str]) -> ColumnElement[bool]:
    """The column's messages, exclusive of the columns before it in the module's order."""
    colleague, deal, record = _colleague(org_id, domains), _open_deal(org_id), _record(org_id)
    match column:
        case InboxColumn.COLLEAGUES:
            return colleague
        case InboxColumn.DEALS:
            return and_(not_(colleague), deal)
        case InboxColumn.RECORDS:
            return and_(not_(colleague), not_(deal), record)
        case InboxColumn.NOT_IN_CRM:
            return and_(not_(colleague), not_(deal), not_(record))


# --------------------------------------------------------------------------- reading a column


async def column_page(
    conn: AsyncConnection,
    org_id: int,
    user_id: int,
    column: InboxColumn,
    *,
    domains: Sequence[str],
    this_month: tuple[date, date],
    limit: int,
    before: Cursor | None = None,
) -> Page:
    """One page of a column, newest filed first (deals closing this month before the rest).

    One statement: the column's messages with their rank and the column's total
    (a window count, taken before the cursor narrows the rows), then the page.
    """
    if column is InboxColumn.DEALS:
        closing = _open_deal(org_id, this_month)
        rank = case((closing, literal_column("1")), else_=literal_column("0"))
    else:
        rank = literal_column("0")
    inner = (
        select(
            messages.c.id,
            messages.c.subject,
            messages.c.from_addr,
            messages.c.from_name,
            messages.c.date,
            messages.c.seen,
            messages.c.created_at,
            rank.label("rank"),
            func.count().over().label("total"),
        )
        .where(
            messages.c.org_id == org_id,
            messages.c.user_id == user_id,
            messages.c.direction == "incoming",
            messages.c.source.in_(POLLED_SOURCES),
            column_filter(column, org_id, domains),
        )
        .subquery("col")
    )
    q = select(inner)
    if before is not None:
        q = q.where(
            or_(
                inner.c.rank < before.rank,
                and_(inner.c.rank == before.rank, inner.c.id < before.id),
            )
        )
    q = q.order_by(inner.c.rank.desc(), inner.c.id.desc()).limit(limit + 1)
    rows = [dict(r) for r in (await conn.execute(q)).mappings()]
    count = rows[0]["total"] if rows else await _count(conn, org_id, user_id, column, domains)
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = Cursor(rows[-1]["rank"], rows[-1]["id"]) if more else None
    return Page(column, int(count), rows, nxt)


async def _count(
    conn: AsyncConnection, org_id: int, user_id: int, column: InboxColumn, domains: Sequence[str]
) -> int:
    """The column's total when the page came back empty (a cursor past its end)."""
    q = select(func.count()).where(
        messages.c.org_id == org_id,
        messages.c.user_id == user_id,
        messages.c.direction == "incoming",
        messages.c.source.in_(POLLED_SOURCES),
        column_filter(column, org_id, domains),
    )
    return int((await conn.execute(q)).scalar() or 0)


# --------------------------------------------------------------------------- who the senders are


async def sender_records(
    conn: AsyncConnection, org_id: int, senders: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """The contacts and unconverted leads of each sender address: ``{module, id, name}``."""
    wanted = sorted({s for s in senders if s})
    found: dict[str, list[dict[str, Any]]] = {}
    if not wanted:
        return found
    for module, table, extra in (
        ("contacts", contacts, false()),
        ("leads", leads, leads.c.converted_at.is_not(None)),
    ):
        q = (
            select(table.c.id, table.c.email_norm, table.c.first_name, table.c.last_name)
            .where(table.c.org_id == org_id, table.c.email_norm.in_(wanted), not_(extra))
            .order_by(table.c.id)
        )
        for r in (await conn.execute(q)).mappings():
            name = f"{r['last_name']} {r['first_name']}".strip() or r["email_norm"]
            found.setdefault(r["email_norm"], []).append(
                {"module": module, "id": r["id"], "name": name}
            )
    return found


async def sender_deals(
    conn: AsyncConnection, org_id: int, senders: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Each sender's open deals (through their contacts), soonest closing first."""
    wanted = sorted({s for s in senders if s})
    if not wanted:
        return {}
    q = (
        select(
            contacts.c.email_norm,
            deals.c.id,
            deals.c.name,
            deals.c.amount,
            deals.c.stage,
            deals.c.closing_date,
        )
        .select_from(contacts.join(deals, deals.c.contact_id == contacts.c.id))
        .where(
            contacts.c.org_id == org_id,
            contacts.c.email_norm.in_(wanted),
            deals.c.org_id == org_id,
            open_stage(deals.c.stage),
        )
        .order_by(deals.c.closing_date.is_(None), deals.c.closing_date, deals.c.id)
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for r in (await conn.execute(q)).mappings():
        deal = {k: r[k] for k in ("id", "name", "amount", "stage", "closing_date")}
        found.setdefault(r["email_norm"], []).append(deal)
    return found
