"""The single writer that makes arriving mail durable, in batches.

SMTP sessions (and the IMAP poller) hand their deliveries here and wait; a
writer task takes whatever has queued up, runs the filing pipeline over all
of it in one transaction and commits once, then wakes every waiter.  Under
load batches grow by themselves, so commits stay few; a waiter is only told
"stored" after its commit.  A step that breaks on one message never loses
it: the batch is retried message by message and what still fails is kept in
the ``inbound`` shunt with the stage that failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from gateway.ingest.pipeline import Delivery, Outcome, file_batch, parse_all
from storage import filing
from storage.db import Database, StorageUnavailable

log = logging.getLogger("mailgate.intake")

MAX_BATCH = 200

#: ``after(conn, deliveries)``: synchronous SQL committed together with the filing.
AfterFiling = Callable[[Any, list[Delivery]], None]


@dataclass(slots=True)
class Job:
    deliveries: list[Delivery]
    keep: list[dict[str, Any]] = field(default_factory=list)  # raw rows for the inbound queue
    done: asyncio.Future[None] | None = None
    #: Runs in the same transaction after filing (the IMAP poller stores its checkpoint).
    after: AfterFiling | None = None


class Intake:
    def __init__(
        self, db: Database, *, mail_domain: str, on_kept: Callable[[], None] | None = None
    ) -> None:
        self.db = db
        self.on_kept = on_kept  # wakes the bounce worker when bounce mail was kept
        self.mail_domain = mail_domain
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="intake-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(
        self,
        deliveries: list[Delivery],
        keep: list[dict[str, Any]] | None = None,
        *,
        after: AfterFiling | None = None,
    ) -> None:
        """Return once everything given is committed; StorageUnavailable if it cannot be.

        ``after(conn, deliveries)`` runs in the same transaction once the
        deliveries have their outcomes, so what it writes (a poller's
        checkpoint) is committed if and only if the mail is.
        """
        job = Job(deliveries, keep or [], asyncio.get_running_loop().create_future(), after)
        if self._task is None or self._task.done():
            raise StorageUnavailable("intake writer is not running")
        await self._queue.put(job)
        await job.done

    async def _run(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            count = len(jobs[0].deliveries)
            while not self._queue.empty() and count < MAX_BATCH:
                job = self._queue.get_nowait()
                jobs.append(job)
                count += len(job.deliveries)
            await self._commit(jobs)

    async def _commit(self, jobs: list[Job]) -> None:
        try:
            await self._write(jobs)
        except Exception as exc:  # noqa: BLE001 - decided per job below
            if len(jobs) > 1:
                for job in jobs:
                    await self._commit([job])
                return
            await self._rescue(jobs[0], exc)
            return
        if self.on_kept and any(job.keep for job in jobs):
            self.on_kept()
        for job in jobs:
            if job.done and not job.done.done():
                job.done.set_result(None)

    async def _write(self, jobs: list[Job], attempts: int = 3) -> None:
        items = [d for job in jobs for d in job.deliveries]
        keep = [row for job in jobs for row in job.keep]
        afters = [(job.after, job.deliveries) for job in jobs if job.after is not None]
        if items and not self.db.runs_in_thread:
            await asyncio.to_thread(parse_all, items)  # CPU work off the event loop
        for attempt in range(attempts):
            for d in items:
                d.outcome, d.records, d.message_pk = None, [], None
            try:
                await self.db.run_write(self._transaction, items, keep, afters)
                return
            except IntegrityError:
                # Another process filed the same message meanwhile: dedupe will see it now.
                if attempt == attempts - 1:
                    raise

    def _transaction(
        self,
        conn,
        items: list[Delivery],
        keep: list[dict[str, Any]],
        afters: list[tuple[AfterFiling, list[Delivery]]] = (),  # type: ignore[assignment]
    ) -> None:
        if items:
            file_batch(conn, items, self.mail_domain)
        for row in keep:
            filing.shunt(conn, row)
        for after, deliveries in afters:
            after(conn, deliveries)

    async def _rescue(self, job: Job, exc: Exception) -> None:
        """A single job failed: storage is down (451), or a step broke (shunt and accept)."""
        if isinstance(
            exc, (OperationalError, DBAPIError, OSError, StorageUnavailable)
        ) and not isinstance(exc, IntegrityError):
            log.warning("storage unavailable: %s", type(exc).__name__)
            if job.done and not job.done.done():
                job.done.set_exception(StorageUnavailable(type(exc).__name__))
            return
        log.exception("filing failed; keeping the message in the shunt")

        def keep_all(conn) -> None:
            for d in job.deliveries:
                filing.shunt(
                    conn,
                    {
                        "org_id": d.org_id,
                        "user_id": d.user_id,
                        "channel": d.channel,
                        "mail_from": d.mail_from[:998],
                        "rcpt_to": d.rcpt_to,
                        "state": "failed",
                        "failed_stage": d.stage,
                        "last_error": f"{type(exc).__name__}: {exc}"[:2000],
                        "raw": d.raw,
                    },
                )
                d.outcome = Outcome.SHUNTED
            for row in job.keep:
                filing.shunt(conn, row)
            if job.after is not None:
                job.after(conn, job.deliveries)

        try:
            await self.db.run_write(keep_all)
        except Exception as again:  # noqa: BLE001
            if job.done and not job.done.done():
                job.done.set_exception(StorageUnavailable(type(again).__name__))
            return
        if job.done and not job.done.done():
            job.done.set_result(None)
