"""Suppressed addresses: never mailed again by the org (hard bounce, complaint, unsubscribe …)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.events import EventType
from storage.inserts import insert_ignore
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
