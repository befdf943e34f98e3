"""Suppressed addresses: never mailed again by the org (hard bounce, complaint, unsubscribe …)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import events as event_log
from storage.events import EventType
from storage.inserts import insert_ignore
from storage.payloads import suppression_lifted
from storage.schema import events
from storage.schema_sending import suppressions
from storage.types import utcnow

REASONS = ("hard_bounce", "soft_bounce", "complaint", "unsubscribe", "manual")


def suppress(
    conn: Connection,
    org_id: int,
    email_norm: str,
    reason: str,
    *,
    detail: str = "",
    send_id: int | None = None,
    at: datetime | None = None,
) -> bool:
    """Add the address unless it is already suppressed; True when newly added."""
    if reason not in REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    exists = conn.execute(
        select(suppressions.c.id).where(
            suppressions.c.org_id == org_id, suppressions.c.email_norm == email_norm
        )
    ).first()
    if exists:
        return False
    res = conn.execute(
        insert_ignore(suppressions, conn.dialect.name).values(
            org_id=org_id,
            email_norm=email_norm,
            reason=reason,
            detail=detail[:2000],
            send_id=send_id,
            created_at=at or utcnow(),
        )
    )
    return bool(res.rowcount)


def suppressed_among(conn: Connection, org_id: int, emails: Iterable[str]) -> dict[str, str]:
    """email_norm → reason for those of ``emails`` that must not be mailed."""
    wanted = sorted(set(emails))
    if not wanted:
        return {}
    q = select(suppressions.c.email_norm, suppressions.c.reason).where(
        suppressions.c.org_id == org_id, suppressions.c.email_norm.in_(wanted)
    )
    return dict(conn.execute(q).all())


def lifted_after(conn: Connection, org_id: int, email_norm: str, event_id: int) -> bool:
    """Whether someone lifted the address's suppression after event ``event_id``: a bounce
    read again (a consumer replayed from offset 0) must not undo that decision."""
    q = select(events.c.data).where(
        events.c.org_id == org_id,
        events.c.type == EventType.SUPPRESSION_LIFTED.value,
        events.c.id > event_id,
    )
    return any((data or {}).get("email") == email_norm for data in conn.execute(q).scalars())


async def list_page(
    conn: AsyncConnection, org_id: int, *, after: int, limit: int
) -> list[dict[str, Any]]:
    q = (
        select(suppressions)
        .where(suppressions.c.org_id == org_id, suppressions.c.id > after)
        .order_by(suppressions.c.id)
        .limit(limit)
    )
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def lift(conn: AsyncConnection, org_id: int, email_norm: str) -> dict[str, Any] | None:
    """Remove a suppression; returns the removed row (for the audit event) or None."""
    q = select(suppressions).where(
        suppressions.c.org_id == org_id, suppressions.c.email_norm == email_norm
    )
    row = (await conn.execute(q)).mappings().first()
    if row is None:
        return None
    await conn.execute(delete(suppressions).where(suppressions.c.id == row["id"]))
    return dict(row)


async def lift_recorded(
    conn: AsyncConnection, org_id: int, email_norm: str, user_id: int | None
) -> dict[str, Any] | None:
    """Lift a suppression and append ``suppression.lifted`` in the same transaction (the API's
    ``DELETE /api/v1/suppressions/{email}`` and the dashboard); None when it was not there."""
    removed = await lift(conn, org_id, email_norm)
    if removed is not None:
        await event_log.append(
            conn,
            [
                suppression_lifted(
                    org_id, email=email_norm, reason=removed["reason"], user_id=user_id
                )
            ],
        )
    return removed


async def search(
    conn: AsyncConnection,
    org_id: int,
    *,
    email: str = "",
    reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The org's suppressions, newest first: ``email`` is a part of the address, ``since`` and
    ``until`` bound ``created_at`` (``until`` excluded)."""
    q = select(suppressions).where(suppressions.c.org_id == org_id)
    if email:
        escaped = email.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(suppressions.c.email_norm.like(f"%{escaped}%", escape="\\"))
    if reason:
        q = q.where(suppressions.c.reason == reason)
    if since is not None:
        q = q.where(suppressions.c.created_at >= since)
    if until is not None:
        q = q.where(suppressions.c.created_at < until)
    q = q.order_by(suppressions.c.created_at.desc(), suppressions.c.id.desc()).limit(limit)
    return [dict(r) for r in (await conn.execute(q)).mappings()]
