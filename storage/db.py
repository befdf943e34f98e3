"""Engine set-up for both engines, and the one place that knows their differences.

SQLite has one writer: WAL lets readers run beside it, ``synchronous=NORMAL``
keeps commits cheap while surviving a process crash, and ``busy_timeout`` makes
a second writer wait instead of failing.  NORMAL does not fsync the WAL at
commit, so a power cut can lose the last commits: what must survive one (mail
we answered ``250`` for) is written through :meth:`Database.run_durable_write`,
whose connections run ``synchronous=FULL``.  PostgreSQL gets a normal pool (its
commits are flushed to disk with the default ``synchronous_commit=on``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Dialect, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")


class StorageUnavailable(Exception):
    """The database cannot be reached or written: callers answer 451 / 503."""


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_durable(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=FULL")  # WAL mode: fsync the WAL at every commit
    cur.execute("PRAGMA busy_timeout=0")  # waits in Database._durable_retry instead
    # Checkpoints (copying the WAL into the database, with an fsync of its own) are left
    # to the other writers, the ingest runner's: here they ran in a receiver's commit and
    # took ~15% of the SMTP process.
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.close()


#: How long a durable write waits for SQLite's lock; it looks again after 0.5 ms, doubling to 4.
DURABLE_WAIT, DURABLE_POLL, DURABLE_POLL_MAX = 30.0, 0.0005, 0.004


def _manual_transactions(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see Database._sync_engines)


def _locked(exc: BaseException) -> bool:
    """SQLite's lock was taken (``database is locked``): worth another try."""
    return isinstance(exc, (OperationalError, sqlite3.OperationalError)) and "locked" in str(exc)


class DriverConnection:
    """A raw DB-API connection offering what :mod:`storage.lean`'s statements use.

    ``dialect`` (which SQL and value formats to use) and ``exec_driver_sql``
    (a list of parameter tuples is an executemany), nothing else.
    """

    __slots__ = ("_raw", "dialect")

    def __init__(self, raw: sqlite3.Connection, dialect: Dialect) -> None:
        self._raw, self.dialect = raw, dialect

    def exec_driver_sql(self, sql: str, params: Any = ()) -> None:
        if isinstance(params, list):
            self._raw.executemany(sql, params)
        else:
            self._raw.execute(sql, params)


def make_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Enough pooled connections that bursts of readers never open (and PRAGMA) new ones.
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            pool_size=20,
            max_overflow=10,
            # readers only SELECT; writers commit or roll back themselves
            pool_reset_on_return=None,
        )

        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


