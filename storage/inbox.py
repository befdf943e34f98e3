"""The SalesInbox: a user's polled incoming mail in the seed's columns, decided at read time.

Which column a message is in depends on its sender (``messages.from_addr``,
normalised at filing) and the CRM *as it is now*, never on what was linked at
filing: a sender added to the CRM later moves to the right column at once, and
one deleted falls back to "not in the CRM".  One statement answers any number
of columns (:func:`inbox_query`): the user's own mail (``ix_messages_user``)
is classified once per message by look-ups of its sender on the indexed
``(org_id, email_norm)`` of users, contacts and leads (and ``(org_id,
contact_id)`` of deals); window functions count and page each column.

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
    CTE,
    ColumnElement,
    Select,
    and_,
    case,
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


def _found(*where: ColumnElement[bool]) -> ColumnElement[bool]:
    """``(SELECT 1 … LIMIT 1) IS NOT NULL``: a row exists, looked up per message.

    Not ``EXISTS``: PostgreSQL turns a top-level ``[NOT] EXISTS`` into a join
    whose shape follows its statistics, and without them yet (right after an
    import) it scanned every contact and deal of the org once per message —
    minutes for 10,000 messages.  A scalar subquery is never turned into a
    join: each message costs one probe of ``(org_id, email_norm)`` (and of
    ``(org_id, contact_id)`` for deals), whatever the statistics say.
    """
    return select(literal_column("1")).where(*where).limit(1).scalar_subquery().is_not(None)


def _colleague(
    org_id: int, sender: ColumnElement[str], domains: Sequence[str]
) -> ColumnElement[bool]:
    in_domain = [
        cond
        for d in domains
        for cond in (
            sender.like(f"%@{_like_escape(d)}", escape="\\"),
            sender.like(f"%.{_like_escape(d)}", escape="\\"),
        )
    ]
    a_user = _found(users.c.org_id == org_id, users.c.email_norm == sender)
    return or_(*in_domain, a_user)


def _open_deal(
    org_id: int, sender: ColumnElement[str], closing: tuple[date, date] | None = None
) -> ColumnElement[bool]:
    """The sender is a contact with an open deal (closing within ``closing``, if given).

    Nested: the sender's contacts by ``(org_id, email_norm)``, then only their
    deals by ``(org_id, contact_id)``, never the org's deals at large.
    """
    conds = [
        deals.c.org_id == org_id,
        deals.c.contact_id == contacts.c.id,
        open_stage(deals.c.stage),
    ]
    if closing is not None:
        conds += [deals.c.closing_date >= closing[0], deals.c.closing_date < closing[1]]
    return _found(contacts.c.org_id == org_id, contacts.c.email_norm == sender, _found(*conds))


def _record(org_id: int, sender: ColumnElement[str]) -> ColumnElement[bool]:
    contact = _found(contacts.c.org_id == org_id, contacts.c.email_norm == sender)
    lead = _found(
        leads.c.org_id == org_id, leads.c.email_norm == sender, leads.c.converted_at.is_(None)
    )
    return or_(contact, lead)


#: Columns as small integers in SQL (no text to bind or compare per row).
CODES = {c: i for i, c in enumerate(InboxColumn)}


def _code(column: InboxColumn) -> ColumnElement[int]:
    return literal_column(str(CODES[column]))


def classify(org_id: int, domains: Sequence[str]) -> ColumnElement[int]:
    """The column code of a message, from its sender: the first that holds, in order."""
    sender = messages.c.from_addr
    return case(
        (_colleague(org_id, sender, domains), _code(InboxColumn.COLLEAGUES)),
        (_open_deal(org_id, sender), _code(InboxColumn.DEALS)),
        (_record(org_id, sender), _code(InboxColumn.RECORDS)),
        else_=_code(InboxColumn.NOT_IN_CRM),
    )


def _polled_of(org_id: int, user_id: int) -> ColumnElement[bool]:
    """The user's own polled incoming mail."""
    return and_(
        messages.c.org_id == org_id,
        messages.c.user_id == user_id,
        messages.c.direction == "incoming",
        messages.c.source.in_(POLLED_SOURCES),
    )


