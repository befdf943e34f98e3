"""SQL of Campaigns: mailing lists, their members, campaigns and their recipients.

Every query is scoped to one org (the caller's) except the runner's claim,
which picks due recipients of every org.  Concurrency:

- a list's name and a member's address are unique by constraint; inserts use
  insert-or-ignore so a race ends in "already there" (409), never a 500;
- a campaign leaves ``draft`` by one guarded UPDATE (``WHERE status =
  'draft'``), so two ``send`` calls cannot both choose recipients: the loser's
  transaction finds no row changed and rolls back;
- the runner claims due recipients with ``FOR UPDATE … SKIP LOCKED`` on
  PostgreSQL and composes them in the same transaction that marks them
  ``queued``: a second worker skips the locked rows, and after the commit
  they are no longer ``pending``; SQLite has one writer;
- a campaign becomes ``sent`` by one guarded UPDATE, so ``campaign.sent`` is
  emitted once even with two workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from storage.inserts import insert_ignore
from storage.schema import contacts, leads, orgs, users
from storage.schema_campaigns import (
    CAMPAIGN_STAT_COLUMNS,
    campaign_recipients,
    campaign_stats,
    campaigns,
    list_members,
    mailing_lists,
)

LIST_COLUMNS = (
    mailing_lists.c.id,
    mailing_lists.c.name,
    mailing_lists.c.description,
    mailing_lists.c.kind,
    mailing_lists.c.register,
    mailing_lists.c.created_at,
)
#: The recipient columns that count for a campaign's stats (``unopened`` is derived).
STAT_COLUMNS = ("sent", "opened", "clicked", "bounced", "unsubscribed", "complained")
#: The keys of a campaign's stats: those counts and ``unopened``.
STAT_KEYS = CAMPAIGN_STAT_COLUMNS
#: Campaign states whose pending recipients the runner composes.
LIVE = ("scheduled", "sending")


# -- lists ---------------------------------------------------------------------------


def insert_list(conn: Connection, org_id: int, values: dict[str, Any]) -> int | None:
    """A new list's id, or None when the org already has a list of that name."""
    stmt = (
        insert_ignore(mailing_lists, conn.dialect.name)
        .values(org_id=org_id, **values)
        .returning(mailing_lists.c.id)
    )
    return conn.execute(stmt).scalar()