class Database:
    """An engine plus the dialect facts callers need (upserts, row locks)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._writer: Engine | None = None
        self._reader: Engine | None = None
        self._durable: Engine | None = None
        self._raw: sqlite3.Connection | None = None  # run_durable_driver's connection
        self._writer_lock = threading.Lock()
        #: One SQLite write transaction at a time in this process: writers queue here rather
        #: than in SQLite's busy handler, whose sleeps grow to 100 ms while the lock is taken.
        self._write_turn = threading.Lock()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; connection failures become :class:`StorageUnavailable`."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except (OSError, ConnectionError) as exc:
            raise StorageUnavailable(str(exc)) from exc

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def run_write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` — plain synchronous SQLAlchemy code — in one transaction.

        The batch writers (filing, hits) use this.  aiosqlite pays a thread hop per
        statement (~0.5 ms here), so on SQLite the whole transaction runs in one
        worker thread on a synchronous pysqlite engine; on PostgreSQL it runs via
        ``run_sync`` on the async connection, statement by statement.
        """
        if self.dialect == "sqlite":
            return await asyncio.to_thread(self._write_sqlite, fn, *args)
        try:
            async with self.engine.begin() as conn:
                return await conn.run_sync(fn, *args)
        except (OSError, ConnectionError) as exc:
            raise StorageUnavailable(str(exc)) from exc

    async def run_durable_write(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run_write` whose commit is on disk (fsync'd) when it returns.

        For what we promised to keep (mail answered ``250``).  On SQLite the
        transaction runs on a connection with ``synchronous=FULL``; callers
        group many items into one transaction, so the fsync is paid per group.

        It runs in a worker thread, never on the event loop: the fsync takes
        0.2-1 ms on this disk, and while it runs more sessions queue up for the
        next group (tried on the loop, groups shrank to one message and every
        fsync stalled every session).
        """
        if self.dialect == "sqlite":
            return await asyncio.to_thread(self._durable_retry, self._durable_attempt, fn, *args)
        return await self.run_write(fn, *args)

    @property
    def runs_in_thread(self) -> bool:
        """True when ``run_write``/``run_read`` already run off the event loop."""
        return self.dialect == "sqlite"

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T:
        """Like :meth:`run_write`, for reads on hot paths (one thread hop on SQLite)."""
        if self.dialect == "sqlite":
            return await asyncio.to_thread(self._read_sqlite, fn, *args)
        async with self.engine.connect() as conn:
            return await conn.run_sync(fn, *args)

    def _sync_engines(self) -> tuple[Engine, Engine]:
        """(writer, reader) pysqlite engines, made on first use.

        The writer opens every transaction with ``BEGIN IMMEDIATE``: pysqlite would
        otherwise start it only at the first write, so two workers could both read
        the same pending rows before either wrote (SQLite has no row locks).
        """
        with self._writer_lock:
            if self._writer is None:
                url = make_url(self.url).set(drivername="sqlite+pysqlite")
                args = {"timeout": 30, "check_same_thread": False}
                writer = create_engine(url, connect_args=args, pool_size=5, max_overflow=5)
                event.listen(writer, "connect", _sqlite_pragmas)
                event.listen(writer, "connect", _manual_transactions)
                event.listen(writer, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
                reader = create_engine(url, connect_args=args, pool_size=20, max_overflow=10)
                event.listen(reader, "connect", _sqlite_pragmas)
                self._writer, self._reader = writer, reader
            return self._writer, self._reader

    async def run_durable_driver(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run_durable_write` for ``fn`` written in the driver's own terms.

        ``fn(conn, *args)`` may use only ``conn.dialect`` and ``conn.exec_driver_sql``
        (the :mod:`storage.lean` statements).  On SQLite it then runs on one raw
        ``sqlite3`` connection kept for it: no pool checkout, no SQLAlchemy
        transaction or execution context.  The SMTP receiver stores every group
        this way; under load its groups hold a few messages, so that per-group
        overhead was a large share of storing one.  Same durability: ``BEGIN
        IMMEDIATE`` … ``COMMIT`` with ``synchronous=FULL``.
        """
        if self.dialect == "sqlite":
            return await asyncio.to_thread(self._durable_retry, self._driver_attempt, fn, *args)
        return await self.run_write(fn, *args)

    def _durable_attempt(self, fn: Callable[..., T], *args: Any) -> T:
        with self._durable_engine().begin() as conn:
            return fn(conn, *args)

    def _driver_attempt(self, fn: Callable[..., T], *args: Any) -> T:
        raw = self._raw_durable()
        try:
            raw.execute("BEGIN IMMEDIATE")
            result = fn(DriverConnection(raw, self.engine.dialect), *args)
            raw.execute("COMMIT")
        except BaseException as exc:
            if raw.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    raw.execute("ROLLBACK")
            if not _locked(exc):
                self._close_raw()  # a broken connection is not kept; the next use reopens
            raise
        return result

    def _raw_durable(self) -> sqlite3.Connection:
        if self._raw is None:
            raw = sqlite3.connect(
                make_url(self.url).database or ":memory:",
                timeout=0,
                isolation_level=None,  # BEGIN and COMMIT are ours
                check_same_thread=False,  # used under _write_turn, from worker threads
            )
            _sqlite_pragmas(raw, None)
            _sqlite_durable(raw, None)
            self._raw = raw
        return self._raw

    def _close_raw(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            with contextlib.suppress(sqlite3.Error):
                raw.close()

    def _durable_engine(self) -> Engine:
        with self._writer_lock:
            if self._durable is None:
                url = make_url(self.url).set(drivername="sqlite+pysqlite")
                args_ = {"timeout": 0, "check_same_thread": False}
                durable = create_engine(
                    url,
                    connect_args=args_,
                    pool_size=2,
                    max_overflow=2,
                    pool_reset_on_return=None,  # every use commits or rolls back itself
                )
                for listener in (_sqlite_pragmas, _sqlite_durable, _manual_transactions):
                    event.listen(durable, "connect", listener)
                event.listen(durable, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
                self._durable = durable
            return self._durable

    def _durable_retry(self, attempt: Callable[..., T], fn: Callable[..., T], *args: Any) -> T:
        # SQLite's own busy handler sleeps ever longer (up to 100 ms a try) while another
        # process holds the lock; every SMTP session waiting on this group would wait
        # that long after the lock is free.  Looking again within 4 ms does not.
        deadline = time.monotonic() + DURABLE_WAIT
        poll = DURABLE_POLL
        while True:
            try:
                with self._write_turn:
                    return attempt(fn, *args)
            except (OperationalError, sqlite3.OperationalError) as exc:
                if not _locked(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(poll)
            poll = min(poll * 2, DURABLE_POLL_MAX)

    def _write_sqlite(self, fn: Callable[..., T], *args: Any) -> T:
        engine = self._sync_engines()[0]
        with self._write_turn, engine.begin() as conn:
            return fn(conn, *args)

    def _read_sqlite(self, fn: Callable[..., T], *args: Any) -> T:
        with self._sync_engines()[1].connect() as conn:
            return fn(conn, *args)

    async def dispose(self) -> None:
        await self.engine.dispose()
        with self._write_turn:
            self._close_raw()
        for engine in (self._writer, self._reader, self._durable):
            if engine is not None:
                engine.dispose()
