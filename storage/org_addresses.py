"""An org's shared From addresses (``support@`` …), read and written in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.orgs import active_users
from storage.schema import orgs
from storage.schema_sending import org_addresses


def _public(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "email": row["email_norm"], "name": row["name"]}


async def list_addresses(conn: AsyncConnection, org_id: int) -> list[dict[str, Any]]:
    q = select(org_addresses).where(org_addresses.c.org_id == org_id).order_by(org_addresses.c.id)
    return [_public(r) for r in (await conn.execute(q)).mappings()]


def lock_org(conn: Connection, org_id: int) -> bool:
    """Hold the org row until commit, so two adds cannot both pass the limit check.

    PostgreSQL takes a row lock; SQLite ignores ``FOR UPDATE`` but ``run_write``
    already opens the transaction with ``BEGIN IMMEDIATE``.
    """
    q = select(orgs.c.id).where(orgs.c.id == org_id).with_for_update()
    return conn.execute(q).first() is not None


def counts(conn: Connection, org_id: int) -> tuple[int, int]:
    """(addresses the org has, its active users)."""
    have = conn.execute(
        select(func.count()).select_from(org_addresses).where(org_addresses.c.org_id == org_id)
    ).scalar_one()
    return have, active_users(conn, org_id)


def find(conn: Connection, org_id: int, email_norm: str) -> dict[str, Any] | None:
    q = select(org_addresses).where(
        org_addresses.c.org_id == org_id, org_addresses.c.email_norm == email_norm
    )
    row = conn.execute(q).mappings().first()
    return _public(row) if row else None


async def get_by_email(
    conn: AsyncConnection, org_id: int, email_norm: str
) -> dict[str, Any] | None:
    """:func:`find` for async callers (the API's ``from`` check)."""
    return await conn.run_sync(find, org_id, email_norm)


def insert_address(conn: Connection, org_id: int, email_norm: str, name: str) -> dict[str, Any]:
    new_id = conn.execute(
        insert(org_addresses)
        .values(org_id=org_id, email_norm=email_norm, name=name)
        .returning(org_addresses.c.id)
    ).scalar_one()
    return {"id": new_id, "email": email_norm, "name": name}


async def remove(conn: AsyncConnection, org_id: int, address_id: int) -> bool:
    q = delete(org_addresses).where(
        org_addresses.c.org_id == org_id, org_addresses.c.id == address_id
    )
    return (await conn.execute(q)).rowcount > 0


async def remove_email(conn: AsyncConnection, org_id: int, email_norm: str) -> bool:
    q = delete(org_addresses).where(
        org_addresses.c.org_id == org_id, org_addresses.c.email_norm == email_norm
    )
    return (await conn.execute(q)).rowcount > 0
