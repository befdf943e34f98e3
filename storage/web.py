"""SQL of the web dashboard: passwords, sessions, failed logins."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.orgs import token_hash
from storage.schema import users
from storage.schema_web import login_failures, web_sessions


async def set_password(conn: AsyncConnection, user_id: int, password_hash: str | None) -> bool:
    """Set (or clear) a user's password; every open session of theirs ends with it."""
    q = update(users).where(users.c.id == user_id).values(password_hash=password_hash)
    changed = (await conn.execute(q)).rowcount > 0
    await conn.execute(delete(web_sessions).where(web_sessions.c.user_id == user_id))
    return changed


async def user_for_login(conn: AsyncConnection, email_norm: str) -> list[dict[str, Any]]:
    """Active users with that address and a password (one per org that has it)."""
    q = select(users).where(
        users.c.email_norm == email_norm, users.c.active, users.c.password_hash.is_not(None)
    )
    return [dict(r) for r in (await conn.execute(q.order_by(users.c.id))).mappings()]


async def create_session(
    conn: AsyncConnection, user_id: int, token: str, csrf: str, now: datetime, expires: datetime
) -> None:
    await conn.execute(
        insert(web_sessions).values(
            token_hash=token_hash(token),
            user_id=user_id,
            csrf=csrf,
            created_at=now,
            expires_at=expires,
        )
    )


async def session_user(conn: AsyncConnection, token: str, now: datetime) -> dict[str, Any] | None:
    """The active user of an unexpired session, with the session's ``csrf``."""
    q = (
        select(users, web_sessions.c.csrf)
        .join(web_sessions, web_sessions.c.user_id == users.c.id)
        .where(
            web_sessions.c.token_hash == token_hash(token),
            web_sessions.c.expires_at > now,
            users.c.active,
        )
    )
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def end_session(conn: AsyncConnection, token: str) -> None:
    await conn.execute(delete(web_sessions).where(web_sessions.c.token_hash == token_hash(token)))


async def end_expired(conn: AsyncConnection, now: datetime) -> None:
    await conn.execute(delete(web_sessions).where(web_sessions.c.expires_at <= now))


async def recent_failures(
    conn: AsyncConnection, email_norm: str, client: str, since: datetime
) -> tuple[int, int]:
    """Failed logins since ``since``: (for this address, from this client)."""
    by_email = select(func.count()).where(
        login_failures.c.email_norm == email_norm, login_failures.c.at > since
    )
    by_client = select(func.count()).where(
        login_failures.c.client == client, login_failures.c.at > since
    )
    return (
        (await conn.execute(by_email)).scalar_one(),
        (await conn.execute(by_client)).scalar_one(),
    )


async def record_failure(
    conn: AsyncConnection, email_norm: str, client: str, now: datetime
) -> None:
    await conn.execute(
        insert(login_failures).values(email_norm=email_norm[:320], client=client[:64], at=now)
    )


async def forget_failures(conn: AsyncConnection, email_norm: str, before: datetime) -> None:
    """A successful login clears its address's failures; old rows of anyone go too."""
    await conn.execute(
        delete(login_failures).where(
            or_(login_failures.c.email_norm == email_norm, login_failures.c.at < before)
        )
    )
