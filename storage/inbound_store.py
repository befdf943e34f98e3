"""SQL of the ``inbound`` table: the ingest spool, its claims, and the operator views.

Every message we accept is first a row here: SMTP and the IMAP poller store it
(``pending``), the ingest runner claims pending rows under a lease, files them
and deletes the row once the filing has committed.  What the runner could not
file stays, with the reason: ``failed`` (a step kept breaking, with its name),
``refused`` (the authoritative dropbox check said no after the ``250``).  Bounce
mail is kept here too (``pending`` → the bounce worker, ``held`` when it could
not be attributed).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update

from storage.db import DriverConnection
from storage.lean import db_json, db_time, driver_sql
from storage.schema import inbound
from storage.types import utcnow

#: The channels the ingest runner files (bounce mail goes to the bounce worker).
INGEST_CHANNELS = ("dropbox", "imap", "pop")

LIST_COLUMNS = (
    inbound.c.id,
    inbound.c.org_id,
    inbound.c.user_id,
    inbound.c.channel,
    inbound.c.state,
    inbound.c.mail_from,
    inbound.c.rcpt_to,
    inbound.c.failed_stage,
    inbound.c.last_error,
    inbound.c.received_at,
    inbound.c.attempts,
)

CLAIM_COLUMNS = (
    inbound.c.id,
    inbound.c.org_id,
    inbound.c.user_id,
    inbound.c.channel,
    inbound.c.mail_from,
    inbound.c.rcpt_to,
    inbound.c.raw,
    inbound.c.attempts,
    inbound.c.origin,
    inbound.c.failed_stage,
)


_SPOOL_COLUMNS = (
    "org_id",
    "user_id",
    "channel",
    "mail_from",
    "rcpt_to",
    "state",
    "attempts",
    "raw",
    "received_at",
    "origin",
)
# ``inline``: no RETURNING of the new ids, which nobody reads.
_SPOOL = insert(inbound).values({c: bindparam(c) for c in _SPOOL_COLUMNS}).inline()


def spool(conn: Connection | DriverConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Store accepted mail: one executemany, in the driver's own terms, for a whole group.

    A receiver pays this for every group it stores; SQLAlchemy's per-row type
    processing cost more than the insert (see :mod:`storage.lean`), so it also
    runs on a bare driver connection (:meth:`storage.db.Database.run_durable_driver`).
    """
    if not rows:
        return
    at, json = db_time(conn)(utcnow()), db_json
    params = [
        (
            r.get("org_id"),
            r.get("user_id"),
            r["channel"],
            (r.get("mail_from") or "")[:998],
            json(r.get("rcpt_to") or []),
            r.get("state", "pending"),
            0,
            r["raw"],
            at,
            None if r.get("origin") is None else json(r["origin"]),
        )
        for r in rows
    ]
    sql = driver_sql(conn, "inbound_spool", _SPOOL, _SPOOL_COLUMNS)
    conn.exec_driver_sql(sql, params)


def _claimable(now: datetime, channels: Sequence[str] = INGEST_CHANNELS):
    return (
        (inbound.c.state == "pending")
        & inbound.c.channel.in_(channels)
        & or_(inbound.c.claimed_until.is_(None), inbound.c.claimed_until < now)
    )


