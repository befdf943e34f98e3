"""SQL of the CRM → Campaigns sync: configurations, runs and skips, and the sync's members.

Small functions over a synchronous ``Connection``; callers combine them in one
transaction (the API through ``db.run_write``, the consumer in its round).

Concurrency, per guarantee:

- **Limits** (5 active syncs per user, 15 per org): :func:`lock_org` serialises
  every create and resume of one org (``FOR UPDATE`` on the org's row on
  PostgreSQL; SQLite has one writer), so the count read by
  :func:`active_counts` is still true when the insert commits: two concurrent
  creates never make a 6th.
- **A full run runs once**: :func:`claim_full` is a compare-and-set on
  ``full_requested_at`` inside the run's own transaction; a second process
  claiming the same request updates no row and moves on.
- **One writer per sync's members**: a change round locks the syncs it writes
  for (:func:`lock_syncs`, ``FOR UPDATE`` in id order, so two rounds never
  deadlock); a full run holds its sync's row through :func:`claim_full`'s
  UPDATE.  So a full run and a change round of another process never insert
  the same member twice: one waits for the other's commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from storage.crm import MODULES
from storage.schema import deals, orgs
from storage.schema_campaigns import list_members, mailing_lists
from storage.schema_syncs import sync_runs, sync_skips, syncs

# -- configurations ---------------------------------------------------------------


def lock_org(conn: Connection, org_id: int) -> None:
    """Serialise limit checks of one org until this transaction ends (see the module doc)."""
    q = select(orgs.c.id).where(orgs.c.id == org_id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    conn.execute(q)


def active_counts(conn: Connection, org_id: int, user_id: int | None) -> tuple[int, int]:
    """(the user's, the org's) active syncs."""
    active = (syncs.c.org_id == org_id, syncs.c.state == "active")
    org_count = conn.execute(select(func.count()).where(*active)).scalar_one()
    user_count = conn.execute(
        select(func.count()).where(*active, syncs.c.user_id == user_id)
    ).scalar_one()
    return user_count, org_count


def list_exists(conn: Connection, org_id: int, list_id: int) -> bool:
    q = select(mailing_lists.c.id).where(
        mailing_lists.c.org_id == org_id, mailing_lists.c.id == list_id
    )
    return conn.execute(q).first() is not None


def existing_for(conn: Connection, org_id: int, list_id: int, module: str) -> int | None:
    """The id of the org's sync of ``module`` into ``list_id``, if there is one (any state)."""
    q = select(syncs.c.id).where(
        syncs.c.org_id == org_id, syncs.c.list_id == list_id, syncs.c.module == module
    )
    return conn.execute(q).scalar()


def create(conn: Connection, values: Mapping[str, Any]) -> int:
    return conn.execute(insert(syncs).values(**values).returning(syncs.c.id)).scalar_one()


def get(conn: Connection, org_id: int, sync_id: int) -> dict[str, Any] | None:
    q = select(syncs).where(syncs.c.org_id == org_id, syncs.c.id == sync_id)
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def list_for_org(conn: Connection, org_id: int) -> list[dict[str, Any]]:
    q = select(syncs).where(syncs.c.org_id == org_id).order_by(syncs.c.id)
    return [dict(r) for r in conn.execute(q).mappings()]


def change(conn: Connection, org_id: int, sync_id: int, values: Mapping[str, Any]) -> bool:
    res = conn.execute(
        update(syncs).where(syncs.c.org_id == org_id, syncs.c.id == sync_id).values(**values)
    )
    return bool(res.rowcount)


def remove(conn: Connection, org_id: int, sync_id: int) -> bool:
    """Delete a sync and its history; its members stay on the list (they only stop following)."""
    res = conn.execute(delete(syncs).where(syncs.c.org_id == org_id, syncs.c.id == sync_id))
    return bool(res.rowcount)


def due_full_runs(conn: Connection, limit: int = 20) -> list[tuple[int, datetime]]:
    """(sync id, requested at) of active syncs waiting for a full run, oldest request first."""
    q = (
        select(syncs.c.id, syncs.c.full_requested_at)
        .where(syncs.c.state == "active", syncs.c.full_requested_at.is_not(None))
        .order_by(syncs.c.full_requested_at, syncs.c.id)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in conn.execute(q)]


