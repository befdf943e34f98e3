"""SQL of the send queue: enqueue, claim due sends, record delivery outcomes.

``sends`` is both the durable queue and the per-recipient status.  A worker
claims due rows by moving them to ``sending`` with a lease
(``claimed_until``); a worker that dies leaves rows whose lease runs out, and
the next claim takes them again.  On PostgreSQL the claim skips rows another
worker has locked (``FOR UPDATE SKIP LOCKED``), so several workers never
claim the same send; SQLite has one writer and claims in one UPDATE.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from storage.schema import message_links, messages
from storage.schema_sending import sends
from storage.types import UTCDateTime

CLAIM_COLUMNS = (
    sends.c.id,
    sends.c.org_id,
    sends.c.user_id,
    sends.c.kind,
    sends.c.module,
    sends.c.record_id,
    sends.c.to_email,
    sends.c.from_email,
    sends.c.message_id,
    sends.c.template_id,
    sends.c.template_version,
    sends.c.campaign_id,
    sends.c.verp_token,
    sends.c.raw,
    sends.c.cc_emails,
    sends.c.attempts,
    sends.c.created_at,
)


def insert_sends(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert queued sends; their ids in the order given."""
    if not rows:
        return []
    res = conn.execute(
        insert(sends).returning(sends.c.id, sort_by_parameter_order=True), list(rows)
    )
    return list(res.scalars())


def set_composed(conn: Connection, items: Sequence[tuple[int, str, bytes, list[str]]]) -> None:
    """(send id, subject, bytes, tracked links): composed after the insert (they carry the id)."""
    if not items:
        return
    stmt = (
        update(sends)
        .where(sends.c.id == bindparam("sid"))
        .values(raw=bindparam("raw_bytes"), subject=bindparam("subj"), links=bindparam("urls"))
    )
    conn.execute(
        stmt,
        [
            {"sid": sid, "subj": subj, "raw_bytes": raw, "urls": links}
            for sid, subj, raw, links in items
        ],
    )


def _due(now: datetime):
    return or_(
        and_(sends.c.state.in_(("queued", "deferred")), sends.c.next_attempt_at <= now),
        and_(sends.c.state == "sending", sends.c.claimed_until < now),
    )


def claim_due(
    conn: Connection, now: datetime, limit: int, lease: timedelta
) -> list[dict[str, Any]]:
    """Move up to ``limit`` due sends to ``sending`` under a lease; returns them."""
    pick = select(sends.c.id).where(_due(now)).order_by(sends.c.next_attempt_at, sends.c.id)
    pick = pick.limit(limit)
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    ids = list(conn.execute(pick).scalars())
    if not ids:
        return []
    stmt = (
        update(sends)
        .where(sends.c.id.in_(ids), _due(now))
        .values(state="sending", claimed_until=now + lease, attempts=sends.c.attempts + 1)
        .returning(*CLAIM_COLUMNS)
    )
    rows = [dict(r) for r in conn.execute(stmt).mappings()]
    rows.sort(key=lambda r: r["id"])
    return rows


def _still_held(ids: Sequence[int], claimed_until: datetime) -> tuple[ColumnElement[bool], ...]:
    """Sends among ``ids`` still claimed by the worker whose lease ends at ``claimed_until``.

    A claim is still this worker's while ``claimed_until`` is no later than its own
    lease end: a send whose lease ran out and was claimed elsewhere has a later one.
    """
    return (
        sends.c.id.in_(list(ids)),
        sends.c.state == "sending",
        sends.c.claimed_until <= claimed_until,
    )


def release_claims(conn: Connection, ids: Sequence[int], claimed_until: datetime) -> int:
    """Hand back claimed sends that were never tried: due again at once, the attempt uncounted.

    Only a claim this worker still holds changes (``claimed_until`` no later
    than its own lease): a send whose lease ran out and was claimed elsewhere
    keeps that claim.  Returns how many were released.
    """
    if not ids:
        return 0
    attempts = sends.c.attempts - 1
    stmt = (
        update(sends)
        .where(*_still_held(ids, claimed_until))
        .values(
            state=case((attempts > 0, "deferred"), else_="queued"),
            attempts=attempts,
            claimed_until=None,
        )
    )
    return conn.execute(stmt).rowcount


def renew_claims(
    conn: Connection, ids: Sequence[int], claimed_until: datetime, until: datetime
) -> list[int]:
    """Extend claims this worker still holds to ``until``; the ids it still held.

    A worker whose deliveries outlast the lease (a slow relay, a long batch)
    renews it while it is alive, so no other worker takes a send that is on
    the wire and sends it twice; a dead worker renews nothing and its lease
    runs out.  As in :func:`release_claims`, a claim is still this worker's
    while ``claimed_until`` is no later than its own lease end.
    """
    if not ids:
        return []
    stmt = (
        update(sends)
        .where(*_still_held(ids, claimed_until))
        .values(claimed_until=until)
        .returning(sends.c.id)
    )
    return list(conn.execute(stmt).scalars())


