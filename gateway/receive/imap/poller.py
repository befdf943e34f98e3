"""Keep one mailbox filed forever: connect, catch up, IDLE, reconnect on trouble.

The loop owns no state of its own.  Checkpoints live with the caller:
``load_checkpoint(folder)`` reads the last stored one, and ``on_batch(batch)``
files the messages and stores ``batch.checkpoint`` in one transaction.  A
dropped connection (kick, restart, network) therefore costs at most one
batch fetched twice, and never a lost message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import date

from gateway.receive.imap.checkpoint import Checkpoint
from gateway.receive.imap.client import DEFAULT_TIMEOUT, MailboxConfig, MailboxError, connect
from gateway.receive.imap.fetch import FetchBatch, MailboxSource, Progress
from gateway.receive.imap.folders import discover_folders
from gateway.receive.imap.idle import _sleep_or_stop, wait_for_new

log = logging.getLogger(__name__)

OnBatch = Callable[[FetchBatch], Awaitable[None]]
LoadCheckpoint = Callable[[str], Awaitable[Checkpoint | None]]


class Backoff:
    """1 s, 2 s, 4 s … capped; back to 1 s after a healthy cycle."""

    def __init__(self, first: float = 1.0, cap: float = 60.0) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first


async def poll_once(
    source: MailboxSource,
    folders: list[str],
    load_checkpoint: LoadCheckpoint,
    on_batch: OnBatch,
    *,
    since: date | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_error: Callable[[MailboxError], None] | None = None,
) -> int:
    """Fetch everything new in ``folders``; returns how many messages were handed over.

    A folder the server refuses (a Sent override that does not exist) is
    reported to ``on_error`` and skipped, so it cannot stop INBOX filing.
    """
    count = 0
    for folder in folders:
        try:
            count += await _poll_folder(
                source, folder, load_checkpoint, on_batch, since, on_progress
            )
        except MailboxError as exc:
            if exc.kind != "protocol" or not source.session.connected or on_error is None:
                raise
            on_error(exc)
    return count


async def _poll_folder(
    source: MailboxSource,
    folder: str,
    load_checkpoint: LoadCheckpoint,
    on_batch: OnBatch,
    since: date | None,
    on_progress: Callable[[str, int, int], None] | None,
) -> int:
    progress: Progress | None = None
    if on_progress is not None:

        def progress(done: int, total: int) -> None:
            on_progress(folder, done, total)

    count = 0
    checkpoint = await load_checkpoint(folder)
    async for batch in source.fetch_new(folder, checkpoint, since=since, on_progress=progress):
        await on_batch(batch)
        count += len(batch.messages)
    return count


async def poll_forever(
    config: MailboxConfig,
    on_batch: OnBatch,
    stop_event: asyncio.Event,
    *,
    load_checkpoint: LoadCheckpoint,
    since: date | None = None,
    idle_timeout: float = 300.0,
    timeout: float = DEFAULT_TIMEOUT,
    backoff: Backoff | None = None,
    on_error: Callable[[MailboxError], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Poll until ``stop_event`` is set.

    INBOX is watched with IDLE; the Sent folder is polled whenever INBOX
    wakes up or ``idle_timeout`` passes.  Retryable errors are reported to
    ``on_error`` and retried with backoff; ``bad_login`` is raised, since
    the same password will be refused again (and repeated failures can
    lock the account).  Errors from ``on_batch`` propagate unchanged.
    """
    backoff = backoff or Backoff()
    while not stop_event.is_set():
        try:
            session = await connect(config, timeout)
            try:
                folders = await discover_folders(session, config.sent_folder_override)
                source = MailboxSource(session)
                while not stop_event.is_set():
                    await poll_once(
                        source,
                        folders,
                        load_checkpoint,
                        on_batch,
                        since=since,
                        on_progress=on_progress,
                    )
                    backoff.reset()
                    await wait_for_new(
                        session,
                        folders[0],
                        idle_timeout,
                        await load_checkpoint(folders[0]),
                        stop_event,
                    )
            finally:
                await session.logout()
        except MailboxError as exc:
            if not exc.retryable:
                raise
            if on_error is not None:
                on_error(exc)
            delay = backoff.next()
            log.info(
                "mailbox %s@%s: %s; retrying in %g s", config.login, config.host, exc.message, delay
            )
            await _sleep_or_stop(delay, stop_event)
