"""``INSERT … ON CONFLICT DO NOTHING`` for both engines: the one insert-or-ignore helper.

Races on a unique key (two requests booking the same quota day, two bounces
suppressing the same address) lose quietly instead of failing the
transaction: the loser's row is simply not inserted.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import Insert


def insert_ignore(table: Table, dialect: str) -> Insert:
    """An insert into ``table`` that skips rows conflicting with a unique key.

    ``dialect`` is the engine's name (``conn.dialect.name``, ``Database.dialect``).
    """
    if dialect == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing()
    raise ValueError(f"no insert-or-ignore for the {dialect!r} dialect")
