"""Statements for the batch writers, run with ``exec_driver_sql`` and plain tuples.

SQLAlchemy's per-row parameter processing (type decorators, JSON, dict keys)
was most of a batch writer's time, and the writers share the GIL with the
servers.  So the hottest statements are compiled once per dialect, and values
are given in the driver's own terms (:func:`db_time`, :func:`db_json`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

_COMPILED: dict[tuple[str, str], str] = {}


def driver_sql(conn: Connection, name: str, stmt: Any, order: Sequence[str]) -> str:
    """``stmt`` compiled once per dialect; its positional parameters must follow ``order``."""
    key = (conn.dialect.name, name)
    sql = _COMPILED.get(key)
    if sql is None:
        compiled = stmt.compile(dialect=conn.dialect)
        if tuple(compiled.positiontup or ()) != tuple(order):
            raise RuntimeError(f"{name}: parameters {compiled.positiontup} != {order}")
        sql = _COMPILED[key] = str(compiled)
    return sql


def db_time(conn: Connection) -> Callable[[datetime | None], Any]:
    """How this driver wants a UTC-aware time (what ``UTCDateTime`` would bind).

    SQLite stores naive UTC text in SQLAlchemy's format (microseconds always
    written, so text order is time order); PostgreSQL drivers take the aware
    datetime.
    """
    if conn.dialect.name != "sqlite":
        return _aware
    return _sqlite_time


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("naive datetime given to the database; use UTC-aware times")
    return value


def _sqlite_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the database; use UTC-aware times")
    if value.utcoffset():
        value = value.astimezone(UTC)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}"
    )


def db_json(value: Any) -> str:
    """JSON as every driver here takes it for a JSON/JSONB column: the text."""
    return json.dumps(value)
