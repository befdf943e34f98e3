"""CRM records: leads, contacts, accounts, deals.  Every query is scoped to one org."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.schema import accounts, contacts, deals, leads, message_links
from storage.types import utcnow

MODULES: dict[str, Table] = {
    "leads": leads,
    "contacts": contacts,
    "accounts": accounts,
    "deals": deals,
}

#: Fields an API caller may set, per module (ids and bookkeeping are ours).
WRITABLE: dict[str, tuple[str, ...]] = {
    "leads": (
        "first_name",
        "last_name",
        "email",
        "company",
        "phone",
        "title",
        "status",
        "do_not_mail",
    ),
    "contacts": ("first_name", "last_name", "email", "account_id", "phone", "title", "do_not_mail"),
    "accounts": ("name",),
    "deals": ("name", "account_id", "contact_id", "stage", "amount", "closing_date"),
}


async def create(conn: AsyncConnection, module: str, org_id: int, values: dict[str, Any]) -> int:
    table = MODULES[module]
    res = await conn.execute(insert(table).values(org_id=org_id, **values).returning(table.c.id))
    return res.scalar_one()


async def insert_many(
    conn: AsyncConnection, module: str, org_id: int, rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Insert records in batched statements; each new row as stored (with its id).

    The rows come back from ``RETURNING`` in whatever order the engine gives
    (no per-row round trip to keep them in parameter order): each carries its
    own values, which is all a caller building one event per record needs.
    """
    if not rows:
        return []
    table = MODULES[module]
    columns = sorted({k for r in rows for k in r})
    stmt = insert(table).returning(table.c.id, *(table.c[c] for c in columns))
    res = await conn.execute(stmt, [{**r, "org_id": org_id} for r in rows])
    return [dict(r) for r in res.mappings()]


async def existing_emails(
    conn: AsyncConnection, module: str, org_id: int, emails: Sequence[str]
) -> set[str]:
    """Which of ``emails`` (normalised) already belong to a record of ``module``."""
    table = MODULES[module]
    q = select(table.c.email_norm).where(
        table.c.org_id == org_id, table.c.email_norm.in_(list(emails))
    )
    return set((await conn.execute(q)).scalars())


def records_by_ids(
    conn: Connection, module: str, org_id: int, ids: Iterable[int]
) -> dict[int, dict[str, Any]]:
    """The org's records of ``module`` among ``ids``, by id (missing ids are absent)."""
    table = MODULES[module]
    q = select(table).where(table.c.org_id == org_id, table.c.id.in_(sorted(set(ids))))
    return {row["id"]: dict(row) for row in conn.execute(q).mappings()}


async def get(conn: AsyncConnection, module: str, org_id: int, rid: int) -> dict[str, Any] | None:
    table = MODULES[module]
    q = select(table).where(table.c.org_id == org_id, table.c.id == rid)
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def list_page(
    conn: AsyncConnection,
    module: str,
    org_id: int,
    *,
    after: int,
    limit: int,
    email_norm: str | None = None,
) -> list[dict[str, Any]]:
    table = MODULES[module]
    q = select(table).where(table.c.org_id == org_id, table.c.id > after)
    if email_norm is not None and "email_norm" in table.c:
        q = q.where(table.c.email_norm == email_norm)
    rows = (await conn.execute(q.order_by(table.c.id).limit(limit))).mappings().all()
    return [dict(r) for r in rows]


async def patch(
    conn: AsyncConnection, module: str, org_id: int, rid: int, values: dict[str, Any]
) -> bool:
    table = MODULES[module]
    res = await conn.execute(
        update(table).where(table.c.org_id == org_id, table.c.id == rid).values(**values)
    )
    return bool(res.rowcount)


async def remove(conn: AsyncConnection, module: str, org_id: int, rid: int) -> bool:
    table = MODULES[module]
    await conn.execute(
        delete(message_links).where(
            message_links.c.org_id == org_id,
            message_links.c.module == module,
            message_links.c.record_id == rid,
        )
    )
    res = await conn.execute(delete(table).where(table.c.org_id == org_id, table.c.id == rid))
    return bool(res.rowcount)


async def mark_converted(
    conn: AsyncConnection,
    org_id: int,
    lead_id: int,
    *,
    account_id: int,
    contact_id: int,
    deal_id: int | None,
) -> bool:
    """The lead keeps its row (history) but stops matching mail; its mail moves to the contact.

    False when the lead was converted meanwhile: the guarded UPDATE is what makes two
    simultaneous conversions convert once (on PostgreSQL it waits for the other's row
    lock, then sees ``converted_at`` set); the caller rolls back its account and contact.
    """
    res = await conn.execute(
        update(leads)
        .where(leads.c.org_id == org_id, leads.c.id == lead_id, leads.c.converted_at.is_(None))
        .values(
            converted_at=utcnow(),
            status="converted",
            converted_account_id=account_id,
            converted_contact_id=contact_id,
            converted_deal_id=deal_id,
        )
    )
    if not res.rowcount:
        return False
    lead_links = (
        message_links.c.org_id == org_id,
        message_links.c.module == "leads",
        message_links.c.record_id == lead_id,
    )
    already = select(message_links.c.message_id).where(
        message_links.c.org_id == org_id,
        message_links.c.module == "contacts",
        message_links.c.record_id == contact_id,
    )
    await conn.execute(
        delete(message_links).where(*lead_links, message_links.c.message_id.in_(already))
    )
    await conn.execute(
        update(message_links).where(*lead_links).values(module="contacts", record_id=contact_id)
    )
    return True
