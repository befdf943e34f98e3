"""SQL of filing: context, dedupe look-ups, record matching, bulk inserts, the shunt.

These are synchronous functions over a plain ``Connection``: the intake writer
runs a whole batch of them in one transaction through ``Database.run_write``.
Reading a record's mail (the API) is async.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select, union_all
from sqlalchemy import literal as sa_literal
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.schema import (
    contacts,
    inbound,
    leads,
    message_links,
    messages,
    orgs,
    user_senders,
    users,
)
from storage.schema_sending import sends


def load_context(
    conn: Connection, org_ids: Sequence[int], user_ids: Sequence[int]
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]], dict[int, set[str]]]:
    """Orgs, users and each user's own addresses (their address + allowed senders)."""
    org_rows = conn.execute(select(orgs).where(orgs.c.id.in_(list(org_ids)))).mappings()
    org_map = {r["id"]: dict(r) for r in org_rows}
    user_map: dict[int, dict[str, Any]] = {}
    own: dict[int, set[str]] = {}
    for r in conn.execute(select(users).where(users.c.id.in_(list(user_ids)))).mappings():
        user_map[r["id"]] = dict(r)
        own.setdefault(r["id"], set()).add(r["email_norm"])
    q = select(user_senders.c.user_id, user_senders.c.email_norm).where(
        user_senders.c.user_id.in_(list(user_ids))
    )
    for uid, email in conn.execute(q).all():
        own.setdefault(uid, set()).add(email)
    return org_map, user_map, own


def existing(
    conn: Connection, keys: Iterable[tuple[int, str | None, str]]
) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
    """Which (org, Message-ID) and (org, content hash) pairs are already filed."""
    keys = list(keys)
    if not keys:
        return set(), set()
    ids = {(o, m) for o, m, _ in keys if m}
    hashes = {(o, h) for o, _, h in keys}
    cols = (messages.c.org_id, messages.c.message_id, messages.c.content_hash)
    parts = []
    # One equality-plus-IN query per org and key: each is a seek on a unique index
    # (an OR over both keys made SQLite scan the org's whole mailbox).
    for org_id in sorted({o for o, _, _ in keys}):
        org_hashes = sorted(h for o, h in hashes if o == org_id)
        parts.append(
            select(*cols).where(
                messages.c.org_id == org_id, messages.c.content_hash.in_(org_hashes)
            )
        )
        org_ids = sorted(m for o, m in ids if o == org_id)
        if org_ids:
            parts.append(
                select(*cols).where(messages.c.org_id == org_id, messages.c.message_id.in_(org_ids))
            )
    q = union_all(*parts) if len(parts) > 1 else parts[0]
    seen_ids: set[tuple[int, str]] = set()
    seen_hashes: set[tuple[int, str]] = set()
    for org_id, mid, h in conn.execute(q).all():
        if mid and (org_id, mid) in ids:
            seen_ids.add((org_id, mid))
        if (org_id, h) in hashes:
            seen_hashes.add((org_id, h))
    return seen_ids, seen_hashes


def records_by_email(
    conn: Connection, org_id: int, emails: Iterable[str]
) -> dict[str, list[tuple[str, int]]]:
    """email_norm → [(module, id)] over leads (not converted) and contacts."""
    wanted = sorted(set(emails))
    found: dict[str, list[tuple[str, int]]] = {}
    if not wanted:
        return found
    lead_q = select(sa_literal("leads"), leads.c.id, leads.c.email_norm).where(
        leads.c.org_id == org_id, leads.c.email_norm.in_(wanted), leads.c.converted_at.is_(None)
    )
    contact_q = select(sa_literal("contacts"), contacts.c.id, contacts.c.email_norm).where(
        contacts.c.org_id == org_id, contacts.c.email_norm.in_(wanted)
    )
    for module, rid, email in sorted(conn.execute(union_all(lead_q, contact_q)).all()):
        found.setdefault(email, []).append((module, rid))
    return found


def create_record(conn: Connection, module: str, org_id: int, values: dict[str, Any]) -> int:
    table = {"leads": leads, "contacts": contacts}[module]
    return conn.execute(
        insert(table).values(org_id=org_id, **values).returning(table.c.id)
    ).scalar_one()


def insert_messages(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    if not rows:
        return []
    res = conn.execute(
        insert(messages).returning(messages.c.id, sort_by_parameter_order=True), list(rows)
    )
    return list(res.scalars())


def insert_links(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(message_links), list(rows))


def shunt(conn: Connection, row: dict[str, Any]) -> int:
    """Keep mail we could not file (or that waits for another stage) for an operator."""
    return conn.execute(insert(inbound).values(**row).returning(inbound.c.id)).scalar_one()


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
    messages.c.seen,
    messages.c.created_at,
)


async def emails_for_record(
    conn: AsyncConnection,
    org_id: int,
    module: str,
    rid: int,
    *,
    after: int,
    limit: int,
    hidden_owners: set[int] | frozenset[int] = frozenset(),
) -> list[dict[str, Any]]:
    """Mail filed against a record (deals: resolve to their contact first), newest last.

    ``hidden_owners``: users whose mail the asker may not see (sharing rules).
    Our own sends carry their recipient status (sent, opened, clicked, bounced …).
    """
    send = and_(sends.c.id == messages.c.send_id, sends.c.org_id == org_id)
    q = (
        select(*LIST_COLUMNS, sends.c.status.label("send_status"))
        .join(message_links, message_links.c.message_id == messages.c.id)
        .outerjoin(sends, send)
        .where(
            message_links.c.org_id == org_id,
            message_links.c.module == module,
            message_links.c.record_id == rid,
            messages.c.id > after,
        )
        .order_by(messages.c.id)
        .limit(limit)
    )
    if hidden_owners:
        q = q.where(
            or_(messages.c.user_id.is_(None), messages.c.user_id.notin_(sorted(hidden_owners)))
        )
    return [dict(r) for r in (await conn.execute(q)).mappings()]
