"""The ingest runner: files the mail the spool stored, batch by batch, after the ``250``.

Each round claims a batch of ``pending`` rows from ``inbound`` under a lease,
parses them in a worker thread, and runs the pipeline
(:data:`gateway.ingest.pipeline.PIPELINE`) over the batch in one transaction:

- the batch runs in a savepoint with bulk statements; if a step raises, that
  savepoint is rolled back and every message runs again alone in its own
  savepoint, so one bad message never takes its neighbours with it;
- filed mail (and duplicates, and polled mail that is not ours) leaves the
  spool in the same transaction: the ``messages`` table is the record now;
- refused mail (the authoritative dropbox check said no after the ``250``) is
  parked as ``refused`` with the reason; the sender got ``250`` and the mail
  must not vanish silently, so an operator sees it in ``mailgate inbound list
  --state refused`` and can replay it once the sender is allowed;
- a message whose step raised is retried later (``retry_after``, doubling) and
  parked as ``failed`` with the step's name after ``max_attempts`` tries.

Leases make this safe with several runners (several nodes on PostgreSQL): a
dead runner's claims expire and another takes them; the ``dedupe`` step makes
filing twice impossible.  ``attempts`` counts claims, so mail that kills its
runner is parked after ``max_attempts`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from gateway.clock import Clock, SystemClock
from gateway.ingest.context import Batch, Delivery, Outcome
from gateway.ingest.pipeline import (
    IN_TRANSACTION,
    Step,
    StepFailed,
    prepare,
    run_steps,
    with_record_cap,
)
from gateway.metrics import FILED, PARKED
from gateway.runner import LoopRunner
from storage import inbound_store
from storage.db import Database

log = logging.getLogger("mailgate.ingest")

#: Outcomes after which the spool row is deleted.
FINISHED = (Outcome.FILED, Outcome.DUPLICATE, Outcome.IGNORED)


class ReplayError(Exception):
    """A replay that cannot run, or failed again: one line for the operator."""


#: After a round that filed mail, look again this soon, for this long: a receiver in
#: another process cannot wake this runner, and more mail is likely on its way.  Not
#: sooner: every look that finds mail files a batch, and at 20 ms the batches of the
#: dropbox benchmark shrank so far that the worker's CPU per message rose by ~40%.
BUSY_POLL, BUSY_FOR = 0.05, 1.0


class IngestRunner(LoopRunner):
    name = "ingest"
    #: A receiver in another process cannot wake this one: idle, it looks every 0.25 s.
    poll_interval = 0.25

    def __init__(
        self,
        db: Database,
        *,
        mail_domain: str,
        clock: Clock | None = None,
        batch_size: int = 100,
        lease: timedelta = timedelta(seconds=60),
        max_attempts: int = 5,
        retry_after: timedelta = timedelta(seconds=30),
        poll_interval: float | None = None,
        steps: tuple[Step, ...] = IN_TRANSACTION,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.db = db
        self.mail_domain = mail_domain.lower()
        self.clock = clock or SystemClock()
        self.batch_size = batch_size
        self.lease = lease
        self.max_attempts = max_attempts
        self.retry_after = retry_after
        self.steps = steps  # the pipeline's in-transaction part (tests add a failing step)
        self._claimed: set[int] = set()
        self._busy_until = 0.0  # time.monotonic() until which idle rounds poll at BUSY_POLL
        self._found_none = True  # the last claim found nothing: look with a read first

    def idle_wait(self) -> float:
        """Right after filing, poll every 50 ms rather than every 0.25 s.

        In a split deployment the last mail of a burst would otherwise wait up to
        a whole ``poll_interval`` after its ``250``.  Polling fast only for a
        second after work keeps an idle runner as quiet as before, and an idle
        poll is a read (:func:`storage.inbound_store.claimable`), so it never
        holds SQLite's write lock against a receiver's durable write.
        """
        if time.monotonic() < self._busy_until:
            return min(BUSY_POLL, self.poll_interval)
        return self.poll_interval

    # -- the round ------------------------------------------------------------------

    async def run_once(self) -> int:
        now = self.clock.now()
        if self._found_none and not await self.db.run_read(inbound_store.claimable, now):
            return 0
        rows = await self.db.run_write(inbound_store.claim, self.batch_size, now, now + self.lease)
        self._found_none = not rows
        if not rows:
            return 0
        self._busy_until = time.monotonic() + BUSY_FOR
        ids = {r["id"] for r in rows}
        self._claimed |= ids
        try:
            batch = Batch([delivery_of(r) for r in rows], self.mail_domain, now)
            attempts = {r["id"]: r["attempts"] for r in rows}
            for d, r in zip(batch.items, rows, strict=True):
                if r["attempts"] > self.max_attempts:
                    d.decide(
                        Outcome.FAILED,
                        r["failed_stage"] or "unknown",
                        f"gave up after {self.max_attempts} attempts",
                    )
            await asyncio.to_thread(prepare, batch)
            await self.db.run_write(self._file, batch, attempts)
        except Exception:
            # Storage went away mid-round: give the claims back if it is already back,
            # so the mail is not held for a whole lease; the loop backs off and retries.
            with contextlib.suppress(Exception):
                await self.db.run_write(inbound_store.release, sorted(ids))
            raise
        finally:
            self._claimed -= ids
        count_outcomes(batch.items)
        return len(rows)

    def _file(self, conn: Connection, batch: Batch, attempts: dict[int, int]) -> None:
        file_isolated(conn, batch, self.steps)
        done, kept = [], []
        for d in batch.items:
            if d.outcome in FINISHED:
                done.append(d.inbound_id)
            else:
                kept.append(self._kept_row(d, attempts[d.inbound_id], batch.now))
        inbound_store.forget(conn, done)
        inbound_store.keep(conn, kept)

    def _kept_row(self, d: Delivery, attempts: int, now: datetime) -> dict[str, Any]:
        row = {"id": d.inbound_id, "failed_stage": d.stage, "last_error": d.reason}
        if d.outcome is not None and d.outcome.refused:
            log.info(
                "refused mail %s after the 250: %s",
                d.inbound_id,
                d.reason,
                extra={"inbound_id": d.inbound_id},
            )
            PARKED.labels("refused").inc()
            return {**row, "state": "refused", "claimed_until": None}
        if attempts >= self.max_attempts:
            log.warning(
                "parking mail %s: %s at %s",
                d.inbound_id,
                d.reason,
                d.stage,
                extra={"inbound_id": d.inbound_id},
            )
            PARKED.labels("failed").inc()
            return {**row, "state": "failed", "claimed_until": None}
        retry = now + self.retry_after * 2 ** (attempts - 1)
        return {**row, "state": "pending", "claimed_until": retry}

    async def hand_back(self) -> None:
        """Stopping mid-round: release the claims so another runner need not wait out the lease."""
        ids, self._claimed = sorted(self._claimed), set()
        if ids:
            await self.db.run_write(inbound_store.release, ids)

    # -- replay ---------------------------------------------------------------------

    async def replay(self, inbound_id: int) -> dict[str, Any]:
        """File one parked message again, through the same pipeline, now.

        Bounce mail goes back to the bounce queue.  Mail that failed after its
        authorisation passed is not re-authorised; refused mail is (replay it
        once the sender is allowed).  Failing again raises :class:`ReplayError`.
        """
        row = await self.db.run_read(inbound_store.get, inbound_id)
        if row is None:
            raise ReplayError(f"no kept message {inbound_id}")
        if row["state"] not in ("held", "failed", "refused"):
            raise ReplayError(f"message {inbound_id} is {row['state']}, not held or failed")
        if row["channel"] == "bounce":
            await self.db.run_write(inbound_store.set_state, inbound_id, "pending")
            return {"id": inbound_id, "result": "queued for bounce processing"}
        if row["org_id"] is None or row["user_id"] is None:
            raise ReplayError(f"message {inbound_id} has no owner to file it for")
        d = delivery_of(row)
        d.accepted_earlier = row["state"] == "failed" and row["failed_stage"] not in (
            None,
            "parse",
            "authorise",
        )
        batch = Batch([d], self.mail_domain, self.clock.now())
        await asyncio.to_thread(prepare, batch)
        await self.db.run_write(self._replay, batch)
        count_outcomes(batch.items)
        if d.outcome not in FINISHED:
            again = "refused" if d.outcome and d.outcome.refused else "failed"
            raise ReplayError(f"message {inbound_id} {again} again at {d.stage}: {d.reason}")
        return {"id": inbound_id, "result": d.outcome.value, "message_id": d.message_pk}

    def _replay(self, conn: Connection, batch: Batch) -> None:
        file_isolated(conn, batch, self.steps)
        d = batch.items[0]
        if d.outcome in FINISHED:
            inbound_store.set_state(conn, d.inbound_id, "done", f"replayed: {d.outcome.value}")
            return
        state = "refused" if d.outcome and d.outcome.refused else "failed"
        inbound_store.keep(
            conn,
            [{"id": d.inbound_id, "state": state, "failed_stage": d.stage, "last_error": d.reason}],
        )


async def replay_kept(
    db: Database, inbound_id: int, *, mail_domain: str, max_records: int
) -> dict[str, Any]:
    """Replay one kept message as an operator does (``mailgate inbound replay``, the dashboard's
    mail needing attention): the in-transaction steps with the installation's record cap."""
    steps = with_record_cap(IN_TRANSACTION, max_records)
    return await IngestRunner(db, mail_domain=mail_domain, steps=steps).replay(inbound_id)


