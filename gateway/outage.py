"""Storage outages: which errors are one, what callers answer, and logging each once.

When PostgreSQL (or the SQLite file) cannot be reached, every front end
answers "try again later" instead of an error: the API ``503`` with
``Retry-After`` and ``{"error": {"code": "storage_unavailable"}}``, the
dashboard its ``503`` page, SMTP ``451``.  :func:`is_storage_outage` is the
one rule that tells such a failure from a bug (a bug is still a ``500``).

During an outage thousands of requests fail in a few seconds; logging each
buried the log (17,000 lines in 30 s).  :class:`OutageLog` is the pure state
machine deciding what to log: the first failure of an outage, and the next
success ("recovered after … s, … requests refused").  :data:`STORAGE` is the
process's one instance, shared by the API, the dashboard, tracking and SMTP.
"""

from __future__ import annotations

import enum
import errno
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy.exc

from storage.db import StorageUnavailable

try:  # asyncpg is the PostgreSQL driver; a SQLite-only install may lack it
    import asyncpg.exceptions as _pg

    _PG_OUTAGES: tuple[type[BaseException], ...] = (
        _pg.PostgresConnectionError,  # SQLSTATE class 08: connection exceptions
        _pg.CannotConnectNowError,  # 57P03: starting up / shutting down
        _pg.AdminShutdownError,  # 57P01: terminated by the administrator (pg_ctl stop)
        _pg.CrashShutdownError,
        _pg.TooManyConnectionsError,
        _pg.ConnectionDoesNotExistError,  # the connection was closed under a query
        _pg.InterfaceError,  # "connection is closed", "another operation is in progress"
    )
except ImportError:  # pragma: no cover - depends on the install
    _PG_OUTAGES = ()

log = logging.getLogger("mailgate.storage")

#: What ``Retry-After`` says during an outage: a load balancer or client tries again soon.
RETRY_AFTER_SECONDS = 5

#: errno values of a connect (or a connection) that failed because the peer is away.
_CONNECT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ENOENT,  # a Unix socket path that is gone while the server is down
    }
)

#: The SQLAlchemy errors that mean "storage away", whatever the driver said.
_SA_OUTAGES = (
    sqlalchemy.exc.OperationalError,  # connection refused/lost, database locked, disk I/O
    sqlalchemy.exc.InterfaceError,  # the driver's connection is unusable
    sqlalchemy.exc.TimeoutError,  # the pool had no connection to give within its timeout
    sqlalchemy.exc.DisconnectionError,
)


#: PostgreSQL SQLSTATE classes that say nothing about the request or the item: connection
#: exception, transaction rollback (deadlock, serialisation failure: the next try may well
#: pass), insufficient resources (disk full), operator intervention (shutdown), system error.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})


class Outcome(enum.Enum):
    """What :class:`OutageLog` says about one storage call."""

    QUIET = "quiet"  # nothing to log: still up, or still down
    STARTED = "started"  # the first failure of an outage
    RECOVERED = "recovered"  # the first success after an outage


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (``__cause__``, ``__context__``, SQLAlchemy's ``orig``)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend((current.__cause__, current.__context__, getattr(current, "orig", None)))


def _connect_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, socket.gaierror, TimeoutError)):
        return True
    # asyncio's create_connection raises a bare OSError ("Multiple exceptions: [Errno 111]
    # Connect call failed …") with no errno when every address of a host refused.
    return type(exc) is OSError and (exc.errno is None or exc.errno in _CONNECT_ERRNOS)


def is_storage_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says storage cannot be reached right now.

    Connection refused or lost, the server shutting down or starting, the
    pool's timeout, a deadlock or serialisation failure, :class:`StorageUnavailable`:
    answered "try again later", and a runner's item is not charged for it.
    A constraint violation, a syntax error or a missing row is not one (it
    stays a ``500`` or its own status): retrying would fail the same way.
    """
    for current in _chain(exc):
        if isinstance(current, (StorageUnavailable, *_SA_OUTAGES, *_PG_OUTAGES)):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return True
        if isinstance(current, OSError) and _connect_error(current):
            return True
    return False


@dataclass
class OutageLog:
    """When storage calls fail and succeed, whether this one starts or ends an outage.

    Pure (the caller passes the time): the first failure starts an outage,
    further failures only count, and the next success ends it.
    """

    down_since: float | None = None
    refused: int = 0  # failures during the current outage

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, now: float) -> Outcome:
        self.refused += 1
        if self.down_since is None:
            self.down_since = now
            return Outcome.STARTED
        return Outcome.QUIET

    def succeeded(self, now: float) -> Outcome:
        if self.down_since is None:
            return Outcome.QUIET
        self.down_since = None
        return Outcome.RECOVERED

    def reset_count(self) -> int:
        refused, self.refused = self.refused, 0
        return refused


class StorageOutage:
    """The process's outage log: one ``error`` line per outage, one ``warning`` on recovery."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.log = logger
        self.state = OutageLog()

    @property
    def down(self) -> bool:
        return self.state.down

    def failed(self, exc: BaseException, where: str) -> None:
        """A request (``where``: ``http``, ``smtp``, ``tracking``) could not reach storage."""
        if self.state.failed(time.monotonic()) is Outcome.STARTED:
            self.log.error(
                "storage unavailable (first seen by %s): %s: %s; answering 503/451 until it "
                "is back, logged once",
                where,
                type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
            )

    def succeeded(self) -> None:
        """A request reached storage.  Cheap: called on every request that reads it."""
        if self.state.down_since is None:
            return
        started = self.state.down_since
        if self.state.succeeded(time.monotonic()) is Outcome.RECOVERED:
            self.log.warning(
                "storage recovered after %.1f s; %d requests were refused meanwhile",
                time.monotonic() - started,
                self.state.reset_count(),
            )


#: The one outage log of this process.
STORAGE = StorageOutage()
