"""SQL of filing: dedupe look-ups, bulk message and link inserts, the shunt, mail per record."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import insert, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.schema import deals, inbound, message_links, messages


async def existing(
    conn: AsyncConnection, keys: Iterable[tuple[int, str | None, str]]
) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
    """Which (org, Message-ID) and (org, content hash) pairs are already filed."""
    keys = list(keys)
    if not keys:
        return set(), set()
    ids = {(o, m) for o, m, _ in keys if m}
    hashes = {(o, h) for o, _, h in keys}
    conds = [tuple_(messages.c.org_id, messages.c.content_hash).in_(sorted(hashes))]
    if ids:
        conds.append(tuple_(messages.c.org_id, messages.c.message_id).in_(sorted(ids)))
    q = select(messages.c.org_id, messages.c.message_id, messages.c.content_hash).where(or_(*conds))
    seen_ids: set[tuple[int, str]] = set()
    seen_hashes: set[tuple[int, str]] = set()
    for org_id, mid, h in (await conn.execute(q)).all():
        if mid:
            seen_ids.add((org_id, mid))
        seen_hashes.add((org_id, h))
    return seen_ids, seen_hashes


async def message_by_header_id(conn: AsyncConnection, org_id: int, mid: str) -> int | None:
    q = select(messages.c.id).where(messages.c.org_id == org_id, messages.c.message_id == mid)
    return (await conn.execute(q)).scalar()


async def insert_messages(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[int]:
    if not rows:
        return []
    res = await conn.execute(
        insert(messages).returning(messages.c.id, sort_by_parameter_order=True), list(rows)
    )
    return list(res.scalars())


async def insert_links(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(message_links), list(rows))


async def shunt(conn: AsyncConnection, row: dict[str, Any]) -> int:
    """Keep mail we could not file (or that waits for another stage) for an operator."""
    res = await conn.execute(insert(inbound).values(**row).returning(inbound.c.id))
    return res.scalar_one()


LIST_COLUMNS = (
    messages.c.id,
    messages.c.message_id,
    messages.c.subject,
    messages.c.from_addr,
    messages.c.from_name,
    messages.c.to_addrs,
    messages.c.cc_addrs,
    messages.c.date,
    messages.c.direction,
    messages.c.source,
    messages.c.send_id,
    messages.c.user_id,
    messages.c.created_at,
)


async def emails_for_record(
    conn: AsyncConnection, org_id: int, module: str, rid: int, *, after: int, limit: int
) -> list[dict[str, Any]]:
    """Mail filed against a record; a deal's mail is its contact's."""
    if module == "deals":
        contact = select(deals.c.contact_id).where(deals.c.org_id == org_id, deals.c.id == rid)
        contact_id = (await conn.execute(contact)).scalar()
        if contact_id is None:
            return []
        module, rid = "contacts", contact_id
    q = (
        select(*LIST_COLUMNS)
        .join(message_links, message_links.c.message_id == messages.c.id)
        .where(
            message_links.c.org_id == org_id,
            message_links.c.module == module,
            message_links.c.record_id == rid,
            messages.c.id > after,
        )
        .order_by(messages.c.id)
        .limit(limit)
    )
    return [dict(r) for r in (await conn.execute(q)).mappings()]
