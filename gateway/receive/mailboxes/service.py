"""Connected mailboxes: add, poll forever, backfill, report status, and push \\Seen.

Every polled message goes through the one ingest path: each fetched batch is
stored in the durable spool (:class:`~gateway.ingest.spool.Spool`) *in the same
transaction* as the folder checkpoint and the mailbox's progress, and the
ingest runner files it afterwards (recording each message's UID location).  A
crash or a kick re-fetches at most one batch, and filing never files twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from gateway.clock import Clock, SystemClock
from gateway.config import Settings
from gateway.ingest.spool import Spool
from gateway.receive.imap import (
    Backoff,
    Checkpoint,
    FetchBatch,
    ImapSession,
    MailboxConfig,
    MailboxError,
    MailboxSource,
    connect,
    discover_folders,
    poll_once,
    wait_for_new,
)
from gateway.receive.mailboxes.crypto import PasswordBox, PasswordUnreadable
from gateway.receive.mailboxes.validate import (
    PrivateTarget,
    UnresolvableHost,
    config_from,
    resolve_target,
)
from gateway.runner import LoopRunner, Runner
from storage import inbound_store
from storage import mailboxes as store
from storage.db import Database

log = logging.getLogger("mailgate.mailboxes")

ProgressFn = Callable[[str, int, int], None]

#: Plain words for each problem a user can act on.
ADVICE = {
    "bad_login": "the server refused the login or password",
    "tls_failure": "a secure (TLS) connection could not be established",
    "unreachable": "the mail server could not be reached",
    "timeout": "the mail server stopped answering",
    "disconnected": "the mail server closed the connection",
    "protocol": "the mail server answered something unexpected",
    "password": "the stored password can no longer be read",
    "private_host": "the mail server's address is not a public one, which is not allowed here",
}


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A mailbox as the API and CLI show it: never the password, not even encrypted."""
    error = None
    if row.get("error_kind"):
        error = {"kind": row["error_kind"], "message": row["error_message"] or ""}
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "host": row["host"],
        "port": row["port"],
        "login": row["login"],
        "security": row["security"],
        "sent_folder": row["sent_folder"],
        "bounce": row["bounce"],
        "backfill_days": row["backfill_days"],
        "state": row["state"],
        "error": error,
        "progress": {
            folder: {"done": done, "total": total}
            for folder, (done, total) in (row.get("progress") or {}).items()
        },
        "last_ok_at": row["last_ok_at"],
        "created_at": row["created_at"],
    }


def error_words(exc: MailboxError) -> str:
    """``bad login: the server refused …`` — what ``imap status`` shows."""
    advice = ADVICE.get(exc.kind, "")
    detail = exc.message
    if not advice or not detail or advice.lower() in detail.lower():
        return detail or advice
    return f"{advice} ({detail})"


#: What an operator runs to file a parked message again (``mailgate inbound replay``).
REPLAY_HINT = (
    "mailgate inbound replay ID files one again once the cause is fixed "
    "(all parked mail: mailgate inbound list --state failed)"
)


