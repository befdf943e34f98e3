"""SQL of bounce processing: claim kept bounce mail, find the send, record, count."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

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
)


def claim_pending(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """Pending bounce mail, locked for this transaction (other workers skip it)."""
    q = (
        select(inbound)
        .where(inbound.c.channel == "bounce", inbound.c.state == "pending")
        .order_by(inbound.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    return [dict(r) for r in conn.execute(q).mappings()]


def finish(conn: Connection, inbound_id: int, *, state: str, org_id: int | None, note: str) -> None:
    conn.execute(
        update(inbound)
        .where(inbound.c.id == inbound_id)
        .values(state=state, org_id=org_id, last_error=note[:2000], attempts=inbound.c.attempts + 1)
    )


def send_by_verp(conn: Connection, token: str) -> dict[str, Any] | None:
    row = conn.execute(select(*SEND_COLUMNS).where(sends.c.verp_token == token)).mappings().first()
    return dict(row) if row else None


def send_by_id(conn: Connection, send_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(*SEND_COLUMNS).where(sends.c.id == send_id)).mappings().first()
    return dict(row) if row else None


def send_by_message_id(conn: Connection, message_id: str) -> dict[str, Any] | None:
    q = select(*SEND_COLUMNS).where(sends.c.message_id == message_id).order_by(sends.c.id.desc())
    row = conn.execute(q.limit(1)).mappings().first()
    return dict(row) if row else None


def recent_send_to(conn: Connection, email_norm: str, since: datetime) -> dict[str, Any] | None:
    """The latest send to this address across orgs (last resort when nothing else matched)."""
    q = (
        select(*SEND_COLUMNS)
        .where(sends.c.to_email == email_norm, sends.c.created_at >= since)
        .order_by(sends.c.id.desc())
        .limit(2)
    )
    rows = conn.execute(q).mappings().all()
    # Two orgs mailed the same address recently: attributing it would be a guess.
    if len(rows) == 2 and rows[0]["org_id"] != rows[1]["org_id"]:
        return None
    return dict(rows[0]) if rows else None


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
        ).where(sends.c.org_id == org_id, sends.c.to_email == email_norm)
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