def _classified(org_id: int, user_id: int, domains: Sequence[str]) -> CTE:
    """The user's polled mail with each message's column, decided once per message.

    ``MATERIALIZED``: inlined, PostgreSQL would repeat the look-ups wherever the
    column is used (filter, partition, rank).  Only what ``ix_messages_user``
    carries on PostgreSQL (0016) is read here, so classifying a rep's 10,000
    messages is an index-only scan (the look-ups are index-only too: 0016); what
    a row shows is read for the page alone (:func:`inbox_query`).
    """
    return (
        select(messages.c.id, messages.c.from_addr, classify(org_id, domains).label("col"))
        .where(_polled_of(org_id, user_id))
        .cte("classified")
        .prefix_with("MATERIALIZED")
    )


# --------------------------------------------------------------------------- reading columns


def inbox_query(
    org_id: int,
    user_id: int,
    columns: Sequence[InboxColumn],
    *,
    domains: Sequence[str],
    this_month: tuple[date, date],
    limit: int,
    before: Cursor | None = None,
) -> Select[Any]:
    """Up to ``limit`` + 1 rows of each of ``columns``, each row with its column's total.

    One statement for any number of columns: every message is classified once;
    deals closing this month get rank 1; each column is counted (before the
    cursor narrows it) and numbered in its order, rank first, newest filed first.
    """
    classified = _classified(org_id, user_id, domains)
    closing = _open_deal(org_id, classified.c.from_addr, this_month)
    is_deal = classified.c.col == _code(InboxColumn.DEALS)
    rank = case((and_(is_deal, closing), literal_column("1")), else_=literal_column("0"))
    counted = (
        select(
            classified,
            rank.label("rank"),
            func.count().over(partition_by=classified.c.col).label("total"),
        )
        .where(classified.c.col.in_([_code(c) for c in columns]))
        .subquery("counted")
    )
    order = (counted.c.rank.desc(), counted.c.id.desc())
    paged = select(
        counted, func.row_number().over(partition_by=counted.c.col, order_by=order).label("rn")
    )
    if before is not None:
        paged = paged.where(
            or_(
                counted.c.rank < before.rank,
                and_(counted.c.rank == before.rank, counted.c.id < before.id),
            )
        )
    pages = paged.subquery("paged")
    shown = (
        messages.c.subject,
        messages.c.from_name,
        messages.c.date,
        messages.c.seen,
        messages.c.created_at,
    )
    return (
        select(pages, *shown)
        .join_from(pages, messages, messages.c.id == pages.c.id)
        .where(pages.c.rn <= limit + 1)
        .order_by(pages.c.col, pages.c.rn)
    )


async def read_columns(
    conn: AsyncConnection,
    org_id: int,
    user_id: int,
    columns: Sequence[InboxColumn],
    *,
    domains: Sequence[str],
    this_month: tuple[date, date],
    limit: int,
    before: Cursor | None = None,
) -> list[Page]:
    """A page of each of ``columns``, in the order given."""
    q = inbox_query(
        org_id,
        user_id,
        columns,
        domains=domains,
        this_month=this_month,
        limit=limit,
        before=before,
    )
    if conn.dialect.name == "postgresql":
        # The per-message look-ups make the plan look costly enough for JIT, whose
        # compilation alone took longer (~160 ms) than the whole read; it never pays
        # for a page of rows.
        await conn.exec_driver_sql("SET LOCAL jit = off")
    by_code: dict[int, list[dict[str, Any]]] = {}
    for r in (await conn.execute(q)).mappings():
        by_code.setdefault(int(r["col"]), []).append(dict(r))
    pages = []
    for column in columns:
        rows = by_code.get(CODES[column], [])
        if rows:
            count = int(rows[0]["total"])
        elif before is not None:  # a cursor past the column's end: count it alone
            count = await _count(conn, org_id, user_id, column, domains)
        else:
            count = 0
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = Cursor(int(rows[-1]["rank"]), rows[-1]["id"]) if more else None
        pages.append(Page(column, count, rows, nxt))
    return pages


async def _count(
    conn: AsyncConnection, org_id: int, user_id: int, column: InboxColumn, domains: Sequence[str]
) -> int:
    classified = _classified(org_id, user_id, domains)
    q = select(func.count()).select_from(classified).where(classified.c.col == _code(column))
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
