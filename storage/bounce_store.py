"""SQL of bounce processing: claim kept bounce mail, find the send, record, count."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from storage import inbound_store
from storage.schema import inbound
from storage.schema_bounces import bounces
from storage.schema_sending import sends
from storage.types import utcnow

#: What bounce processing needs of a send, and what its events carry (``payloads.send_fields``).
SEND_COLUMNS = (
    sends.c.id,
    sends.c.org_id,
    sends.c.to_email,
    sends.c.status,
    sends.c.kind,
    sends.c.module,
    sends.c.record_id,
    sends.c.user_id,
    sends.c.template_id,
    sends.c.template_version,
    sends.c.message_id,
    sends.c.campaign_id,
    sends.c.cc_emails,
)


def claim_pending(
    conn: Connection, limit: int, now: datetime, until: datetime
) -> list[dict[str, Any]]:
    """Lease up to ``limit`` pending bounce mail rows until ``until``, counting the attempt.

    The claim commits on its own, before any report is processed: a report that
    breaks its whole processing transaction (or kills its worker) has still
    used up an attempt, so it is held after a bounded number instead of being
    claimed for ever.  On PostgreSQL other workers skip the rows being claimed.
    """
    return inbound_store.claim(
        conn, limit, now, until, channels=("bounce",), columns=tuple(inbound.c)
    )


def release(conn: Connection, ids: list[int]) -> None:
    """Give claims back unprocessed (the worker stops or its transaction failed)."""
    if ids:
        conn.execute(
            update(inbound)
            .where(inbound.c.id.in_(ids), inbound.c.state == "pending")
            .values(claimed_until=None)
        )


def finish(conn: Connection, inbound_id: int, *, state: str, org_id: int | None, note: str) -> None:
    """Done or held: the attempts start again from nothing if an operator replays it."""
    conn.execute(
        update(inbound)
        .where(inbound.c.id == inbound_id)
        .values(state=state, org_id=org_id, last_error=note[:2000], claimed_until=None, attempts=0)
    )


def send_by_verp(conn: Connection, token: str) -> dict[str, Any] | None:
    row = conn.execute(select(*SEND_COLUMNS).where(sends.c.verp_token == token)).mappings().first()
    return dict(row) if row else None


def record(conn: Connection, **values: Any) -> int:
    return conn.execute(insert(bounces).values(**values).returning(bounces.c.id)).scalar_one()


def soft_count_between(
    conn: Connection, org_id: int, email_norm: str, since: datetime, until: datetime
) -> int:
    """Soft bounces for the address in (``since``, ``until``], after its last sign of delivery.

    A later open, click or reply on any send to the address proves mail gets
    through, so it resets the count.  ``until`` is the bounce being judged: a
    consumer running late counts what had happened by then, not what came after.
    """
    maxima = conn.execute(
        select(
            func.max(sends.c.opened_at), func.max(sends.c.clicked_at), func.max(sends.c.replied_at)
        ).where(sends.c.org_id == org_id, func.lower(sends.c.to_email) == email_norm)
    ).one()
    last_ok = max((t for t in maxima if t is not None), default=None)
    start = max(since, last_ok) if last_ok else since
    q = (
        select(func.count())
        .select_from(bounces)
        .where(
            bounces.c.org_id == org_id,
            bounces.c.email_norm == email_norm,
            bounces.c.kind == "soft",
            bounces.c.at > start,
            bounces.c.at <= until,
        )
    )
    return conn.execute(q).scalar_one()


def mark_send(conn: Connection, send_id: int, **values: Any) -> None:
    conn.execute(update(sends).where(sends.c.id == send_id).values(**values))


def now() -> datetime:
    return utcnow()
