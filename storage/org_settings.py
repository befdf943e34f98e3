"""Per-org settings kept on the org row (tracking skip domains)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.schema import orgs


async def tracking_skip_domains(conn: AsyncConnection, org_id: int) -> list[str]:
    q = select(orgs.c.tracking_skip_domains).where(orgs.c.id == org_id)
    return list((await conn.execute(q)).scalar() or [])


async def set_tracking_skip_domains(conn: AsyncConnection, org_id: int, domains: list[str]) -> bool:
    q = update(orgs).where(orgs.c.id == org_id).values(tracking_skip_domains=domains or None)
    return (await conn.execute(q)).rowcount > 0
