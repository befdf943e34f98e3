"""IMAP behind :class:`~gateway.receive.mailboxes.source.MailSource`: folders, UID
checkpoints, IDLE, and read flags synced both ways.

The first folder is INBOX (``kind`` inbox), the next the Sent folder (``kind``
sent).  A batch remembers its folder's ``(UIDVALIDITY, last UID)`` checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date
from typing import Any

from gateway.receive.imap import (
    Checkpoint,
    FetchBatch,
    ImapSession,
    MailboxError,
    MailboxSource,
    discover_folders,
    poll_once,
    wait_for_new,
)
from gateway.receive.mailboxes.source import (
    FolderKind,
    OnBatch,
    PolledBatch,
    PolledMessage,
    Progress,
)
from storage import mailboxes as store
from storage.db import Database

log = logging.getLogger("mailgate.mailboxes")


class ImapMailSource:
    """One logged-in IMAP session over a mailbox's INBOX and Sent folders."""

    channel = "imap"

    def __init__(
        self,
        db: Database,
        row: dict[str, Any],
        session: ImapSession,
        folders: list[str],
        idle_timeout: float = 120.0,
    ) -> None:
        self.db, self.row, self.session, self.folders = db, row, session, folders
        self.source = MailboxSource(session)
        self.idle_timeout = idle_timeout

    @classmethod
    async def open(
        cls, db: Database, row: dict[str, Any], session: ImapSession, idle_timeout: float
    ) -> ImapMailSource:
        folders = await discover_folders(session, row["sent_folder"])
        return cls(db, row, session, folders, idle_timeout)

    async def load_checkpoint(self, folder: str) -> Checkpoint | None:
        async with self.db.connect() as conn:
            row = (await store.folder_states(conn, self.row["id"])).get(folder)
        if row is None or not row["uidvalidity"]:
            return None
        return Checkpoint(row["uidvalidity"], row["last_uid"])

    # -- MailSource --------------------------------------------------------------------

    async def prepare(self) -> None:
        await self.push_seen()
        await self.sync_flags()

    async def fetch_new(
        self, on_batch: OnBatch, *, since: date, fresh: bool, on_progress: Progress
    ) -> int:
        kinds = {
            f: (FolderKind.INBOX if i == 0 else FolderKind.SENT) for i, f in enumerate(self.folders)
        }
        mid = self.row["id"]

        async def load(folder: str) -> Checkpoint | None:
            return None if fresh else await self.load_checkpoint(folder)

        async def each(batch: FetchBatch) -> None:
            cp, folder = batch.checkpoint, batch.folder

            def remember(conn) -> None:
                store.store_checkpoint(conn, mid, folder, cp.uidvalidity, cp.last_uid)

            messages = [
                PolledMessage(m.raw, {"uidvalidity": cp.uidvalidity, "uid": m.uid, "seen": m.seen})
                for m in batch.messages
            ]
            await on_batch(PolledBatch(folder, kinds[folder], messages, remember))

        def on_error(exc: MailboxError) -> None:
            log.warning("mailbox %s: folder skipped: %s", mid, exc.message)

        return await poll_once(
            self.source,
            self.folders,
            load,
            each,
            since=since,
            on_progress=on_progress,
            on_error=on_error,
        )

    async def wait_for_new(self, stop: asyncio.Event) -> bool:
        inbox = self.folders[0]
        await wait_for_new(
            self.session, inbox, self.idle_timeout, await self.load_checkpoint(inbox), stop
        )
        return True

    async def close(self) -> None:
        await self.session.logout()

    # -- read flags ----------------------------------------------------------------------

    async def sync_flags(self) -> None:
        """Read/unread in the mail client → messages.seen (CONDSTORE: no FETCH when unchanged)."""
        session, mid = self.session, self.row["id"]
        if not session.has_capability("CONDSTORE"):
            return
        async with self.db.connect() as conn:
            states = await store.folder_states(conn, mid)
        for folder in self.folders:
            stored = states.get(folder)
            since = stored["highestmodseq"] if stored else None
            if since is None:
                state = await session.examine(folder, condstore=True)
                async with self.db.begin() as conn:
                    await store.store_modseq(conn, mid, folder, state.highestmodseq)
                continue
            flags, modseq = await self.source.changed_flags(folder, since)
            if modseq == since and not flags:
                continue
            uidvalidity = stored["uidvalidity"]
            seen = {uid: "\\Seen" in f for uid, f in flags.items()}

            def apply(conn, folder=folder, seen=seen, uidvalidity=uidvalidity) -> None:
                store.apply_server_flags(conn, mid, folder, uidvalidity, seen)

            await self.db.run_write(apply)
            async with self.db.begin() as conn:
                await store.store_modseq(conn, mid, folder, modseq)

    async def push_seen(self) -> int:
        """Tell the server about messages read (or unread) in the CRM."""
        async with self.db.connect() as conn:
            pending = await store.pending_seen(conn, self.row["id"])
        for item in pending:
            await self.source.set_seen(item["folder"], item["uid"], bool(item["seen"]))
        if pending:
            async with self.db.begin() as conn:
                await store.set_seen_pending(conn, [p["id"] for p in pending], False)
        return len(pending)
