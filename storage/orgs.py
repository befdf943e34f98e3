"""Organizations, users, API tokens and dropbox senders."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.schema import api_tokens, orgs, user_senders, users


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_org(conn: AsyncConnection, **values: Any) -> int:
    res = await conn.execute(insert(orgs).values(**values).returning(orgs.c.id))
    return res.scalar_one()


async def get_org(conn: AsyncConnection, org_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(select(orgs).where(orgs.c.id == org_id))).mappings().first()
    return dict(row) if row else None


async def find_org(conn: AsyncConnection, ref: str) -> dict[str, Any] | None:
    """By id or by name: the CLI accepts either."""
    q = select(orgs).where(orgs.c.name == ref)
    if ref.isdigit():
        q = select(orgs).where((orgs.c.id == int(ref)) | (orgs.c.name == ref))
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


def orgs_by_ref(conn: Connection, ref: str | None = None) -> list[dict[str, Any]]:
    """Every org in id order, or the one named by id or name (ops reports)."""
    q = select(orgs).order_by(orgs.c.id)
    if ref is not None:
        cond = orgs.c.name == ref
        if ref.isdigit():
            cond = cond | (orgs.c.id == int(ref))
        q = q.where(cond)
    return [dict(r) for r in conn.execute(q).mappings()]


async def count_orgs(conn: AsyncConnection) -> int:
    """How many orgs the installation holds (one: its unowned bounce mail can only be theirs)."""
    return (await conn.execute(select(func.count()).select_from(orgs))).scalar_one()


async def create_user(conn: AsyncConnection, **values: Any) -> int:
    res = await conn.execute(insert(users).values(**values).returning(users.c.id))
    return res.scalar_one()


async def get_user(conn: AsyncConnection, user_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(select(users).where(users.c.id == user_id))).mappings().first()
    return dict(row) if row else None


async def find_user(conn: AsyncConnection, ref: str) -> dict[str, Any] | None:
    """By id (all digits) or by normalised address (the caller normalises it)."""
    if ref.isdigit():
        q = select(users).where(users.c.id == int(ref))
    else:
        q = select(users).where(users.c.email_norm == ref).order_by(users.c.id)
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


def active_users(conn: Connection, org_id: int) -> int:
    """The org's active users: its licenses, which the quotas and address limits scale with.

    The one count every caller uses; run it in the transaction whose decision
    depends on it (a quota reservation, an address add under the org lock).
    """
    q = select(func.count()).select_from(users).where(users.c.org_id == org_id, users.c.active)
    return conn.execute(q).scalar_one()


async def count_active_users(conn: AsyncConnection, org_id: int) -> int:
    """:func:`active_users` for async callers."""
    return await conn.run_sync(active_users, org_id)


def dropbox_owner(conn: Connection, token: str) -> tuple[dict[str, Any], set[str]] | None:
    """The active user behind a dropbox token and every address allowed to write to it."""
    q = (
        select(users, user_senders.c.email_norm.label("extra_sender"))
        .outerjoin(user_senders, user_senders.c.user_id == users.c.id)
        .where(users.c.dropbox_token == token, users.c.active)
    )
    rows = conn.execute(q).mappings().all()
    if not rows:
        return None
    user = {k: v for k, v in rows[0].items() if k != "extra_sender"}
    allowed = {user["email_norm"], *(r["extra_sender"] for r in rows if r["extra_sender"])}
    return user, allowed


async def set_dropbox_token(conn: AsyncConnection, user_id: int, token: str) -> None:
    await conn.execute(update(users).where(users.c.id == user_id).values(dropbox_token=token))


#: Characters of a token kept in clear to tell tokens apart: "mg_" and four of its 43.
TOKEN_HINT_LENGTH = 7


async def add_api_token(conn: AsyncConnection, user_id: int, token: str, label: str = "") -> int:
    """Store a new token (its hash and a short hint only); its id, for listing and revoking."""
    res = await conn.execute(
        insert(api_tokens)
        .values(
            user_id=user_id,
            token_hash=token_hash(token),
            hint=token[:TOKEN_HINT_LENGTH],
            label=label[:100],
        )
        .returning(api_tokens.c.id)
    )
    return res.scalar_one()


#: What a token listing shows: never the token or its hash.
_TOKEN_LISTING = (
    api_tokens.c.id,
    api_tokens.c.user_id,
    users.c.email.label("user_email"),
    api_tokens.c.hint,
    api_tokens.c.label,
    api_tokens.c.created_at,
)


async def list_api_tokens(
    conn: AsyncConnection, *, org_id: int, user_id: int | None = None
) -> list[dict[str, Any]]:
    """The org's tokens (or one user's), oldest first; never the token or its hash."""
    q = (
        select(*_TOKEN_LISTING)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(users.c.org_id == org_id)
        .order_by(api_tokens.c.id)
    )
    if user_id is not None:
        q = q.where(api_tokens.c.user_id == user_id)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def get_api_token(conn: AsyncConnection, token_id: int) -> dict[str, Any] | None:
    """One token's listing row with its user's org (who may revoke it), or None."""
    q = (
        select(*_TOKEN_LISTING, users.c.org_id)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(api_tokens.c.id == token_id)
    )
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def revoke_api_tokens(
    conn: AsyncConnection,
    user_id: int,
    *,
    token_id: int | None = None,
    label: str | None = None,
    keep: int | None = None,
) -> int:
    """Delete a user's tokens (one by id, those with ``label``, all but ``keep``); how many."""
    q = delete(api_tokens).where(api_tokens.c.user_id == user_id)
    if token_id is not None:
        q = q.where(api_tokens.c.id == token_id)
    if label is not None:
        q = q.where(api_tokens.c.label == label)
    if keep is not None:
        q = q.where(api_tokens.c.id != keep)
    return (await conn.execute(q)).rowcount or 0


