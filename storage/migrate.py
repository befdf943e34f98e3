"""Apply Alembic migrations programmatically (``mailgate db upgrade``, ``make run``, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


#: The PostgreSQL advisory lock key that serialises upgrades (any fixed 64-bit number;
#: this one spells "mailgate" in ASCII, so it is recognisable in ``pg_locks``).
UPGRADE_LOCK = 0x6D61696C67617465


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe when several processes start at once.

    Every ``mailgate serve`` upgrades before serving, so N processes started together
    on a fresh PostgreSQL database would each run the same migrations, and all but
    one would fail on "relation already exists".  On PostgreSQL the upgrade runs
    under a transaction-level advisory lock: the first process migrates, the others
    wait for its commit and then find the schema at head.  SQLite's single writer
    needs no lock (its DDL takes the database lock).
    """
    async with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK})
        await conn.run_sync(lambda sync_conn: command.upgrade(_config(sync_conn), revision))


async def current(conn: AsyncConnection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def is_current(db: Database) -> bool:
    """True when the schema is at the newest migration."""
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory(str(MIGRATIONS)).get_heads())
    try:
        async with db.connect() as conn:
            return await current(conn) in heads
    except Exception as exc:
        if "unable to open" in str(exc):
            return False
        raise