def _member_counts(conn: Connection, list_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    q = (
        select(list_members.c.list_id, list_members.c.status, func.count())
        .where(list_members.c.list_id.in_(list(list_ids)), list_members.c.removed_at.is_(None))
        .group_by(list_members.c.list_id, list_members.c.status)
    )
    out: dict[int, dict[str, int]] = {lid: {} for lid in list_ids}
    for lid, status, n in conn.execute(q):
        out[lid][status] = n
    return out


def lists_page(conn: Connection, org_id: int, after: int, limit: int) -> list[dict[str, Any]]:
    """The org's lists by id, each with ``members`` counted by status (removed ones left out)."""
    q = (
        select(*LIST_COLUMNS)
        .where(mailing_lists.c.org_id == org_id, mailing_lists.c.id > after)
        .order_by(mailing_lists.c.id)
        .limit(limit)
    )
    rows = [dict(r) for r in conn.execute(q).mappings()]
    counts = _member_counts(conn, [r["id"] for r in rows]) if rows else {}
    for row in rows:
        row["members"] = counts[row["id"]]
    return rows


def get_list(conn: Connection, org_id: int, list_id: int) -> dict[str, Any] | None:
    q = select(*LIST_COLUMNS).where(mailing_lists.c.org_id == org_id, mailing_lists.c.id == list_id)
    row = conn.execute(q).mappings().first()
    if row is None:
        return None
    out = dict(row)
    out["members"] = _member_counts(conn, [list_id])[list_id]
    return out


def update_list(conn: Connection, org_id: int, list_id: int, values: dict[str, Any]) -> bool:
    """Change a list; False when the new name is another list's of the org.

    The unique constraint decides (in a savepoint), so two renames racing to one
    name end in one 409 rather than a 500.
    """
    stmt = (
        update(mailing_lists)
        .where(mailing_lists.c.org_id == org_id, mailing_lists.c.id == list_id)
        .values(**values)
    )
    try:
        with conn.begin_nested():
            conn.execute(stmt)
    except IntegrityError:
        return False
    return True


def lists_of_org(conn: Connection, org_id: int, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Which of ``ids`` are the org's lists, by id."""
    q = select(*LIST_COLUMNS).where(
        mailing_lists.c.org_id == org_id, mailing_lists.c.id.in_(sorted(set(ids)))
    )
    return {r["id"]: dict(r) for r in conn.execute(q).mappings()}


# -- members -------------------------------------------------------------------------


def members_page(
    conn: Connection, list_id: int, *, after: int, limit: int, status: str | None
) -> list[dict[str, Any]]:
    """A list's current members by id (removed ones are not members)."""
    q = select(list_members).where(
        list_members.c.list_id == list_id,
        list_members.c.removed_at.is_(None),
        list_members.c.id > after,
    )
    if status:
        q = q.where(list_members.c.status == status)
    q = q.order_by(list_members.c.id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def members_by_email(
    conn: Connection, list_id: int, emails: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The list's member rows (removed ones too) among ``emails`` (normalised), by address."""
    out: dict[str, dict[str, Any]] = {}
    wanted = sorted(set(emails))
    for i in range(0, len(wanted), 500):
        q = select(list_members).where(
            list_members.c.list_id == list_id, list_members.c.email_norm.in_(wanted[i : i + 500])
        )
        out.update({r["email_norm"]: dict(r) for r in conn.execute(q).mappings()})
    return out


def insert_members(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Insert new members (an address already on the list is left alone); how many were added."""
    if not rows:
        return 0
    res = conn.execute(insert_ignore(list_members, conn.dialect.name), list(rows))
    return max(res.rowcount, 0)


def restore_member(conn: Connection, member_id: int, values: dict[str, Any]) -> None:
    """Bring a removed member back with the values given (``removed_at`` cleared)."""
    stmt = update(list_members).where(list_members.c.id == member_id)
    conn.execute(stmt.values(removed_at=None, **values))


def update_members(conn: Connection, items: Sequence[tuple[int, dict[str, Any]]]) -> None:
    for member_id, values in items:
        conn.execute(update(list_members).where(list_members.c.id == member_id).values(**values))


def remove_member(
    conn: Connection, org_id: int, list_id: int, member_id: int, now: datetime
) -> bool:
    """Mark a current member removed (the row stays: the sync must know "once removed")."""
    stmt = (
        update(list_members)
        .where(
            list_members.c.org_id == org_id,
            list_members.c.list_id == list_id,
            list_members.c.id == member_id,
            list_members.c.removed_at.is_(None),
        )
        .values(removed_at=now, updated_at=now)
    )
    return bool(conn.execute(stmt).rowcount)


def crm_matches(
    conn: Connection, org_id: int, emails: Iterable[str]
) -> dict[str, tuple[str, int, bool]]:
    """email_norm → (module, id, do_not_mail) of a lead or contact with that address.

    A contact wins over a lead, and a lead not yet converted over one that
    was (its mail follows the contact); the lowest id among equals.
    """
    wanted = sorted(set(emails))
    found: dict[str, tuple[str, int, bool]] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        q_contacts = (
            select(contacts.c.email_norm, contacts.c.id, contacts.c.do_not_mail)
            .where(contacts.c.org_id == org_id, contacts.c.email_norm.in_(chunk))
            .order_by(contacts.c.id.desc())
        )
        q_leads = (
            select(leads.c.email_norm, leads.c.id, leads.c.do_not_mail)
            .where(leads.c.org_id == org_id, leads.c.email_norm.in_(chunk))
            .order_by(leads.c.converted_at.is_(None), leads.c.id.desc())
        )
        # Lowest priority first: later rows overwrite earlier ones.
        for module, q in (("leads", q_leads), ("contacts", q_contacts)):
            for norm, rid, dnm in conn.execute(q):
                found[norm] = (module, rid, bool(dnm))
    return found


def do_not_mail_records(
    conn: Connection, org_id: int, links: Iterable[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Which of the (module, id) records have ``do_not_mail`` set."""
    out: set[tuple[str, int]] = set()
    for module, table in (("leads", leads), ("contacts", contacts)):
        ids = sorted({rid for m, rid in links if m == module})
        for i in range(0, len(ids), 500):
            q = select(table.c.id).where(
                table.c.org_id == org_id,
                table.c.id.in_(ids[i : i + 500]),
                table.c.do_not_mail.is_(True),
            )
            out |= {(module, rid) for rid in conn.execute(q).scalars()}
    return out


def audience(conn: Connection, org_id: int, list_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The lists' current members, list by list in the order given, each list by id."""
    out: list[dict[str, Any]] = []
    for list_id in list_ids:
        q = (
            select(list_members)
            .where(
                list_members.c.org_id == org_id,
                list_members.c.list_id == list_id,
                list_members.c.removed_at.is_(None),
            )
            .order_by(list_members.c.id)
        )
        out += [dict(r) for r in conn.execute(q).mappings()]
    return out


# -- campaigns -----------------------------------------------------------------------


def insert_campaign(conn: Connection, values: dict[str, Any]) -> int:
    return conn.execute(insert(campaigns).values(**values).returning(campaigns.c.id)).scalar_one()


def get_campaign(conn: Connection, org_id: int, campaign_id: int) -> dict[str, Any] | None:
    q = select(campaigns).where(campaigns.c.org_id == org_id, campaigns.c.id == campaign_id)
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def campaigns_page(conn: Connection, org_id: int, after: int, limit: int) -> list[dict[str, Any]]:
    q = (
        select(campaigns)
        .where(campaigns.c.org_id == org_id, campaigns.c.id > after)
        .order_by(campaigns.c.id)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def update_campaign(
    conn: Connection,
    org_id: int,
    campaign_id: int,
    values: dict[str, Any],
    *,
    status: Sequence[str],
) -> bool:
    """Change a campaign only while it is in one of ``status`` (the guard is in the UPDATE)."""
    stmt = (
        update(campaigns)
        .where(
            campaigns.c.org_id == org_id,
            campaigns.c.id == campaign_id,
            campaigns.c.status.in_(list(status)),
        )
        .values(**values)
    )
    return bool(conn.execute(stmt).rowcount)


def delete_draft(conn: Connection, org_id: int, campaign_id: int) -> bool:
    stmt = delete(campaigns).where(
        campaigns.c.org_id == org_id, campaigns.c.id == campaign_id, campaigns.c.status == "draft"
    )
    return bool(conn.execute(stmt).rowcount)


def insert_recipients(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    for i in range(0, len(rows), 1000):
        conn.execute(insert(campaign_recipients), list(rows[i : i + 1000]))


def stats(conn: Connection, campaign_id: int) -> dict[str, int]:
    """How many recipients have each ``*_at`` set; ``unopened`` = sent and not opened."""
    return stats_of(conn, [campaign_id])[campaign_id]


def stats_of(conn: Connection, campaign_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """:func:`stats` of several campaigns in one statement (a page of them).

    PostgreSQL reads the counters of ``campaign_stats`` (kept by triggers in the
    transaction of every recipient write, 0017): one row per campaign, however many
    recipients.  SQLite installs are small and count the recipients:
    :func:`counted_stats`, the definition the counters are tested against.
    """
    if conn.dialect.name != "postgresql":
        return counted_stats(conn, campaign_ids)
    s = campaign_stats.c
    q = select(s.campaign_id, *(s[k] for k in STAT_KEYS)).where(
        s.campaign_id.in_(list(campaign_ids))
    )
    return _by_campaign(campaign_ids, conn.execute(q).mappings())


def counted_stats(conn: Connection, campaign_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """The stats counted from every recipient row: how many have each ``*_at`` set."""
    r = campaign_recipients.c
    cols = [func.count(r[f"{name}_at"]).label(name) for name in STAT_COLUMNS]
    unopened = func.count(case((r.opened_at.is_(None), r.sent_at))).label("unopened")
    q = (
        select(r.campaign_id, *cols, unopened)
        .where(r.campaign_id.in_(list(campaign_ids)))
        .group_by(r.campaign_id)
    )
    return _by_campaign(campaign_ids, conn.execute(q).mappings())


def _by_campaign(
    campaign_ids: Sequence[int], rows: Iterable[Mapping[str, Any]]
) -> dict[int, dict[str, int]]:
    """Rows of stats by campaign; a campaign without a row has all zeros."""
    out = {cid: dict.fromkeys(STAT_KEYS, 0) for cid in campaign_ids}
    for row in rows:
        out[row["campaign_id"]] = {k: int(row[k] or 0) for k in STAT_KEYS}
    return out


def recipients_page(
    conn: Connection, campaign_id: int, *, after: int, limit: int, status: str | None
) -> list[dict[str, Any]]:
    r = campaign_recipients.c
    q = select(campaign_recipients).where(r.campaign_id == campaign_id, r.id > after)
    if status == "unopened":
        q = q.where(r.sent_at.isnot(None), r.opened_at.is_(None))
    elif status:
        q = q.where(r.status == status)
    return [dict(row) for row in conn.execute(q.order_by(r.id).limit(limit)).mappings()]


# -- the runner ----------------------------------------------------------------------


def claim_due(conn: Connection, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` due pending recipients of live campaigns, locked until commit.

    On PostgreSQL rows another worker holds are skipped (``SKIP LOCKED``), and
    the status is re-checked after the lock, so a recipient is never composed twice.
    """
    r = campaign_recipients.c
    q = (
        select(campaign_recipients)
        .join(campaigns, campaigns.c.id == r.campaign_id)
        .where(r.status == "pending", r.due_at <= now, campaigns.c.status.in_(LIVE))
        .order_by(r.due_at, r.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True, of=campaign_recipients)
    return [dict(row) for row in conn.execute(q).mappings()]


def campaigns_by_ids(conn: Connection, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    q = select(campaigns).where(campaigns.c.id.in_(sorted(set(ids))))
    return {row["id"]: dict(row) for row in conn.execute(q).mappings()}


def org_and_user(
    conn: Connection, org_id: int, user_id: int | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The org row and the campaign author's row (None once the user was deleted)."""
    org = dict(conn.execute(select(orgs).where(orgs.c.id == org_id)).mappings().one())
    if user_id is None:
        return org, None
    row = conn.execute(select(users).where(users.c.id == user_id)).mappings().first()
    return org, dict(row) if row else None


def set_queued(conn: Connection, items: Sequence[tuple[int, int]]) -> None:
    """(recipient id, send id): composed and handed to the send queue."""
    if not items:
        return
    stmt = (
        update(campaign_recipients)
        .where(campaign_recipients.c.id == bindparam("rid"))
        .values(send_id=bindparam("sid"), status="queued")
    )
    conn.execute(stmt, [{"rid": rid, "sid": sid} for rid, sid in items])


def mark_sending(conn: Connection, campaign_ids: Iterable[int]) -> None:
    """A scheduled campaign whose first recipients are being composed is ``sending``."""
    stmt = update(campaigns).where(
        campaigns.c.id.in_(sorted(set(campaign_ids))), campaigns.c.status == "scheduled"
    )
    conn.execute(stmt.values(status="sending"))


def _started(now: datetime):
    """A campaign whose send time has come (or that had none): one with nobody left to
    compose (every member skipped) is ``sent`` then, not before its ``send_at``."""
    return or_(campaigns.c.send_at.is_(None), campaigns.c.send_at <= now)


def finish(conn: Connection, now: datetime, org_id: int | None = None) -> list[dict[str, Any]]:
    """Mark ``sent`` every live campaign without a pending recipient left; those rows.

    The status guard in the UPDATE makes this happen once per campaign.
    """
    r = campaign_recipients.c
    pending = select(r.id).where(r.campaign_id == campaigns.c.id, r.status == "pending").exists()
    cond = [campaigns.c.status.in_(LIVE), ~pending, _started(now)]
    if org_id is not None:
        cond.append(campaigns.c.org_id == org_id)
    stmt = (
        update(campaigns)
        .where(*cond)
        .values(status="sent", sent_at=now, updated_at=now)
        .returning(*campaigns.c)
    )
    return [dict(row) for row in conn.execute(stmt).mappings()]


def set_failed(conn: Connection, recipient_id: int) -> None:
    """A recipient the composer could not carry: not sent, and not pending any more."""
    stmt = update(campaign_recipients).where(campaign_recipients.c.id == recipient_id)
    conn.execute(stmt.values(status="failed"))


def has_work(conn: Connection, now: datetime) -> bool:
    """Whether a round would do anything: a due pending recipient, or a campaign to finish.

    A read, so an idle runner does not take SQLite's write lock every poll.
    """
    r = campaign_recipients.c
    live = campaigns.c.status.in_(LIVE)
    due = (
        select(r.id)
        .join(campaigns, campaigns.c.id == r.campaign_id)
        .where(r.status == "pending", r.due_at <= now, live)
        .limit(1)
    )
    if conn.execute(due).first() is not None:
        return True
    pending = select(r.id).where(r.campaign_id == campaigns.c.id, r.status == "pending").exists()
    done = select(campaigns.c.id).where(live, ~pending, _started(now)).limit(1)
    return conn.execute(done).first() is not None