def delivery_of(row: dict[str, Any]) -> Delivery:
    return Delivery(
        raw=row["raw"],
        channel=row["channel"],
        org_id=row["org_id"],
        user_id=row["user_id"],
        mail_from=row["mail_from"] or "",
        rcpt_to=list(row["rcpt_to"] or []),
        inbound_id=row["id"],
        origin=row.get("origin"),
    )


def file_isolated(conn: Connection, batch: Batch, steps: tuple[Step, ...] = IN_TRANSACTION) -> None:
    """Run the in-transaction steps over the batch; one message at a time if one breaks."""
    undecided = batch.live()
    if not undecided:
        return
    whole = Batch(undecided, batch.mail_domain, batch.now)
    try:
        with conn.begin_nested():
            run_steps(conn, whole, steps)
        return
    except StepFailed as exc:
        log.warning("a batch of %d broke at %s; filing one by one", len(undecided), exc.step)
    for d in undecided:
        d.reset()
    for d in undecided:
        try:
            with conn.begin_nested():
                run_steps(conn, Batch([d], batch.mail_domain, batch.now), steps)
        except StepFailed as exc:
            d.reset()
            d.decide(Outcome.FAILED, exc.step, exc.reason)
            log.warning(
                "mail %s failed at %s: %s",
                d.inbound_id,
                exc.step,
                exc.reason,
                extra={"inbound_id": d.inbound_id},
            )


def count_outcomes(items: list[Delivery]) -> None:
    """One counter update per outcome of the batch (a label look-up per message showed)."""
    for outcome, n in Counter(d.outcome for d in items if d.outcome is not None).items():
        FILED.labels(outcome.value).inc(n)
