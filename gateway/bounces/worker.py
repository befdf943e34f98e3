"""The bounce runner: classifies bounce mail the SMTP receiver (or IMAP) kept, batch by batch."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from gateway.bounces.process import Policy, process_rows
from gateway.clock import Clock, SystemClock
from gateway.runner import LoopRunner
from storage import bounce_store
from storage.db import Database

log = logging.getLogger("mailgate.bounces")


class BounceWorker(LoopRunner):
    """The ``bounces`` runner; the receiver wakes it when it kept bounce mail.

    A round claims a batch under a lease (committing the attempt it counts),
    then processes it in one transaction with a savepoint per report.  Should
    that transaction fail as a whole, each report of the batch is processed
    again in a transaction of its own, so one report that breaks more than its
    savepoint costs its neighbours nothing; it uses up its attempts and is held
    (:data:`gateway.bounces.process.MAX_ATTEMPTS`).
    """

    name = "bounces"
    poll_interval = 2.0

    def __init__(
        self,
        db: Database,
        policy: Policy,
        *,
        batch: int = 100,
        poll_interval: float | None = None,
        clock: Clock | None = None,
        lease: timedelta = timedelta(minutes=5),
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.db = db
        self.policy = policy
        self.batch = batch
        self.clock = clock or SystemClock()
        self.lease = lease

    async def run_once(self) -> int:
        """Claim one batch of kept bounce mail and process it; how many were claimed."""
        now = self.clock.now()
        until = now + self.lease
        rows = await self.db.run_write(bounce_store.claim_pending, self.batch, now, until)
        if not rows:
            return 0
        try:
            await self.db.run_write(process_rows, rows, self.policy)
        except Exception:
            log.exception("bounces: a batch of %d failed; processing each on its own", len(rows))
            await self._one_by_one(rows)
        return len(rows)

    async def _one_by_one(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            try:
                await self.db.run_write(process_rows, [row], self.policy)
            except Exception:
                log.exception("bounces: report %s failed its transaction", row["id"])
                await self.db.run_write(bounce_store.release, [row["id"]])
