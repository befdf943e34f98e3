"""Templates and their saved versions.  Every save is a new version row.

Sends name the exact version they were rendered from, so reports can compare
versions and an edit never changes what a past send said.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.schema_sending import template_versions, templates
from storage.types import utcnow

CONTENT = ("subject", "html", "text", "header", "footer")


async def create(
    conn: AsyncConnection, org_id: int, user_id: int | None, values: dict[str, Any]
) -> int:
    now = utcnow()
    tid = (
        await conn.execute(
            insert(templates)
            .values(
                org_id=org_id,
                created_by=user_id,
                version=1,
                created_at=now,
                updated_at=now,
                **values,
            )
            .returning(templates.c.id)
        )
    ).scalar_one()
    await conn.execute(
        insert(template_versions).values(
            template_id=tid, version=1, created_at=now, **{k: values.get(k) for k in CONTENT}
        )
    )
    return tid


async def get(
    conn: AsyncConnection, org_id: int, tid: int, *, for_update: bool = False
) -> dict[str, Any] | None:
    q = select(templates).where(templates.c.org_id == org_id, templates.c.id == tid)
    if for_update and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def list_page(
    conn: AsyncConnection, org_id: int, *, after: int, limit: int, module: str | None = None
) -> list[dict[str, Any]]:
    q = select(templates).where(templates.c.org_id == org_id, templates.c.id > after)
    if module:
        q = q.where(templates.c.module == module)
    q = q.order_by(templates.c.id).limit(limit)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def save_version(
    conn: AsyncConnection, template: dict[str, Any], values: dict[str, Any]
) -> int:
    """Store ``values`` as the next version; returns its number."""
    version = template["version"] + 1
    now = utcnow()
    merged = {**{k: template.get(k) for k in (*CONTENT, "name", "module")}, **values}
    await conn.execute(
        update(templates)
        .where(templates.c.id == template["id"])
        .values(version=version, updated_at=now, **merged)
    )
    await conn.execute(
        insert(template_versions).values(
            template_id=template["id"],
            version=version,
            created_at=now,
            **{k: merged.get(k) for k in CONTENT},
        )
    )
    return version