def parked_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How many polled messages are not filed, grouped by why, and how to replay them.

    ``parked``: given up on (``failed``) or refused, waiting for an operator;
    ``retrying``: broke once and will be tried again by itself.  The mailbox
    state stays about the connection; this is about the mail it brought.
    """
    parked = [r for r in rows if r["state"] != "pending"]
    groups: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        key = (r["state"], r["failed_stage"] or "", r["last_error"] or "")
        groups.setdefault(key, []).append(r["id"])
    return {
        "count": len(parked),
        "retrying": len(rows) - len(parked),
        "reasons": [
            {
                "state": "retrying" if state == "pending" else state,
                "stage": stage or None,
                "error": error,
                "count": len(ids),
                "ids": ids[:20],
            }
            for (state, stage, error), ids in sorted(groups.items(), key=lambda g: -len(g[1]))
        ],
        "replay": REPLAY_HINT if parked else None,
    }


class MailboxService:
    def __init__(
        self,
        db: Database,
        spool: Spool,
        settings: Settings,
        *,
        ingest: Runner | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.ingest = ingest  # woken after each stored batch (None: it runs elsewhere)
        #: "Now" for the backfill window (which days a poller files).
        self.clock = clock or SystemClock()
        self.passwords = PasswordBox(settings.resolved_secret_keys())
        #: MAILGATE_ALLOW_PRIVATE_TARGETS: mailbox hosts on loopback/private addresses.
        self.allow_private_targets = settings.allow_private_targets
        self.connect_timeout = 30.0
        self.idle_timeout = 120.0

    # -- records ---------------------------------------------------------------

    async def add(self, org_id: int, user_id: int, values: dict[str, Any]) -> dict[str, Any]:
        """Store a mailbox (password sealed); the ``imap`` role starts polling it."""
        row = {k: v for k, v in values.items() if k != "password"}
        row.update(
            org_id=org_id,
            user_id=user_id,
            password_enc=self.passwords.seal(values["password"]),
            progress={},
        )
        async with self.db.begin() as conn:
            mid = await store.create_mailbox(conn, row)
            return public(await store.get_mailbox(conn, mid))

    def config(self, row: dict[str, Any]) -> MailboxConfig:
        return config_from(row, self.passwords.open(row["password_enc"]))

    async def status(self, mailbox_id: int) -> dict[str, Any] | None:
        async with self.db.connect() as conn:
            row = await store.get_mailbox(conn, mailbox_id)
            if row is None:
                return None
            folders = await store.folder_states(conn, mailbox_id)
            filed = await store.count_locations(conn, mailbox_id)
        out = public(row)
        out["folders"] = {
            name: {"uidvalidity": f["uidvalidity"], "last_uid": f["last_uid"]}
            for name, f in folders.items()
        }
        out["messages"] = filed
        out["parked"] = parked_summary(
            await self.db.run_read(inbound_store.kept_for_mailbox, row["user_id"], mailbox_id)
        )
        return out

    async def open_session(self, config: MailboxConfig, timeout: float) -> ImapSession:
        """Connect and log in, to the address the host was just checked to have.

        Every connection goes through here: the host is resolved and each of
        its addresses checked (``validate.resolve_target``) right before, and
        the connection is made to the checked address, not to the name again.
        """
        try:
            address = await resolve_target(
                config.host, config.port, allow_private=self.allow_private_targets
            )
        except PrivateTarget as exc:
            raise MailboxError("private_host", str(exc)) from exc
        except UnresolvableHost as exc:
            raise MailboxError("unreachable", str(exc)) from exc
        return await connect(replace(config, address=address), timeout)

    async def check(self, config: MailboxConfig, timeout: float = 10.0) -> MailboxError | None:
        """Log in once and out again: None when the account works."""
        try:
            session = await self.open_session(config, timeout)
        except MailboxError as exc:
            return exc
        await session.logout()
        return None

    async def record_error(self, mailbox_id: int, kind: str, message: str) -> None:
        with contextlib.suppress(Exception):
            async with self.db.begin() as conn:
                await store.update_mailbox(
                    conn, mailbox_id, state="error", error_kind=kind, error_message=message
                )

    async def _record_ok(self, mailbox_id: int) -> None:
        async with self.db.begin() as conn:
            await store.update_mailbox(
                conn,
                mailbox_id,
                state="ok",
                error_kind=None,
                error_message=None,
                last_ok_at=self.clock.now(),
            )

    # -- filing ----------------------------------------------------------------

    async def _load_checkpoint(self, mailbox_id: int, folder: str) -> Checkpoint | None:
        async with self.db.connect() as conn:
            row = (await store.folder_states(conn, mailbox_id)).get(folder)
        if row is None or not row["uidvalidity"]:
            return None
        return Checkpoint(row["uidvalidity"], row["last_uid"])

    async def file_batch(
        self, row: dict[str, Any], batch: FetchBatch, kind: str, progress: dict[str, list[int]]
    ) -> None:
        """Store one fetched batch for filing, with its checkpoint, in one durable transaction."""
        mid = row["id"]
        if row["bounce"]:  # the bounce worker finds the org from the send
            rows = [{"channel": "bounce", "raw": m.raw} for m in batch.messages]
        else:
            rows = [
                {
                    "org_id": row["org_id"],
                    "user_id": row["user_id"],
                    "channel": "imap",
                    "raw": m.raw,
                    "origin": {
                        "mailbox_id": mid,
                        "folder": batch.folder,
                        "kind": kind,
                        "uidvalidity": batch.checkpoint.uidvalidity,
                        "uid": m.uid,
                        "seen": m.seen,
                    },
                }
                for m in batch.messages
            ]
        state = "backfilling" if any(d < t for d, t in progress.values()) else "ok"
        snapshot = {k: list(v) for k, v in progress.items()}
        cp = batch.checkpoint

        def after(conn) -> None:
            store.store_checkpoint(conn, mid, batch.folder, cp.uidvalidity, cp.last_uid)
            store.store_progress(conn, mid, snapshot, state)

        # Not fsync'd: a power cut takes the checkpoint back with the rows, and the
        # server still has the mail (see Spool.store).
        await self.spool.store(rows, after=after, durable=False)
        if rows and not row["bounce"] and self.ingest is not None:
            self.ingest.wake()

    async def poll(
        self,
        row: dict[str, Any],
        source: MailboxSource,
        folders: list[str],
        *,
        since: date,
        fresh: bool = False,
        on_progress: ProgressFn | None = None,
    ) -> int:
        """One pass over ``folders``; ``fresh`` ignores checkpoints (an explicit backfill)."""
        progress: dict[str, list[int]] = {}
        kinds = {f: ("inbox" if i == 0 else "sent") for i, f in enumerate(folders)}

        def track(folder: str, done: int, total: int) -> None:
            progress[folder] = [done, total]
            if on_progress is not None:
                on_progress(folder, done, total)

        async def load(folder: str) -> Checkpoint | None:
            return None if fresh else await self._load_checkpoint(row["id"], folder)

        # One batch is filed while the next is fetched.  Only one filing is ever in
        # flight, so a checkpoint is never committed before the batches under it.
        filing: asyncio.Future[None] | None = None

        async def on_batch(batch: FetchBatch) -> None:
            nonlocal filing
            if filing is not None:
                await filing
            filing = asyncio.ensure_future(
                self.file_batch(row, batch, kinds[batch.folder], progress)
            )

        def on_error(exc: MailboxError) -> None:
            log.warning("mailbox %s: folder skipped: %s", row["id"], exc.message)

        try:
            count = await poll_once(
                source, folders, load, on_batch, since=since, on_progress=track, on_error=on_error
            )
        finally:
            if filing is not None:
                await filing
        return count

    # -- flags -----------------------------------------------------------------

    async def sync_flags(self, row: dict[str, Any], source: MailboxSource, folders: list[str]):
        """Read/unread in the mail client → messages.seen (CONDSTORE: no FETCH when unchanged)."""
        if not source.session.has_capability("CONDSTORE"):
            return
        async with self.db.connect() as conn:
            states = await store.folder_states(conn, row["id"])
        for folder in folders:
            stored = states.get(folder)
            since = stored["highestmodseq"] if stored else None
            if since is None:
                state = await source.session.examine(folder, condstore=True)
                async with self.db.begin() as conn:
                    await store.store_modseq(conn, row["id"], folder, state.highestmodseq)
                continue
            flags, modseq = await source.changed_flags(folder, since)
            if modseq == since and not flags:
                continue
            uidvalidity = stored["uidvalidity"]
            seen = {uid: "\\Seen" in f for uid, f in flags.items()}

            def apply(conn, folder=folder, seen=seen, uidvalidity=uidvalidity) -> None:
                store.apply_server_flags(conn, row["id"], folder, uidvalidity, seen)

            await self.db.run_write(apply)
            async with self.db.begin() as conn:
                await store.store_modseq(conn, row["id"], folder, modseq)

    async def push_seen(self, row: dict[str, Any], source: MailboxSource) -> int:
        """Tell the server about messages read (or unread) in the CRM."""
        async with self.db.connect() as conn:
            pending = await store.pending_seen(conn, row["id"])
        for item in pending:
            await source.set_seen(item["folder"], item["uid"], bool(item["seen"]))
        if pending:
            async with self.db.begin() as conn:
                await store.set_seen_pending(conn, [p["id"] for p in pending], False)
        return len(pending)

    async def mark_read(self, org_id: int, message_pk: int, seen: bool) -> str:
        """CRM read state → messages.seen, and \\Seen on every server holding the message.

        Returns ``updated`` (the server was told), ``pending`` (it could not be
        reached: the poller tells it on its next cycle) or ``none`` (the message
        did not come from a connected mailbox).
        """
        async with self.db.begin() as conn:
            await conn.run_sync(store.set_seen_sync, [message_pk], seen)
            where = await store.locations(conn, org_id, message_pk)
            await store.set_seen_pending(conn, [w["id"] for w in where], True)
        if not where:
            return "none"
        result = "updated"
        for loc in where:
            async with self.db.connect() as conn:
                row = await store.get_mailbox(conn, loc["mailbox_id"])
            try:
                async with await self.open_session(self.config(row), 10.0) as session:
                    await MailboxSource(session).set_seen(loc["folder"], loc["uid"], seen)
            except (MailboxError, PasswordUnreadable) as exc:
                log.info("mailbox %s: \\Seen left for the poller: %s", row["id"], exc)
                result = "pending"
                continue
            async with self.db.begin() as conn:
                await store.set_seen_pending(conn, [loc["id"]], False)
        return result

    # -- the loops -------------------------------------------------------------

    async def run(self, row: dict[str, Any], stop: asyncio.Event) -> None:
        """Keep one mailbox filed until ``stop``: catch up, IDLE, reconnect with backoff."""
        mid = row["id"]
        backoff = Backoff(1.0, 300.0)
        since = self.clock.now().date() - timedelta(days=row["backfill_days"])
        while not stop.is_set():
            try:
                config = self.config(row)
            except PasswordUnreadable as exc:
                await self.record_error(mid, "password", str(exc))
                await _sleep_or_stop(300, stop)
                continue
            try:
                session = await self.open_session(config, self.connect_timeout)
                try:
                    folders = await discover_folders(session, row["sent_folder"])
                    source = MailboxSource(session)
                    while not stop.is_set():
                        await self.push_seen(row, source)
                        await self.sync_flags(row, source, folders)
                        await self.poll(row, source, folders, since=since)
                        await self._record_ok(mid)
                        backoff.reset()
                        await wait_for_new(
                            session,
                            folders[0],
                            self.idle_timeout,
                            await self._load_checkpoint(mid, folders[0]),
                            stop,
                        )
                finally:
                    await session.logout()
            except MailboxError as exc:
                await self.record_error(mid, exc.kind, error_words(exc))
                delay = backoff.next()
                if exc.kind == "bad_login":  # the same password fails again; avoid lock-outs
                    delay = max(delay, 300.0)
                log.info("mailbox %s: %s; retrying in %g s", mid, exc.kind, delay)
                await _sleep_or_stop(delay, stop)

    async def backfill(
        self, row: dict[str, Any], days: int, on_progress: ProgressFn | None = None
    ) -> int:
        """File the last ``days`` of INBOX and Sent now (what `imap backfill` runs)."""
        try:
            config = self.config(row)
        except PasswordUnreadable as exc:
            raise MailboxError("protocol", str(exc)) from exc
        since = self.clock.now().date() - timedelta(days=days) if days else date.min
        try:
            async with await self.open_session(config, self.connect_timeout) as session:
                folders = await discover_folders(session, row["sent_folder"])
                count = await self.poll(
                    row,
                    MailboxSource(session),
                    folders,
                    since=since,
                    fresh=True,
                    on_progress=on_progress,
                )
        except MailboxError as exc:
            await self.record_error(row["id"], exc.kind, error_words(exc))
            raise
        await self._record_ok(row["id"])
        return count


class MailboxSupervisor(LoopRunner):
    """The ``imap`` role's runner: one poller task per mailbox, following adds, edits, removals.

    A round compares the stored mailboxes with the running pollers, stops
    those whose mailbox was removed or edited (or whose task died) and starts
    the missing ones.  Stopping the supervisor tells every poller to stop at
    once, waits for them until the deadline, and cancels the rest: a poller cut
    mid-batch loses nothing, since its checkpoint commits with the filing.
    """

    name = "mailboxes"

    def __init__(self, service: MailboxService, refresh: float = 1.0) -> None:
        super().__init__(poll_interval=refresh)
        self.service = service
        self.tasks: dict[int, tuple[int, asyncio.Task[None], asyncio.Event]] = {}

    async def run_once(self) -> int:
        """Start and stop pollers to match the stored mailboxes; how many changed."""
        async with self.service.db.connect() as conn:
            rows = {r["id"]: r for r in await store.pollable_mailboxes(conn)}
        changed = 0
        for mid in list(self.tasks):
            version, task, ev = self.tasks[mid]
            row = rows.get(mid)
            if row is None or row["version"] != version or task.done():
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    log.error("mailbox %s poller failed: %r", mid, exc)
                    await self.service.record_error(mid, "protocol", f"internal error: {exc!r}")
                ev.set()
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                del self.tasks[mid]
                changed += 1
        if self.stopping:
            return changed
        for mid, row in rows.items():
            if mid not in self.tasks:
                ev = asyncio.Event()
                task = asyncio.create_task(self.service.run(row, ev), name=f"imap-{mid}")
                self.tasks[mid] = (row["version"], task, ev)
                changed += 1
        return changed

    async def stop(self, deadline: float = 10.0) -> None:
        """Tell every poller to stop now, so they wind down while the round finishes."""
        for _, _, ev in self.tasks.values():
            ev.set()
        await super().stop(deadline)

    async def close(self) -> None:
        """Wait for the pollers until the stop deadline; cancel those still busy."""
        pollers = [task for _, task, _ in self.tasks.values()]
        for _, _, ev in self.tasks.values():
            ev.set()
        self.tasks.clear()
        if not pollers:
            return
        _, busy = await asyncio.wait(pollers, timeout=self.time_left())
        if busy:
            log.warning("mailboxes: %d pollers still busy at the deadline; cancelling", len(busy))
        for task in busy:
            task.cancel()
        for task in pollers:
            with contextlib.suppress(BaseException):
                await task


async def _sleep_or_stop(delay: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
