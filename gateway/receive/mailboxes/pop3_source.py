"""POP3 behind :class:`~gateway.receive.mailboxes.source.MailSource`: what is new is
every UIDL not in ``mailbox_pop_seen``; nothing is ever deleted from the server.

A batch remembers its messages' UIDLs (and those it skipped, with the reason)
in the spool transaction that stores it.  A first poll of a large maildrop is
therefore a backfill in committed batches, a connection dropped mid-RETR loses
only the batch being read (nothing of it is remembered, the next poll fetches
it again), and a restart neither refetches nor skips.

POP3 has one folder and no flags: every message is ``inbox`` mail (ingest's
``classify`` still files mail From the user as outgoing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

from sqlalchemy import Connection

from gateway.clock import Clock
from gateway.receive.imap import MailboxError
from gateway.receive.mailboxes.source import (
    FolderKind,
    OnBatch,
    PolledBatch,
    PolledMessage,
    Progress,
)
from gateway.receive.pop3 import Listed, PopSession, TooLarge
from storage import mailboxes as store
from storage.db import Database

log = logging.getLogger("mailgate.mailboxes")

#: The folder name POP3 mail is filed and reported under (progress, origin).
FOLDER = "INBOX"
#: Messages per stored batch, and the bytes one batch may hold in memory.
BATCH_COUNT = 100
BATCH_BYTES = 32 * 1024 * 1024


def plan_batches(
    new: list[Listed], limit: int, count: int = BATCH_COUNT, size: int = BATCH_BYTES
) -> Iterator[list[Listed]]:
    """Cut the new messages into batches of at most ``count`` and about ``size`` bytes.

    Oversize messages (skipped, never retrieved) weigh nothing.
    """
    batch: list[Listed] = []
    weight = 0
    for item in new:
        cost = item.size if item.size <= limit else 0
        if batch and (len(batch) >= count or weight + cost > size):
            yield batch
            batch, weight = [], 0
        batch.append(item)
        weight += cost
    if batch:
        yield batch


def too_large(limit: int, *, size: int | None = None, said: int | None = None) -> str:
    """The recorded reason a message was not filed (what status shows): ``size`` as
    LIST gave it, or ``said`` when LIST claimed less than the server then sent."""
    if said is not None:
        return f"too large: listed as {said} bytes but longer than the {limit}-byte limit"
    return f"too large: {size} bytes, over the {limit}-byte limit"


class PopMailSource:
    """One POP3 login: list, retrieve what is new, quit."""

    channel = "pop"

    def __init__(
        self,
        db: Database,
        row: dict[str, Any],
        session: PopSession,
        *,
        max_size: int,
        interval: float,
        clock: Clock,
        batch_count: int = BATCH_COUNT,
    ) -> None:
        self.db, self.row, self.session = db, row, session
        self.max_size = max_size
        self.interval = interval
        self.clock = clock
        self.batch_count = batch_count
        #: Per-message RETR deadline: a 25 MB message needs more than a STAT does.
        self.retr_timeout = max(session.timeout, 60.0)

    async def prepare(self) -> None:
        return None

    async def fetch_new(
        self, on_batch: OnBatch, *, since: date, fresh: bool, on_progress: Progress
    ) -> int:
        """Retrieve every message whose UIDL is not remembered yet (``since`` does not apply:
        POP3 cannot tell a message's date without downloading it)."""
        mid = self.row["id"]
        listed = await self.session.list_messages()
        seen = await self.db.run_read(store.pop_seen_uidls, mid)
        new = listed if fresh else [m for m in listed if m.uidl not in seen]
        total, done, count = len(new), 0, 0
        on_progress(FOLDER, 0, total)
        for chunk in plan_batches(new, self.max_size, self.batch_count):
            messages: list[PolledMessage] = []
            skipped: dict[str, str] = {}
            broken: MailboxError | None = None
            for item in chunk:
                if item.size > self.max_size:
                    skipped[item.uidl] = too_large(self.max_size, size=item.size)
                    continue
                try:
                    raw = await self.session.retrieve(item.number, self.max_size, self.retr_timeout)
                except TooLarge:
                    skipped[item.uidl] = too_large(self.max_size, said=item.size)
                    if not self.session.connected:
                        broken = MailboxError(
                            "disconnected",
                            "The mail server sent a message longer than it said; will reconnect",
                        )
                        break
                    continue
                messages.append(PolledMessage(raw, {"uidl": item.uidl}))
            for uidl, why in skipped.items():
                log.warning("mailbox %s: message %s not filed: %s", mid, uidl, why)
            await on_batch(
                PolledBatch(FOLDER, FolderKind.INBOX, messages, self._remember(messages, skipped))
            )
            done += len(messages) + len(skipped)  # after a break: the rest waits for next poll
            count += len(messages)
            on_progress(FOLDER, done, total)
            if broken is not None:
                raise broken
        if not fresh:
            gone = seen - {m.uidl for m in listed}
            if gone:  # deleted on the server by another client: nothing to remember
                await self.db.run_write(store.forget_uidls, mid, sorted(gone))
        return count

    def _remember(
        self, messages: list[PolledMessage], skipped: dict[str, str]
    ) -> Callable[[Connection], None]:
        """What the batch covers, written in its spool transaction: every UIDL it took."""
        mid, now = self.row["id"], self.clock.now()
        rows = [(m.where["uidl"], None) for m in messages] + list(skipped.items())

        def remember(conn: Connection) -> None:
            store.remember_uidls(conn, mid, rows, now)

        return remember

    async def wait_for_new(self, stop: asyncio.Event) -> bool:
        """POP3 has no IDLE and a session sees no new mail: quit, wait, log in again."""
        await self.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.interval)
        return False

    async def close(self) -> None:
        await self.session.quit()


__all__ = ["PopMailSource", "plan_batches", "too_large"]
