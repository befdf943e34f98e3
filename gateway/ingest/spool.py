"""The durable spool in front of the ingest runner: store first, answer, file later.

An SMTP session (or the IMAP poller) hands its raw mail to :meth:`Spool.store`
and waits only until the rows are in the ``inbound`` table and on disk; then it
answers ``250`` (or moves its checkpoint) and the
:class:`~gateway.ingest.runner.IngestRunner` files the mail afterwards.

Group commit: one writer takes whatever sessions have queued meanwhile and
stores it all in one transaction with one fsync, so under load the fsync cost
is shared by many messages and a quiet server still answers at once.

Why the ``inbound`` table and not files in the data directory: measured on
this machine's disk (2026-11-26, 5 KB messages, groups of 10), a committed,
fsync'd SQLite insert of the group took 0.35 ms (median); ten files each
written and fsync'd plus one fsync of the directory took 2.7 ms (a bare fsync
is ~0.2 ms here; creating and syncing each file is what costs).  The table also
wins on everything else: on PostgreSQL every node's runner can claim any node's
mail under a lease (a file spool strands mail on a dead node's disk); the IMAP
checkpoint commits in the same transaction as the mail it covers; replay, the
bounce queue and ``mailgate inbound list`` already read this table; and there
is one place to back up.

Durable means fsync'd: on SQLite the spool's transactions run with
``synchronous=FULL`` (see :meth:`storage.db.Database.run_durable_write`, and
``run_durable_driver``, the leaner path the SMTP receiver's groups take) — the
rest of the database keeps ``NORMAL``, whose commits survive a crash of the
process but not of the machine; on PostgreSQL a commit is flushed to the WAL.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from gateway.metrics import RECEIVED
from gateway.outage import is_storage_outage
from gateway.runner import LoopRunner
from storage import inbound_store
from storage.db import Database, StorageUnavailable

log = logging.getLogger("mailgate.spool")

#: ``after(conn)``: more SQL committed with the rows (the IMAP poller's checkpoint).
AfterStore = Callable[[Connection], None]

#: Rows per group commit (a group of 5 KB messages stays a few MB).
MAX_GROUP = 500
#: A group smaller than this waits this long for more (one fsync for more messages).
LINGER_BELOW, LINGER = 8, 0.001


@dataclass(slots=True)
class _Job:
    rows: list[dict[str, Any]]
    after: AfterStore | None
    durable: bool
    done: asyncio.Future[None]


class Spool(LoopRunner):
    """The group-committing writer of accepted mail (one per process that receives)."""

    name = "spool"
    poll_interval = 5.0

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db
        self._queue: deque[_Job] = deque()

    async def store(
        self, rows: list[dict[str, Any]], *, after: AfterStore | None = None, durable: bool = True
    ) -> None:
        """Return once ``rows`` (and ``after``'s writes) are committed and fsync'd.

        ``durable=False`` skips the fsync for a caller that loses nothing when
        a power cut takes the commit back: the IMAP poller, whose checkpoint
        commits with its rows (both go, and the mail is fetched again from the
        server, which still has it).  Raises :class:`StorageUnavailable` when
        the rows cannot be stored (the caller answers ``451``, or leaves its
        checkpoint where it was).
        """
        if not self.running:
            raise StorageUnavailable("the spool writer is not running")
        job = _Job(rows, after, durable, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self.wake()
        await job.done

    async def run_once(self) -> int:
        if 0 < len(self._queue) < LINGER_BELOW:
            await asyncio.sleep(LINGER)  # let a few more sessions join this fsync
        jobs, count = [], 0
        while self._queue and (not jobs or count + len(self._queue[0].rows) <= MAX_GROUP):
            job = self._queue.popleft()
            jobs.append(job)
            count += len(job.rows)
        if not jobs:
            return 0
        await self._commit(jobs)
        return max(count, 1)

    async def _commit(self, jobs: list[_Job]) -> None:
        try:
            await self._write(jobs)
        except Exception as exc:  # noqa: BLE001 - decided per job below
            if len(jobs) > 1:
                # One job's ``after`` may be what broke: the others must not pay for it.
                for job in jobs:
                    await self._commit([job])
                return
            if not is_storage_outage(exc):  # an outage is logged once, by gateway.outage
                log.warning("storing mail failed: %s: %s", type(exc).__name__, exc)
            _settle(jobs[0], StorageUnavailable(f"{type(exc).__name__}: {exc}"))
            return
        count_received(jobs)
        for job in jobs:
            _settle(job, None)

    def _write(self, jobs: list[_Job]) -> Awaitable[None]:
        """The cheapest write that keeps the jobs' promise.

        Rows alone (the SMTP receiver's groups) go through the driver-level
        path; a job with ``after`` (SQLAlchemy code) needs a full connection.
        """
        durable = any(j.durable for j in jobs)
        if durable and all(j.after is None for j in jobs):
            rows = [row for job in jobs for row in job.rows]
            return self.db.run_durable_driver(inbound_store.spool, rows)
        return (self.db.run_durable_write if durable else self.db.run_write)(_write, jobs)

    async def hand_back(self) -> None:
        """Stopping: whoever still waits is told to try again later (451)."""
        jobs, self._queue = self._queue, deque()
        for job in jobs:
            _settle(job, StorageUnavailable("the spool writer stopped"))


def _write(conn: Connection, jobs: list[_Job]) -> None:
    inbound_store.spool(conn, [row for job in jobs for row in job.rows])
    for job in jobs:
        if job.after is not None:
            job.after(conn)


def count_received(jobs: list[_Job]) -> None:
    """``mailgate_received_messages_total`` by channel, once the rows are committed."""
    for channel, n in Counter(row.get("channel", "") for job in jobs for row in job.rows).items():
        RECEIVED.labels(channel).inc(n)


def _settle(job: _Job, exc: Exception | None) -> None:
    if job.done.done():
        return
    if exc is None:
        job.done.set_result(None)
    else:
        job.done.set_exception(exc)