def claim_full(conn: Connection, sync_id: int, requested_at: datetime) -> dict[str, Any] | None:
    """Take the full-run request seen at ``requested_at``; the sync, or None if someone else did."""
    res = conn.execute(
        update(syncs)
        .where(
            syncs.c.id == sync_id,
            syncs.c.state == "active",
            syncs.c.full_requested_at == requested_at,
        )
        .values(full_requested_at=None)
    )
    if res.rowcount != 1:
        return None
    return dict(conn.execute(select(syncs).where(syncs.c.id == sync_id)).mappings().one())


def lock_syncs(conn: Connection, org_id: int, modules: Iterable[str]) -> list[dict[str, Any]]:
    """The org's active syncs of ``modules``, locked in id order until the transaction ends."""
    q = (
        select(syncs)
        .where(
            syncs.c.org_id == org_id,
            syncs.c.state == "active",
            syncs.c.module.in_(sorted(set(modules))),
        )
        .order_by(syncs.c.id)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return [dict(r) for r in conn.execute(q).mappings()]


# -- the CRM side ----------------------------------------------------------------------


def records_page(
    conn: Connection, module: str, org_id: int, *, after: int, limit: int
) -> list[dict[str, Any]]:
    """A page of the org's records of ``module`` in id order (a full run pages through these)."""
    table = MODULES[module]
    q = (
        select(table)
        .where(table.c.org_id == org_id, table.c.id > after)
        .order_by(table.c.id)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def contacts_of_accounts(conn: Connection, org_id: int, account_ids: Iterable[int]) -> set[int]:
    table = MODULES["contacts"]
    q = select(table.c.id).where(
        table.c.org_id == org_id, table.c.account_id.in_(sorted(set(account_ids)))
    )
    return set(conn.execute(q).scalars())


def contacts_of_deals(conn: Connection, org_id: int, deal_ids: Iterable[int]) -> set[int]:
    q = select(deals.c.contact_id).where(
        deals.c.org_id == org_id,
        deals.c.id.in_(sorted(set(deal_ids))),
        deals.c.contact_id.is_not(None),
    )
    return set(conn.execute(q).scalars())


def latest_deals(
    conn: Connection, org_id: int, contact_ids: Iterable[int]
) -> dict[int, dict[str, Any]]:
    """Each contact's most recent deal (the highest id), by contact id."""
    ids = sorted(set(contact_ids))
    if not ids:
        return {}
    newest = (
        select(func.max(deals.c.id))
        .where(deals.c.org_id == org_id, deals.c.contact_id.in_(ids))
        .group_by(deals.c.contact_id)
    )
    q = select(deals).where(deals.c.id.in_(newest))
    return {r["contact_id"]: dict(r) for r in conn.execute(q).mappings()}


# -- the list's members ----------------------------------------------------------------


def members_for(
    conn: Connection,
    list_id: int,
    *,
    emails: Iterable[str],
    module: str,
    record_ids: Iterable[int],
) -> list[dict[str, Any]]:
    """Members of the list at ``emails`` or linked to ``record_ids`` of ``module`` (any state)."""
    emails, record_ids = sorted(set(emails)), sorted(set(record_ids))
    out: dict[int, dict[str, Any]] = {}
    if emails:
        q = select(list_members).where(
            list_members.c.list_id == list_id, list_members.c.email_norm.in_(emails)
        )
        out.update((r["id"], dict(r)) for r in conn.execute(q).mappings())
    if record_ids:
        q = select(list_members).where(
            list_members.c.list_id == list_id,
            list_members.c.module == module,
            list_members.c.record_id.in_(record_ids),
        )
        out.update((r["id"], dict(r)) for r in conn.execute(q).mappings())
    return list(out.values())


def add_members(
    conn: Connection, org_id: int, list_id: int, rows: Sequence[Mapping[str, Any]], at: datetime
) -> dict[str, int]:
    """Insert members in one batched statement; their ids by ``email_norm``."""
    if not rows:
        return {}
    values = [
        {**r, "org_id": org_id, "list_id": list_id, "created_at": at, "updated_at": at}
        for r in rows
    ]
    conn.execute(insert(list_members), values)
    q = select(list_members.c.email_norm, list_members.c.id).where(
        list_members.c.list_id == list_id,
        list_members.c.email_norm.in_([r["email_norm"] for r in rows]),
    )
    return {r[0]: r[1] for r in conn.execute(q)}


def change_members(
    conn: Connection, changes: Sequence[tuple[int, Mapping[str, Any]]], at: datetime
) -> None:
    """Update members, batched per set of changed columns (one executemany each)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for member_id, values in changes:
        key = tuple(sorted(values))
        # Parameter names differ from the columns': SQLAlchemy reserves those for SET.
        row = {f"v_{k}": v for k, v in values.items()}
        groups.setdefault(key, []).append({**row, "m_id": member_id, "m_at": at})
    for columns, params in groups.items():
        stmt = (
            update(list_members)
            .where(list_members.c.id == bindparam("m_id"))
            .values({**{c: bindparam(f"v_{c}") for c in columns}, "updated_at": bindparam("m_at")})
        )
        conn.execute(stmt, params)


def remove_members(conn: Connection, member_ids: Iterable[int], at: datetime) -> None:
    """Take members off the list, keeping their rows (``removed_at``)."""
    ids = sorted(set(member_ids))
    if ids:
        conn.execute(
            update(list_members)
            .where(list_members.c.id.in_(ids), list_members.c.removed_at.is_(None))
            .values(removed_at=at, updated_at=at)
        )


def detach_members(conn: Connection, member_ids: Iterable[int], at: datetime) -> None:
    """Members that no longer follow a record (it moved to another address already listed)."""
    ids = sorted(set(member_ids))
    if ids:
        conn.execute(
            update(list_members)
            .where(list_members.c.id.in_(ids))
            .values(module=None, record_id=None, sync_id=None, updated_at=at)
        )


def orphaned_members(conn: Connection, org_id: int, list_id: int, module: str) -> list[dict]:
    """Active members of the list linked to a record of ``module`` that no longer exists."""
    table = MODULES[module]
    alive = select(table.c.id).where(table.c.org_id == org_id)
    q = select(list_members).where(
        list_members.c.list_id == list_id,
        list_members.c.module == module,
        list_members.c.record_id.is_not(None),
        list_members.c.removed_at.is_(None),
        list_members.c.record_id.not_in(alive),
    )
    return [dict(r) for r in conn.execute(q).mappings()]


# -- history -----------------------------------------------------------------------------


def add_run(conn: Connection, values: Mapping[str, Any]) -> int:
    return conn.execute(insert(sync_runs).values(**values).returning(sync_runs.c.id)).scalar_one()


def add_skips(
    conn: Connection, org_id: int, run_id: int, skips: Sequence[tuple[str, int, str | None, str]]
) -> None:
    """One row per skipped record: (module, record id, email, reason)."""
    if skips:
        conn.execute(
            insert(sync_skips),
            [
                {
                    "run_id": run_id,
                    "org_id": org_id,
                    "module": m,
                    "record_id": r,
                    "email": (e or None) and e[:320],
                    "reason": why,
                }
                for m, r, e, why in skips
            ],
        )


def runs_page(conn: Connection, sync_id: int, *, before: int, limit: int) -> list[dict[str, Any]]:
    """The sync's runs, newest first, with ids below ``before``."""
    q = (
        select(sync_runs)
        .where(sync_runs.c.sync_id == sync_id, sync_runs.c.id < before)
        .order_by(sync_runs.c.id.desc())
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def get_run(conn: Connection, sync_id: int, run_id: int) -> dict[str, Any] | None:
    q = select(sync_runs).where(sync_runs.c.sync_id == sync_id, sync_runs.c.id == run_id)
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def skips_page(conn: Connection, run_id: int, *, after: int, limit: int) -> list[dict[str, Any]]:
    q = (
        select(sync_skips)
        .where(sync_skips.c.run_id == run_id, sync_skips.c.id > after)
        .order_by(sync_skips.c.id)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]
