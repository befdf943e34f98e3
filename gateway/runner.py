"""The one contract every background worker follows.

A runner owns one kind of work (inbound mail to file, sends to relay, bounce
mail to classify, tracking hits to write, mailboxes to poll, events to
consume).  ``serve`` builds its roles from a table of runners (see
:mod:`gateway.serve`) and drives them all the same way:

- ``start()`` begins the loop in a task;
- ``wake()`` says "there is new work" (the SMTP session after storing, the API
  after enqueueing), so an idle runner does not wait out its poll interval;
- ``run_once()`` does one round — claim a batch, handle it, commit — and
  returns how many items it handled (0 = nothing due);
- ``drain()`` repeats ``run_once()`` until it returns 0 (tests, and hand-over);
- ``stop(deadline)`` lets the round in progress finish for up to ``deadline``
  seconds, then cancels it, and hands back whatever it still holds
  (:meth:`LoopRunner.hand_back`: release claims so another node takes them at
  once instead of waiting out a lease).

Durable work is claimed in rows with a lease (``claimed_until``): a runner that
dies simply lets its lease expire and another takes the rows over.  Each item
is handled in its own savepoint with a bounded attempt count, and an item that
keeps failing is parked with the name of the stage that failed, for
``mailgate inbound replay``.  This module knows nothing of that storage; it
only gives every runner the same loop, the same wake-up, and the same habit
for failures (logged once per outage, retried with a capped back-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol, runtime_checkable

from gateway.outage import is_storage_outage

log = logging.getLogger("mailgate.runner")


@runtime_checkable
class Runner(Protocol):
    """What ``serve`` and the tests rely on, for every background worker."""

    name: str

    async def start(self) -> None: ...

    async def stop(self, deadline: float = 10.0) -> None: ...

    def wake(self) -> None: ...

    async def run_once(self) -> int: ...

    async def drain(self) -> int: ...


class LoopRunner:
    """A runner whose loop calls :meth:`run_once` until told to stop.

    Subclasses implement :meth:`run_once` (and, when they hold claims or open
    connections, :meth:`hand_back` and :meth:`close`).  After a round that
    handled nothing the loop sleeps until woken or ``poll_interval`` passes;
    after a round that failed it backs off (0.5 s doubling to 30 s) and logs the
    failure once, not once per round, until a round succeeds again.  While the
    failure is storage being away the back-off stops at ``max_outage_backoff``,
    so work resumes within seconds of the database coming back.
    """

    name = "runner"
    poll_interval: float = 1.0
    #: The first wait after a failed round; it doubles per failure up to ``max_backoff``.
    backoff: float = 0.5
    max_backoff: float = 30.0
    #: The cap while storage itself is away: reconnecting is cheap, and a runner that waited
    #: out 30 s would leave mail unfiled and sends unsent that long after the database is back.
    max_outage_backoff: float = 5.0

    def __init__(self, *, poll_interval: float | None = None) -> None:
        if poll_interval is not None:
            self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._failing_since: float | None = None  # monotonic time of the first failed round
        self._stop_by: float | None = None
        # One round at a time per runner: a drain() beside the running loop (tests, hand-over)
        # waits for the loop's round instead of interleaving with it on shared connections
        # (two relay rounds on one pooled SMTP connection answered "503 need RCPT").
        self._round_lock = asyncio.Lock()

    # -- what subclasses provide ------------------------------------------------

    async def run_once(self) -> int:
        """One round: claim, handle, commit; how many items were handled."""
        raise NotImplementedError

    async def hand_back(self) -> None:
        """Release what this runner still holds (claims); called once on stop."""

    async def close(self) -> None:
        """Close connections this runner opened; called once on stop, after hand_back."""

    def idle_wait(self) -> float:
        """Seconds to sleep after a round that handled nothing (unless woken first).

        ``poll_interval`` by default; a runner that knows when its next item
        falls due (the hit recorder: when the oldest hit has settled) says so.
        """
        return self.poll_interval

    # -- the contract -----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called: a round should take no new item from its batch."""
        return self._stopping

    def time_left(self) -> float:
        """Seconds left of the stop deadline (for :meth:`hand_back` and :meth:`close`)."""
        if self._stop_by is None:
            return 0.0
        return max(0.0, self._stop_by - time.monotonic())

    @property
    def healthy(self) -> bool:
        """False while rounds keep failing (storage away, peer down)."""
        return self._failures == 0

    @property
    def failing_for(self) -> float:
        """Seconds since the first of the rounds that keep failing (0 while healthy): /readyz."""
        if self._failing_since is None:
            return 0.0
        return time.monotonic() - self._failing_since

    async def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name=f"runner-{self.name}")

    def wake(self) -> None:
        self._wake.set()

    async def round(self) -> int:
        """Run one :meth:`run_once`, never overlapping another round of this runner."""
        async with self._round_lock:
            return await self.run_once()

    async def drain(self, max_rounds: int = 100_000) -> int:
        total = 0
        for _ in range(max_rounds):
            n = await self.round()
            if not n:
                break
            total += n
        return total

    async def stop(self, deadline: float = 10.0) -> None:
        self._stopping = True
        self._stop_by = time.monotonic() + deadline
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), deadline)
            except TimeoutError:
                log.warning("%s: still busy after %.1f s; cancelling", self.name, deadline)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception as exc:  # noqa: BLE001 - the loop ended by an error
                log.error("%s: ended with %s: %s", self.name, type(exc).__name__, exc)
        for step in (self.hand_back, self.close):
            try:
                await step()
            except Exception as exc:  # noqa: BLE001 - stopping goes on; the lease covers the rest
                log.error(
                    "%s: %s failed: %s: %s", self.name, step.__name__, type(exc).__name__, exc
                )

    # -- the loop ---------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stopping:
            # Cleared before the round, so a wake() during it is not lost.
            self._wake.clear()
            try:
                handled = await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - storage or peer away: back off, retry
                self._failures += 1
                if self._failures == 1:
                    self._failing_since = time.monotonic()
                    log.error("%s: round failed: %s: %s", self.name, type(exc).__name__, exc)
                    log.debug("%s: failure detail", self.name, exc_info=True)
                cap = self.max_outage_backoff if is_storage_outage(exc) else self.max_backoff
                await self._idle(min(cap, self.backoff * 2 ** (self._failures - 1)))
                continue
            if self._failures:
                log.warning("%s: recovered after %d failed rounds", self.name, self._failures)
                self._failures = 0
                self._failing_since = None
            if handled:
                continue
            await self._idle(self.idle_wait())

    async def _idle(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
