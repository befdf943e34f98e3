"""The bounce runner: classifies bounce mail the SMTP receiver (or IMAP) kept, batch by batch."""

from __future__ import annotations

from gateway.bounces.process import Policy, process_batch
from gateway.runner import LoopRunner
from storage.db import Database


class BounceWorker(LoopRunner):
    """The ``bounces`` runner; the receiver wakes it when it kept bounce mail."""

    name = "bounces"
    poll_interval = 2.0

    def __init__(
        self, db: Database, policy: Policy, *, batch: int = 100, poll_interval: float | None = None
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.db = db
        self.policy = policy
        self.batch = batch

    async def run_once(self) -> int:
        """Classify and apply one batch of kept bounce mail in one transaction."""
        return await self.db.run_write(process_batch, self.policy, self.batch)
