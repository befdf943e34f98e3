"""The bounce worker: drains bounce mail the SMTP receiver (or IMAP) kept, batch by batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.bounces.process import Policy, process_batch
from storage.db import Database

log = logging.getLogger("mailgate.bounces")


class BounceWorker:
    def __init__(self, db: Database, policy: Policy, *, batch: int = 100) -> None:
        self.db = db
        self.policy = policy
        self.batch = batch
        self.wakeup = asyncio.Event()

    async def run_once(self) -> int:
        return await self.db.run_write(
            process_batch, self.policy, self.batch, self.db.insert_ignore
        )

    async def drain(self) -> int:
        """Process until nothing is pending (tests, and after a wake-up)."""
        total = 0
        while n := await self.run_once():
            total += n
        return total

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.drain()
            except Exception:  # noqa: BLE001 - storage hiccup: try again shortly
                log.exception("bounce processing failed; retrying")
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=2.0)