async def user_by_api_token(conn: AsyncConnection, token: str) -> dict[str, Any] | None:
    """The active user a token belongs to, with ``token_id`` (which of their tokens it is)."""
    q = (
        select(users, api_tokens.c.id.label("token_id"))
        .join(api_tokens, api_tokens.c.user_id == users.c.id)
        .where(api_tokens.c.token_hash == token_hash(token), users.c.active)
    )
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def list_senders(conn: AsyncConnection, user_id: int) -> list[str]:
    q = select(user_senders.c.email_norm).where(user_senders.c.user_id == user_id)
    return list((await conn.execute(q.order_by(user_senders.c.id))).scalars())


async def add_sender(conn: AsyncConnection, user_id: int, email_norm: str) -> None:
    await conn.execute(insert(user_senders).values(user_id=user_id, email_norm=email_norm))


async def remove_sender(conn: AsyncConnection, user_id: int, email_norm: str) -> int:
    res = await conn.execute(
        delete(user_senders).where(
            user_senders.c.user_id == user_id, user_senders.c.email_norm == email_norm
        )
    )
    return res.rowcount or 0


# -- users of an org: listing, (de)activation, dropbox settings -----------------------------


async def list_users(conn: AsyncConnection, org_id: int) -> list[dict[str, Any]]:
    """The org's users, active or not, in id order (an org has a handful, not thousands)."""
    q = select(users).where(users.c.org_id == org_id).order_by(users.c.id)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def get_org_user(conn: AsyncConnection, org_id: int, user_id: int) -> dict[str, Any] | None:
    """One user of ``org_id``; another org's user is None, as if it did not exist."""
    q = select(users).where(users.c.org_id == org_id, users.c.id == user_id)
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


def user_for_update(conn: Connection, user_id: int) -> dict[str, Any] | None:
    """A user by id, for a write that decides on it (run under the org lock)."""
    row = conn.execute(select(users).where(users.c.id == user_id)).mappings().first()
    return dict(row) if row else None


def active_admins(conn: Connection, org_id: int) -> int:
    """Active admins of the org: the last one may not be deactivated."""
    q = (
        select(func.count())
        .select_from(users)
        .where(users.c.org_id == org_id, users.c.active, users.c.is_admin)
    )
    return conn.execute(q).scalar_one()


def set_active(conn: Connection, org_id: int, user_id: int, *, active: bool, at: Any) -> None:
    """(De)activate a user; ``deactivated_at`` records when, and is cleared on reactivation."""
    conn.execute(
        update(users)
        .where(users.c.org_id == org_id, users.c.id == user_id)
        .values(active=active, deactivated_at=None if active else at)
    )


async def set_dropbox_options(
    conn: AsyncConnection, org_id: int, user_id: int, **values: str
) -> None:
    """``dropbox_setting`` and/or ``dropbox_search`` (the caller validates them)."""
    q = update(users).where(users.c.org_id == org_id, users.c.id == user_id).values(**values)
    await conn.execute(q)


async def replace_senders(conn: AsyncConnection, user_id: int, emails: list[str]) -> None:
    """The user's extra dropbox senders become exactly ``emails`` (normalised, deduplicated)."""
    await conn.execute(delete(user_senders).where(user_senders.c.user_id == user_id))
    if emails:
        await conn.execute(
            insert(user_senders), [{"user_id": user_id, "email_norm": e} for e in emails]
        )


async def update_org(conn: AsyncConnection, org_id: int, **values: Any) -> None:
    """Plan and add-on changes (``gateway.org.admin.update_org`` checks them first)."""
    await conn.execute(update(orgs).where(orgs.c.id == org_id).values(**values))


def org_row(conn: Connection, org_id: int) -> dict[str, Any] | None:
    """:func:`get_org` for a synchronous write (``Database.run_write``)."""
    row = conn.execute(select(orgs).where(orgs.c.id == org_id)).mappings().first()
    return dict(row) if row else None
