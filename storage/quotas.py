"""Quota counters: one row per org, kind and local day, reserved atomically.

A reservation is an increment guarded by the limit in the UPDATE itself
(``SET used = used + :n WHERE … AND used + :n <= :limit``): on PostgreSQL the
row lock taken by the UPDATE makes concurrent reservers re-check the guard
against the committed value, so the count can never pass the limit; SQLite
has a single writer.  Callers reserve in the same transaction that enqueues
the sends, so a refused or rolled-back send never holds quota.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, select, update

from storage.inserts import insert_ignore
from storage.schema_sending import quota_usage


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: int
    before: int  # the counter before this reservation
    after: int  # and after it


def _key(org_id: int, kind: str, day: str):
    return and_(
        quota_usage.c.org_id == org_id, quota_usage.c.kind == kind, quota_usage.c.day == day
    )


def _ensure_row(conn: Connection, org_id: int, kind: str, day: str) -> None:
    conn.execute(
        insert_ignore(quota_usage, conn.dialect.name).values(
            org_id=org_id, kind=kind, day=day, used=0, warned=False
        )
    )


def used(conn: Connection, org_id: int, kind: str, day: str) -> int:
    q = select(quota_usage.c.used).where(_key(org_id, kind, day))
    return conn.execute(q).scalar() or 0


def reserve(
    conn: Connection, org_id: int, kind: str, day: str, n: int, limit: int, *, partial: bool = False
) -> Reservation:
    """Take ``n`` (or, with ``partial``, as many of ``n`` as fit) from the day's quota.

    Returns what was granted; 0 when nothing fits.  Must run inside the
    transaction that creates the sends it pays for.
    """
    if n <= 0:
        current = used(conn, org_id, kind, day)
        return Reservation(0, current, current)
    # The insert also takes SQLite's write lock first, so the rest of the
    # transaction sees (and is) the only writer.
    _ensure_row(conn, org_id, kind, day)
    key = _key(org_id, kind, day)
    if partial:
        q = select(quota_usage.c.used).where(key)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        current = conn.execute(q).scalar_one()
        n = max(0, min(n, limit - current))
        if n == 0:
            return Reservation(0, current, current)
    stmt = (
        update(quota_usage)
        .where(key, quota_usage.c.used + n <= limit)
        .values(used=quota_usage.c.used + n)
        .returning(quota_usage.c.used)
    )
    after = conn.execute(stmt).scalar()
    if after is None:
        current = used(conn, org_id, kind, day)
        return Reservation(0, current, current)
    return Reservation(n, after - n, after)


def claim_warning(conn: Connection, org_id: int, kind: str, day: str) -> bool:
    """True once per org, kind and day: the caller emits ``quota.warning``."""
    res = conn.execute(
        update(quota_usage)
        .where(_key(org_id, kind, day), quota_usage.c.warned.is_(False))
        .values(warned=True)
    )
    return bool(res.rowcount)


def usage_for_day(conn: Connection, org_id: int, day: str) -> dict[str, int]:
    q = select(quota_usage.c.kind, quota_usage.c.used).where(
        quota_usage.c.org_id == org_id, quota_usage.c.day == day
    )
    return {kind: n for kind, n in conn.execute(q).all()}


def usage_history(
    conn: Connection, org_id: int, first: str, last: str
) -> dict[str, dict[str, int]]:
    """Per kind, the count of each local day in ``[first, last]`` that has a row (ISO days
    compare as strings)."""
    q = select(quota_usage.c.kind, quota_usage.c.day, quota_usage.c.used).where(
        quota_usage.c.org_id == org_id, quota_usage.c.day >= first, quota_usage.c.day <= last
    )
    out: dict[str, dict[str, int]] = {}
    for kind, day, n in conn.execute(q).all():
        out.setdefault(kind, {})[day] = n
    return out
