"""The one way to consume the event log: a runner that applies events past its offset.

A consumer names itself (the key of its ``consumer_offsets`` row), the event
types it wants, and what applying one event does (:meth:`Consumer.apply`,
plain synchronous SQL on the round's connection) — or, when a round needs
state across its events (what it touched, a cache, the events it causes),
what applying a whole batch does (:meth:`Consumer.apply_batch`).  Each round runs in one
transaction (:func:`storage.consumers.hold` … :func:`storage.consumers.advance`):
the effects and the moved offset commit together, so a crash never applies
an event twice or skips one, and two copies of a consumer never both apply a
batch (see :mod:`storage.consumers` for how each engine guarantees it).

One bad event never takes its neighbours with it.  The batch runs in a
savepoint; when it raises, the round applies the batch again event by event,
each a one-event :meth:`Consumer.apply_batch` in its own savepoint (so a
consumer's rules across a batch still hold), and commits the events before the
one that raised with the offset just short of it.  That event is tried again
on the next rounds (the runner's capped back-off: :class:`EventFailed` makes
the round count as failed, ``healthy`` turns False, logged once); on its
:attr:`Consumer.max_attempts`-th failure it is **parked** — a
``parked_events`` row with its error (:mod:`storage.parked`) — and the offset
moves past it in the same transaction, so the events after it are applied.
Attempts are counted in memory, per process, and only for rounds that
committed: the offset staying put keeps the count, a restart starts it again.

A storage outage (:class:`storage.db.StorageUnavailable`, a lost connection,
SQLite's lock, PostgreSQL's ``OperationalError``) is not the event's fault:
it fails the round whole, nothing is parked or counted, and the runner backs
off as for any failure.  A parked event is replayed (:meth:`Consumer.replay`,
``mailgate consumer replay``, the API and the ``/syncs`` page) with the
consumer's own :meth:`~Consumer.apply_batch` once its cause is fixed, or skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import StatementError

from gateway.clock import Clock
from gateway.outage import is_storage_outage
from gateway.runner import LoopRunner
from storage import consumers, events, parked
from storage.db import Database
from storage.events import Event, EventType, NewEvent
from storage.parked import Resolution

log = logging.getLogger("mailgate.sync")

#: A parked event's error is at most this long (type, then the first line of the message).
MAX_ERROR = 500
#: ``scheme://user:password@`` in a message: the password is never stored or shown.
_CREDENTIALS = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def error_text(exc: BaseException) -> str:
    """What a parked event's ``error`` says: the exception's type and first line, bounded.

    A database error names its driver's error, not SQLAlchemy's wrapper: the
    wrapper's text carries the statement and its parameters (people's data),
    and later lines (PostgreSQL's ``DETAIL``) quote row values.
    """
    cause: BaseException = exc
    if isinstance(exc, StatementError) and exc.orig is not None:
        cause = exc.orig
    lines = str(cause).strip().splitlines()
    message = lines[0].strip() if lines else ""
    text = f"{type(cause).__name__}: {message}" if message else type(cause).__name__
    return _CREDENTIALS.sub(r"\1***@", text)[:MAX_ERROR]


def is_outage(exc: BaseException, conn: Connection | None = None) -> bool:
    """The database went away or was busy (not the event's fault): fail the round, park nothing."""
    if is_storage_outage(exc):  # the one rule (gateway.outage): API, SMTP, runners
        return True
    return conn is not None and (conn.invalidated or conn.closed)


class EventFailed(RuntimeError):
    """An event raised; the round committed the events before it and stops there.

    Raised by :meth:`Consumer.run_once` after the commit, so the runner backs
    off before trying the event again (and logs it once).
    """

    def __init__(self, consumer: str, event_id: int, attempts: int, error: str) -> None:
        super().__init__(f"{consumer}: event {event_id} failed (attempt {attempts}): {error}")
        self.event_id = event_id
        self.attempts = attempts
        self.error = error


class ParkedError(Exception):
    """A parked event cannot be replayed or skipped as asked: one line for the operator."""


class ParkedNotFound(ParkedError):
    """No such parked event (for this org)."""


class AlreadyResolved(ParkedError):
    """The parked event was replayed or skipped already."""


class ReplayFailed(ParkedError):
    """The replay raised again: the event stays parked with this error."""


@dataclass(frozen=True, slots=True)
class _Stall:
    """The event a round stopped at (not yet parked), and how often it has failed now."""

    event_id: int
    attempts: int
    error: str


@dataclass(frozen=True, slots=True)
class _Round:
    applied: int
    stalled: _Stall | None = None
    parked: int = 0


class Consumer(LoopRunner):
    """Subclasses set :attr:`name` and :attr:`types` and implement :meth:`apply`."""

    #: The consumer's key in ``consumer_offsets``; never rename a deployed consumer.
    name = "consumer"
    #: The event types :meth:`apply` is given; others are passed over.
    types: frozenset[EventType] = frozenset()
    #: Events applied per round (per transaction) at most.
    batch = 500
    #: An event that raised this many times (in committed rounds) is parked.
    max_attempts = 3

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        batch: int | None = None,
        poll_interval: float | None = None,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.db = db
        self.clock = clock
        if batch is not None:
            self.batch = batch
        #: event id → failed attempts so far (at most the one event a round stopped at).
        self._attempts: dict[int, int] = {}

    def apply(self, conn: Connection, event: Event) -> None:
        """Make ``event``'s effects on ``conn`` (the round's transaction)."""
        raise NotImplementedError

    def apply_batch(self, conn: Connection, batch: Sequence[Event]) -> Sequence[NewEvent]:
        """Make the round's effects; the events they cause, which the round appends last.

        By default each event is applied on its own.  A consumer whose round
        keeps state across its events keeps it here, local to the call, so two
        rounds (two processes, a drain beside the loop) never share it.  New
        events are returned rather than appended: appending takes the log's
        lock (:func:`storage.events.append`), the last step of the round.
        """
        for event in batch:
            self.apply(conn, event)
        return ()

    async def run_once(self) -> int:
        """Apply the next batch of wanted events; how many were applied (or parked).

        A cheap read first: a consumer that is up to date takes no write
        transaction (on SQLite, no writer lock) every poll interval.
        :class:`EventFailed` when the round stopped at an event that raised.
        """
        if not await self.db.run_read(self._behind):
            return 0
        done = await self.db.run_write(self._round)
        # Counted only now that the round committed (a round lost to an outage counts nothing).
        self._attempts = {}
        if done.stalled is not None:
            self._attempts[done.stalled.event_id] = done.stalled.attempts
            raise EventFailed(
                self.name, done.stalled.event_id, done.stalled.attempts, done.stalled.error
            )
        return done.applied + done.parked

    def _behind(self, conn: Connection) -> bool:
        return events.last_id(conn) > consumers.position(conn, self.name)

    def _round(self, conn: Connection) -> _Round:
        now = self.clock.now()
        start = consumers.hold(conn, self.name, now)
        # Read after the offset is held: everything up to it is committed (ids are
        # visible in commit order), so passing over it skips nothing.
        high = events.last_id(conn)
        if high <= start:
            return _Round(0)
        batch = events.read_after_sync(
            conn, after=start, upto=high, limit=self.batch, types=self.types
        )
        end = batch[-1].id if len(batch) == self.batch else high
        try:
            with conn.begin_nested():
                caused = list(self.apply_batch(conn, batch))
        except Exception as exc:
            if is_outage(exc, conn):
                raise
            log.warning(
                "%s: a batch of %d broke (%s); applying it event by event",
                self.name,
                len(batch),
                error_text(exc),
            )
            return self._one_by_one(conn, batch, start, end, now)
        consumers.advance(conn, self.name, expected=start, to=end, now=now)
        events.append_sync(conn, caused)
        return _Round(len(batch))

    def _one_by_one(
        self, conn: Connection, batch: Sequence[Event], start: int, end: int, now: Any
    ) -> _Round:
        """Each event as a one-event batch in its own savepoint; stop at (or park) a failure."""
        caused: list[NewEvent] = []
        applied = parked_now = 0
        stalled: _Stall | None = None
        for event in batch:
            try:
                with conn.begin_nested():
                    new = list(self.apply_batch(conn, [event]))
            except Exception as exc:
                if is_outage(exc, conn):
                    raise
                error = error_text(exc)
                attempts = self._attempts.get(event.id, 0) + 1
                if attempts < self.max_attempts:
                    stalled = _Stall(event.id, attempts, error)
                    end = event.id - 1  # the offset stops just short of it
                    break
                parked.park(
                    conn,
                    consumer=self.name,
                    event_id=event.id,
                    org_id=event.org_id,
                    event_type=event.type,
                    error=error,
                    attempts=attempts,
                    now=now,
                )
                log.warning(
                    "%s: parked event %d (%s) after %d attempts: %s",
                    self.name,
                    event.id,
                    event.type,
                    attempts,
                    error,
                )
                parked_now += 1
                continue
            caused.extend(new)
            applied += 1
        consumers.advance(conn, self.name, expected=start, to=end, now=now)
        events.append_sync(conn, caused)
        return _Round(applied, stalled, parked_now)

    # -- parked events -----------------------------------------------------------------

    async def replay(self, parked_id: int, *, org_id: int | None = None) -> dict[str, Any]:
        """Apply a parked event again, with :meth:`apply_batch`, in one transaction.

        On success the row is marked ``replayed`` with the events it caused
        appended; on failure the row keeps parked with the new error and
        :class:`ReplayFailed` is raised.  The consumer's offset row is held
        meanwhile, so a replay never runs beside a round of the same consumer.
        The consumers' writes are guarded by the state they move, so an event
        whose effect arrived since by another way changes nothing again.
        """
        result = await self.db.run_write(self._replay, parked_id, org_id)
        if result["resolution"] is None:
            raise ReplayFailed(f"parked event {parked_id} failed again: {result['error']}")
        return result

    def _replay(self, conn: Connection, parked_id: int, org_id: int | None) -> dict[str, Any]:
        now = self.clock.now()
        consumers.hold(conn, self.name, now)
        row = _open_row(conn, parked_id, org_id)
        if row["consumer"] != self.name:
            raise ParkedError(f"parked event {parked_id} belongs to {row['consumer']}")
        found = events.read_after_sync(
            conn, after=row["event_id"] - 1, upto=row["event_id"], limit=1
        )
        if not found:
            raise ParkedError(f"event {row['event_id']} is no longer in the log; skip it")
        try:
            with conn.begin_nested():
                caused = list(self.apply_batch(conn, found))
        except Exception as exc:
            if is_outage(exc, conn):
                raise
            error = error_text(exc)
            parked.failed_again(conn, parked_id, error)
            log.warning("%s: replay of parked event %d failed: %s", self.name, parked_id, error)
            return {**parked_json(row), "attempts": row["attempts"] + 1, "error": error}
        parked.resolve(conn, parked_id, Resolution.REPLAYED, now)
        events.append_sync(conn, caused)
        replayed = {"resolution": Resolution.REPLAYED.value, "resolved_at": now.isoformat()}
        return {**parked_json(row), **replayed}


def _open_row(conn: Connection, parked_id: int, org_id: int | None) -> dict[str, Any]:
    """The parked row, locked: :class:`ParkedNotFound` (also another org's), or resolved."""
    row = parked.get(conn, parked_id, lock=True)
    if row is None or (org_id is not None and row["org_id"] != org_id):
        raise ParkedNotFound(f"no parked event {parked_id}")
    if row["resolution"] is not None:
        raise AlreadyResolved(f"parked event {parked_id} was {row['resolution']} already")
    return row


def parked_json(row: dict[str, Any]) -> dict[str, Any]:
    """A parked event as the CLI and the API show it."""
    at, resolved = row["parked_at"], row["resolved_at"]
    return {
        "id": row["id"],
        "consumer": row["consumer"],
        "event_id": row["event_id"],
        "org_id": row["org_id"],
        "event_type": row["event_type"],
        "error": row["error"],
        "attempts": row["attempts"],
        "parked_at": at.isoformat() if at else None,
        "resolution": row["resolution"],
        "resolved_at": resolved.isoformat() if resolved else None,
    }


def consumer_named(name: str, db: Database, clock: Clock) -> Consumer:
    """A consumer of :data:`sync.CONSUMERS` by name, built as ``serve`` builds it (not started)."""
    from sync import CONSUMERS  # sync/__init__ imports this module

    for cls in CONSUMERS:
        if cls.name == name:
            return cls(db, clock)
    raise ParkedError(f"no consumer called {name!r} in this installation")


async def replay_parked(
    db: Database, clock: Clock, parked_id: int, *, org_id: int | None = None
) -> dict[str, Any]:
    """Replay a parked event with the consumer that parked it (CLI, API, dashboard).

    ``org_id`` scopes it: another org's parked event is :class:`ParkedNotFound`.
    """
    row = await db.run_read(parked.get, parked_id)
    if row is None or (org_id is not None and row["org_id"] != org_id):
        raise ParkedNotFound(f"no parked event {parked_id}")
    consumer = consumer_named(row["consumer"], db, clock)
    return await consumer.replay(parked_id, org_id=org_id)


async def skip_parked(
    db: Database, clock: Clock, parked_id: int, *, org_id: int | None = None
) -> dict[str, Any]:
    """Mark a parked event skipped: it is never applied (the offset is already past it)."""

    def go(conn: Connection) -> dict[str, Any]:
        row = _open_row(conn, parked_id, org_id)
        now = clock.now()
        parked.resolve(conn, parked_id, Resolution.SKIPPED, now)
        skipped = {"resolution": Resolution.SKIPPED.value, "resolved_at": now.isoformat()}
        return {**parked_json(row), **skipped}

    return await db.run_write(go)


async def drain_all(running: Iterable[Consumer]) -> int:
    """Run the consumers until all have caught up with the log (tests, and hand-over).

    Passes repeat while any consumer applied something, since one consumer's
    effects may be events another reads.
    """
    running = tuple(running)
    total = 0
    while applied := sum([await consumer.drain() for consumer in running]):
        total += applied
    return total