# One statement for a whole batch of successes: the ids and replies travel as
# one JSON document (SQLite) or two arrays (PostgreSQL) instead of one
# parameter set per row, so the relay's outcome write holds the GIL (and the
# event loop) for a fraction of the time an executemany takes.  On SQLite the
# unary ``+`` keeps the planner off ix_sends_queue: it must walk the batch and
# look each send up by id, not scan every ``sending`` row per batch entry.
_MARK_SENT_SQLITE = text(
    """
    UPDATE sends SET state = 'sent', status = 'sent', sent_at = :at,
        last_reply = v.reply, claimed_until = NULL, raw = NULL
    FROM (SELECT value ->> 0 AS id, value ->> 1 AS reply FROM json_each(:items)) AS v
    WHERE sends.id = v.id AND +sends.state = 'sending'
    """
).bindparams(bindparam("at", type_=UTCDateTime()))
_MARK_SENT_POSTGRESQL = text(
    """
    UPDATE sends SET state = 'sent', status = 'sent', sent_at = :at,
        last_reply = v.reply, claimed_until = NULL, raw = NULL
    FROM unnest(CAST(:ids AS BIGINT[]), CAST(:replies AS TEXT[])) AS v(id, reply)
    WHERE sends.id = v.id AND sends.state = 'sending'
    """
).bindparams(bindparam("at", type_=UTCDateTime()))


def mark_sent(conn: Connection, items: Sequence[tuple[int, str]], at: datetime) -> None:
    """(send id, reply) sent ``at`` → delivered to the relay; the raw copy is no longer needed.

    Only rows still ``sending`` change: a send whose lease ran out and was
    claimed again elsewhere keeps that claim's outcome.
    """
    if not items:
        return
    if conn.dialect.name == "sqlite":
        payload = json.dumps([(sid, reply[:2000]) for sid, reply in items])
        conn.execute(_MARK_SENT_SQLITE, {"items": payload, "at": at})
    elif conn.dialect.name == "postgresql":
        ids = [sid for sid, _ in items]
        replies = [reply[:2000] for _, reply in items]
        conn.execute(_MARK_SENT_POSTGRESQL, {"ids": ids, "replies": replies, "at": at})
    else:  # any other engine: one parameter set per row
        stmt = (
            update(sends)
            .where(sends.c.id == bindparam("sid"), sends.c.state == "sending")
            .values(
                state="sent",
                status="sent",
                sent_at=at,
                last_reply=bindparam("reply"),
                claimed_until=None,
                raw=None,
            )
        )
        conn.execute(stmt, [{"sid": sid, "reply": reply[:2000]} for sid, reply in items])


def mark_deferred(conn: Connection, items: Sequence[tuple[int, str, datetime]]) -> None:
    """(send id, reply, next attempt) → back in the queue once its backoff has passed."""
    if not items:
        return
    stmt = (
        update(sends)
        .where(sends.c.id == bindparam("sid"))
        .values(
            state="deferred",
            status="deferred",
            last_reply=bindparam("reply"),
            next_attempt_at=bindparam("when"),
            claimed_until=None,
        )
    )
    conn.execute(
        stmt, [{"sid": sid, "reply": reply[:2000], "when": when} for sid, reply, when in items]
    )


def mark_failed(conn: Connection, items: Sequence[tuple[int, str]]) -> None:
    """(send id, reply) → given up on; the raw copy stays for inspection."""
    if not items:
        return
    stmt = (
        update(sends)
        .where(sends.c.id == bindparam("sid"))
        .values(state="failed", status="failed", last_reply=bindparam("reply"), claimed_until=None)
    )
    conn.execute(stmt, [{"sid": sid, "reply": reply[:2000]} for sid, reply in items])


def mark_suppressed(conn: Connection, items: Sequence[tuple[int, str]]) -> None:
    """(send id, reason) → not sent: its address was suppressed after it was queued."""
    if not items:
        return
    stmt = (
        update(sends)
        .where(sends.c.id == bindparam("sid"), sends.c.state == "sending")
        .values(
            state="failed", status="suppressed", last_reply=bindparam("reply"), claimed_until=None
        )
    )
    conn.execute(stmt, [{"sid": sid, "reply": reply[:2000]} for sid, reply in items])


def by_verp_token(conn: Connection, token: str) -> dict[str, Any] | None:
    """The send a bounce's VERP address names (the lead's bounce processing)."""
    row = conn.execute(select(sends).where(sends.c.verp_token == token)).mappings().first()
    return dict(row) if row else None


async def get(conn: AsyncConnection, org_id: int, send_id: int) -> dict[str, Any] | None:
    q = select(sends).where(sends.c.org_id == org_id, sends.c.id == send_id)
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def reply_target(
    conn: AsyncConnection, org_id: int, message_pk: int
) -> dict[str, Any] | None:
    """A filed message of the org that a send may answer: its thread headers, subject,
    owner, sharing and the records it is filed on (``records``: (module, id) pairs)."""
    q = select(
        messages.c.id,
        messages.c.user_id,
        messages.c.message_id,
        messages.c.references,
        messages.c.subject,
        messages.c.source,
        messages.c.shared,
    ).where(messages.c.org_id == org_id, messages.c.id == message_pk)
    row = (await conn.execute(q)).mappings().first()
    if row is None:
        return None
    links = (
        select(message_links.c.module, message_links.c.record_id)
        .where(message_links.c.org_id == org_id, message_links.c.message_id == message_pk)
        .order_by(message_links.c.id)
    )
    out = dict(row)
    out["records"] = [(m, r) for m, r in (await conn.execute(links)).all()]
    return out


async def recipients(
    conn: AsyncConnection, org_id: int, send_ids: Iterable[int]
) -> list[dict[str, Any]]:
    """``id``, ``to_email`` and ``cc_emails`` of the org's sends by id, in one statement:
    what the excluded-domain sharing rule looks at for a page of events."""
    wanted = sorted({s for s in send_ids if isinstance(s, int) and not isinstance(s, bool)})
    if not wanted:
        return []
    q = select(sends.c.id, sends.c.to_email, sends.c.cc_emails).where(
        sends.c.org_id == org_id, sends.c.id.in_(wanted)
    )
    return [dict(r) for r in (await conn.execute(q)).mappings()]
