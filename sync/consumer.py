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

An event that cannot be applied fails the whole round, which the runner
retries with its capped back-off (``healthy`` turns False and the failure is
logged once): the consumer stalls where it is, visibly, rather than skip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection

from gateway.clock import Clock
from gateway.runner import LoopRunner
from storage import consumers, events
from storage.db import Database
from storage.events import Event, EventType, NewEvent


class Consumer(LoopRunner):
    """Subclasses set :attr:`name` and :attr:`types` and implement :meth:`apply`."""

    #: The consumer's key in ``consumer_offsets``; never rename a deployed consumer.
    name = "consumer"
    #: The event types :meth:`apply` is given; others are passed over.
    types: frozenset[EventType] = frozenset()
    #: Events applied per round (per transaction) at most.
    batch = 500

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
        """Apply the next batch of wanted events; how many were applied.

        A cheap read first: a consumer that is up to date takes no write
        transaction (on SQLite, no writer lock) every poll interval.
        """
        if not await self.db.run_read(self._behind):
            return 0
        return await self.db.run_write(self._round)

    def _behind(self, conn: Connection) -> bool:
        return events.last_id(conn) > consumers.position(conn, self.name)

    def _round(self, conn: Connection) -> int:
        now = self.clock.now()
        start = consumers.hold(conn, self.name, now)
        # Read after the offset is held: everything up to it is committed (ids
        # are visible in commit order), so passing over it skips nothing.
        high = events.last_id(conn)
        if high <= start:
            return 0
        batch = events.read_after_sync(
            conn, after=start, upto=high, limit=self.batch, types=self.types
        )
        caused = self.apply_batch(conn, batch)
        end = batch[-1].id if len(batch) == self.batch else high
        consumers.advance(conn, self.name, expected=start, to=end, now=now)
        if caused:
            events.append_sync(conn, list(caused))
        return len(batch)


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