def claim(
    conn: Connection,
    limit: int,
    now: datetime,
    until: datetime,
    *,
    channels: Sequence[str] = INGEST_CHANNELS,
    columns: Sequence[Any] = CLAIM_COLUMNS,
) -> list[dict[str, Any]]:
    """Lease up to ``limit`` pending rows of ``channels`` until ``until``, oldest first.

    The one lease claim on ``inbound``: the ingest runner claims mail to file,
    the bounce runner (``channels=("bounce",)``) bounce mail to classify.  A
    claim whose lease ran out (its runner died) is claimable again.  On
    PostgreSQL several nodes claim at once and skip each other's locked rows;
    SQLite's writer transaction (``BEGIN IMMEDIATE``) already serialises them.
    ``attempts`` counts claims, so a message that kills its runner is still
    given up on after the bounded number of tries.
    """
    pick = select(inbound.c.id).where(_claimable(now, channels))
    pick = pick.order_by(inbound.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    ids = list(conn.execute(pick).scalars())
    if not ids:
        return []
    conn.execute(
        update(inbound)
        .where(inbound.c.id.in_(ids))
        .values(claimed_until=until, attempts=inbound.c.attempts + 1)
    )
    q = select(*columns).where(inbound.c.id.in_(ids)).order_by(inbound.c.id)
    return [dict(r) for r in conn.execute(q).mappings()]


def claimable(conn: Connection, now: datetime) -> bool:
    """Whether :func:`claim` would find anything: a plain read, for an idle runner's poll.

    On SQLite a claim takes the one write lock even when it finds nothing; an
    idle runner looking every few milliseconds must not hold up the receivers'
    durable writes.
    """
    return conn.execute(select(inbound.c.id).where(_claimable(now)).limit(1)).first() is not None


def forget(conn: Connection, ids: Sequence[int]) -> None:
    """Filed (or found to be a duplicate, or not ours): the messages table is the record now."""
    if ids:
        conn.execute(delete(inbound).where(inbound.c.id.in_(list(ids))))


def keep(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Set state, failed stage, reason and next try of handled rows (one executemany).

    ``rows``: ``{"id", "state", "failed_stage", "last_error", "claimed_until"}``;
    a ``pending`` row with a future ``claimed_until`` is retried after it.
    """
    if not rows:
        return
    stmt = (
        update(inbound)
        .where(inbound.c.id == bindparam("_id"))
        .values(
            state=bindparam("_state"),
            failed_stage=bindparam("_stage"),
            last_error=bindparam("_error"),
            claimed_until=bindparam("_until"),
        )
    )
    conn.execute(
        stmt,
        [
            {
                "_id": r["id"],
                "_state": r["state"],
                "_stage": r.get("failed_stage"),
                "_error": (r.get("last_error") or "")[:2000] or None,
                "_until": r.get("claimed_until"),
            }
            for r in rows
        ],
    )


def release(conn: Connection, ids: Sequence[int]) -> None:
    """Give claims back at once (a runner stopping), instead of letting the lease run out."""
    if ids:
        conn.execute(
            update(inbound)
            .where(inbound.c.id.in_(list(ids)), inbound.c.state == "pending")
            .values(claimed_until=None)
        )


def count_pending(conn: Connection) -> int:
    """Mail stored but not yet filed (tests wait for it to reach 0; a health figure)."""
    q = select(func.count()).where(
        inbound.c.state == "pending", inbound.c.channel.in_(INGEST_CHANNELS)
    )
    return conn.execute(q).scalar_one()


def list_state(conn: Connection, state: str, limit: int) -> list[dict[str, Any]]:
    q = select(*LIST_COLUMNS).where(inbound.c.state == state).order_by(inbound.c.id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


#: What the dashboard's "mail needing attention" lists: parked mail and held bounce mail.
ATTENTION_STATES = ("failed", "refused", "held")


def kept_for_org(
    conn: Connection, org_id: int | None, *, unowned_bounces: bool, limit: int
) -> list[dict[str, Any]]:
    """An org's parked mail (failed, refused) and held bounce mail, oldest first; with
    ``unowned_bounces`` also the held bounce mail no org could be found for (``org_id`` NULL).
    ``org_id`` None: no org's own rows (an operator who administers none)."""
    owners = []
    if org_id is not None:
        owners.append(inbound.c.org_id == org_id)
    if unowned_bounces:
        owners.append(inbound.c.org_id.is_(None) & (inbound.c.channel == "bounce"))
    if not owners:
        return []
    q = (
        select(*LIST_COLUMNS)
        .where(inbound.c.state.in_(ATTENTION_STATES), or_(*owners))
        .order_by(inbound.c.id)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def get(conn: Connection, inbound_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(inbound).where(inbound.c.id == inbound_id)).mappings().first()
    return dict(row) if row else None


def set_state(conn: Connection, inbound_id: int, state: str, note: str | None = None) -> None:
    values: dict[str, Any] = {"state": state, "claimed_until": None}
    if note is not None:
        values["last_error"] = note[:2000]
    conn.execute(update(inbound).where(inbound.c.id == inbound_id).values(**values))


def kept_for_mailbox(conn: Connection, user_id: int, mailbox_id: int) -> list[dict[str, Any]]:
    """Polled mail of one mailbox that is not filed: parked, or waiting to be tried again.

    ``failed`` and ``refused`` rows are parked for an operator; a ``pending`` row
    with a failed stage broke once and is retried later.  Only the few columns a
    status shows are read (never ``raw``); the mailbox is in the JSON ``origin``,
    compared here rather than in SQL, which both databases spell differently.
    """
    q = (
        select(
            inbound.c.id,
            inbound.c.state,
            inbound.c.failed_stage,
            inbound.c.last_error,
            inbound.c.attempts,
            inbound.c.origin,
        )
        .where(
            inbound.c.user_id == user_id,
            inbound.c.channel.in_(("imap", "pop")),
            or_(
                inbound.c.state.in_(("failed", "refused")),
                (inbound.c.state == "pending") & inbound.c.failed_stage.is_not(None),
            ),
        )
        .order_by(inbound.c.id)
    )
    return [
        {k: v for k, v in r.items() if k != "origin"}
        for r in conn.execute(q).mappings()
        if (r["origin"] or {}).get("mailbox_id") == mailbox_id
    ]
