"""Connected mailboxes (IMAP and POP3): add, poll forever, backfill, report status.

Every polled message goes through the one ingest path: each fetched batch is
stored in the durable spool (:class:`~gateway.ingest.spool.Spool`) *in the same
transaction* as what the batch covers (an IMAP folder checkpoint, POP3 UIDLs)
and the mailbox's progress, and the ingest runner files it afterwards.  A
crash or a kick re-fetches at most one batch, and filing never files twice.

What differs between the protocols sits behind one small interface,
:class:`~gateway.receive.mailboxes.source.MailSource`; this module picks one by
``mailboxes.protocol`` and owns the rest (state, errors, backoff, passwords,
progress, ``last_ok_at``, one poller per mailbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

from gateway.clock import Clock, SystemClock
from gateway.config import Settings
from gateway.ingest.spool import Spool
from gateway.metrics import MAILBOX_POLL_ERRORS
from gateway.receive import pop3
from gateway.receive.imap import (
    Backoff,
    ImapSession,
    MailboxConfig,
    MailboxError,
    MailboxSource,
    connect,
)
from gateway.receive.mailboxes.crypto import PasswordBox, PasswordUnreadable
from gateway.receive.mailboxes.imap_source import ImapMailSource
from gateway.receive.mailboxes.pop3_source import PopMailSource
from gateway.receive.mailboxes.source import MailSource, PolledBatch
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
        "protocol": row.get("protocol") or "imap",
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


#: ``mailboxes.protocol`` values, and the channel each one's mail is filed under.
PROTOCOLS = {"imap": "imap", "pop3": "pop"}


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
        #: MAILGATE_POP_INTERVAL: seconds between POP3 polls (POP3 has no IDLE).
        self.pop_interval = settings.pop_interval
        #: POP3 messages larger than the SMTP receiver's limit are skipped, not fetched.
        self.max_message_size = settings.max_message_size
        #: MAILGATE_POLL_LEASE: how long one process's claim on a mailbox lasts unrenewed.
        self.poll_lease = settings.poll_lease

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
            pop = await store.pop_summary(conn, mailbox_id) if row["protocol"] == "pop3" else None
        out = public(row)
        out["folders"] = {
            name: {"uidvalidity": f["uidvalidity"], "last_uid": f["last_uid"]}
            for name, f in folders.items()
        }
        out["messages"] = filed
        if pop is not None:
            out["messages"] = pop["stored"]
            out["skipped"] = {
                "count": pop["skipped_count"],
                "items": [{"uidl": s["uidl"], "reason": s["skipped"]} for s in pop["skipped"]],
            }
        out["parked"] = parked_summary(
            await self.db.run_read(inbound_store.kept_for_mailbox, row["user_id"], mailbox_id)
        )
        return out

    async def _checked(self, config: MailboxConfig) -> MailboxConfig:
        """``config`` with the address its host was just checked to have.

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
        return replace(config, address=address)

    async def open_session(self, config: MailboxConfig, timeout: float) -> ImapSession:
        """Connect and log in over IMAP, to the checked address (see :meth:`_checked`)."""
        return await connect(await self._checked(config), timeout)

    async def open_source(
        self, row: dict[str, Any], config: MailboxConfig, timeout: float
    ) -> MailSource:
        """A logged-in :class:`MailSource` for the mailbox's protocol."""
        checked = await self._checked(config)
        if row.get("protocol") == "pop3":
            session = await pop3.connect(checked, timeout)
            return PopMailSource(
                self.db,
                row,
                session,
                max_size=self.max_message_size,
                interval=self.pop_interval,
                clock=self.clock,
            )
        imap = await connect(checked, timeout)
        try:
            return await ImapMailSource.open(self.db, row, imap, self.idle_timeout)
        except BaseException:
            await imap.logout()
            raise

    async def check(
        self, config: MailboxConfig, timeout: float = 10.0, protocol: str = "imap"
    ) -> MailboxError | None:
        """Log in once and out again: None when the account works."""
        try:
            checked = await self._checked(config)
            if protocol == "pop3":
                session = await pop3.connect(checked, timeout)
                await session.quit()
            else:
                imap = await connect(checked, timeout)
                await imap.logout()
        except MailboxError as exc:
            return exc
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

    async def file_batch(
        self, row: dict[str, Any], batch: PolledBatch, channel: str, progress: dict[str, list[int]]
    ) -> None:
        """Store one fetched batch for filing, with what it covers, in one transaction."""
        mid = row["id"]
        if row["bounce"]:  # the bounce worker finds the org from the send
            rows = [{"channel": "bounce", "raw": m.raw} for m in batch.messages]
        else:
            rows = [
                {
                    "org_id": row["org_id"],
                    "user_id": row["user_id"],
                    "channel": channel,
                    "raw": m.raw,
                    "origin": {
                        "mailbox_id": mid,
                        "folder": batch.folder,
                        "kind": str(batch.kind),
                        **m.where,
                    },
                }
                for m in batch.messages
            ]
        state = "backfilling" if any(d < t for d, t in progress.values()) else "ok"
        snapshot = {k: list(v) for k, v in progress.items()}

        def after(conn) -> None:
            batch.remember(conn)
            store.store_progress(conn, mid, snapshot, state)

        # Not fsync'd: a power cut takes the checkpoint back with the rows, and the
        # server still has the mail (see Spool.store).
        await self.spool.store(rows, after=after, durable=False)
        if rows and not row["bounce"] and self.ingest is not None:
            self.ingest.wake()

    async def poll_source(
        self,
        row: dict[str, Any],
        source: MailSource,
        *,
        since: date,
        fresh: bool = False,
        on_progress: ProgressFn | None = None,
    ) -> int:
        """One pass over what ``source`` has that is new; ``fresh`` ignores what was stored."""
        progress: dict[str, list[int]] = {}

        def track(folder: str, done: int, total: int) -> None:
            progress[folder] = [done, total]
            if on_progress is not None:
                on_progress(folder, done, total)

        # One batch is filed while the next is fetched.  Only one filing is ever in
        # flight, so a checkpoint is never committed before the batches under it.
        filing: asyncio.Future[None] | None = None

        async def on_batch(batch: PolledBatch) -> None:
            nonlocal filing
            if filing is not None:
                await filing
            filing = asyncio.ensure_future(self.file_batch(row, batch, source.channel, progress))

        try:
            count = await source.fetch_new(on_batch, since=since, fresh=fresh, on_progress=track)
        finally:
            if filing is not None:
                await filing
        return count

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
        """One IMAP pass over ``folders`` of an open session (tests and tools)."""
        imap = ImapMailSource(self.db, row, source.session, folders, self.idle_timeout)
        return await self.poll_source(row, imap, since=since, fresh=fresh, on_progress=on_progress)

    # -- flags -----------------------------------------------------------------

    async def mark_read(self, org_id: int, message_pk: int, seen: bool) -> str:
        """CRM read state → messages.seen, and \\Seen on every IMAP server holding the message.

        Returns ``updated`` (the server was told), ``pending`` (it could not be
        reached: the poller tells it on its next cycle) or ``none`` (the message
        did not come from a connected IMAP mailbox; POP3 keeps no read state).
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
        """Keep one mailbox filed until ``stop``: catch up, wait for mail, reconnect with backoff.

        IMAP waits in IDLE on one session; POP3 logs out, waits
        ``MAILGATE_POP_INTERVAL`` and logs in again (see ``MailSource.wait_for_new``).
        """
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
                source = await self.open_source(row, config, self.connect_timeout)
                try:
                    while not stop.is_set():
                        await source.prepare()
                        await self.poll_source(row, source, since=since)
                        await self._record_ok(mid)
                        backoff.reset()
                        if not await source.wait_for_new(stop):
                            break
                finally:
                    await source.close()
            except MailboxError as exc:
                MAILBOX_POLL_ERRORS.labels(str(mid), row.get("protocol") or "imap", exc.kind).inc()
                await self.record_error(mid, exc.kind, error_words(exc))
                delay = backoff.next()
                if exc.kind == "bad_login":  # the same password fails again; avoid lock-outs
                    delay = max(delay, 300.0)
                log.info(
                    "mailbox %s: %s; retrying in %g s",
                    mid,
                    exc.kind,
                    delay,
                    extra={"mailbox_id": mid},
                )
                await _sleep_or_stop(delay, stop)

    async def backfill(
        self, row: dict[str, Any], days: int, on_progress: ProgressFn | None = None
    ) -> int:
        """File the last ``days`` of INBOX and Sent now (what `imap backfill` runs).

        POP3 has one folder and no dates: everything on the server is fetched again.
        """
        try:
            config = self.config(row)
        except PasswordUnreadable as exc:
            raise MailboxError("protocol", str(exc)) from exc
        since = self.clock.now().date() - timedelta(days=days) if days else date.min
        try:
            source = await self.open_source(row, config, self.connect_timeout)
            try:
                count = await self.poll_source(
                    row, source, since=since, fresh=True, on_progress=on_progress
                )
            finally:
                await source.close()
        except MailboxError as exc:
            await self.record_error(row["id"], exc.kind, error_words(exc))
            raise
        await self._record_ok(row["id"])
        return count


class MailboxSupervisor(LoopRunner):
    """The ``imap`` role's runner: one poller task per mailbox it holds the lease of.

    A round compares the stored mailboxes with the running pollers, stops
    those whose mailbox was removed or edited (or whose task died), renews the
    leases it holds, and starts pollers for the mailboxes whose lease it can
    take.  Stopping the supervisor tells every poller to stop at once, waits
    for them until the deadline, cancels the rest, then releases its leases: a
    poller cut mid-batch loses nothing, since its checkpoint commits with the
    filing.

    **One poller per mailbox across processes.**  Every ``imap`` process runs
    a supervisor; a mailbox is polled only by the one holding its lease
    (``mailboxes.poller`` / ``poll_lease_until``, ``MAILGATE_POLL_LEASE``
    seconds).  A lease is taken by a conditional UPDATE (free, expired, or
    already ours), renewed every third of the lease, and released on a clean
    stop, so the others take over at their next round.  A process that dies
    stops renewing; its leases run out and another process takes its
    mailboxes within the lease.  A poller whose lease was lost (not renewed
    in time, e.g. storage was away) stops: when a renewal finds the lease
    taken, and in any case once the lease it last renewed has run out
    (a timer, so a hung round cannot keep it polling).
    """

    name = "mailboxes"

    def __init__(
        self,
        service: MailboxService,
        refresh: float = 1.0,
        *,
        lease: float | None = None,
        holder: str | None = None,
    ) -> None:
        self.lease = service.poll_lease if lease is None else lease
        # Rounds come at least three times per lease, so each renewal is on time.
        super().__init__(poll_interval=min(refresh, self.lease / 3))
        self.service = service
        #: Who this process is in ``mailboxes.poller``.
        self.holder = holder or poller_identity()
        self.tasks: dict[int, tuple[tuple[Any, ...], asyncio.Task[None], asyncio.Event]] = {}
        #: Per held mailbox: the timer that stops its poller when the lease runs out unrenewed.
        self._lapse: dict[int, asyncio.TimerHandle] = {}
        self._renewed_at = 0.0

    async def run_once(self) -> int:
        """Start and stop pollers to match the stored mailboxes and leases; how many changed."""
        async with self.service.db.connect() as conn:
            rows = {r["id"]: r for r in await store.pollable_mailboxes(conn)}
        changed = 0
        unpolled: list[int] = []  # stopped here and not restarted by us: let others have them
        for mid in list(self.tasks):
            version, task, ev = self.tasks[mid]
            row = rows.get(mid)
            if row is None or generation(row) != version or task.done():
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    log.error("mailbox %s poller failed: %r", mid, exc)
                    await self.service.record_error(mid, "protocol", f"internal error: {exc!r}")
                await self._stop_poller(mid)
                if row is None:
                    unpolled.append(mid)
                changed += 1
        if unpolled:
            async with self.service.db.begin() as conn:
                await store.release_poll_leases(conn, unpolled, self.holder)
        await self._renew()
        if self.stopping:
            return changed
        now = self.service.clock.now()
        wanted = [
            mid
            for mid, row in rows.items()
            if mid not in self.tasks and lease_takeable(row, self.holder, now)
        ]
        if not wanted:
            return changed
        asked = time.monotonic()
        async with self.service.db.begin() as conn:
            taken = await store.take_poll_leases(
                conn, wanted, self.holder, now, now + timedelta(seconds=self.lease)
            )
        for mid in sorted(taken):
            row = rows[mid]
            ev = asyncio.Event()
            task = asyncio.create_task(self.service.run(row, ev), name=f"imap-{mid}")
            self.tasks[mid] = (generation(row), task, ev)
            self._arm(mid, asked)
            changed += 1
        return changed

    async def _renew(self) -> None:
        """Renew every held lease once a third of the lease has passed; stop the lost ones."""
        held = [mid for mid, (_, task, _) in self.tasks.items() if not task.done()]
        asked = time.monotonic()
        if not held or asked - self._renewed_at < self.lease / 3:
            return
        until = self.service.clock.now() + timedelta(seconds=self.lease)
        async with self.service.db.begin() as conn:
            kept = await store.renew_poll_leases(conn, held, self.holder, until)
        self._renewed_at = asked
        for mid in held:
            if mid in kept:
                self._arm(mid, asked)
            else:
                log.warning("mailbox %s: its poller lease was taken over; stopping here", mid)
                await self._stop_poller(mid)

    def _arm(self, mid: int, asked: float) -> None:
        """(Re)start the timer that stops the poller when the lease asked at ``asked`` ends."""
        old = self._lapse.pop(mid, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay = asked + self.lease - time.monotonic()
        self._lapse[mid] = loop.call_later(max(0.0, delay), self._lapsed, mid)

    def _lapsed(self, mid: int) -> None:
        """The lease ran out unrenewed: another process may poll now, so this one stops."""
        self._lapse.pop(mid, None)
        found = self.tasks.get(mid)
        if found is None or found[1].done():
            return
        log.warning("mailbox %s: poller lease ran out before it was renewed; stopping here", mid)
        found[2].set()
        found[1].cancel()

    async def _stop_poller(self, mid: int) -> None:
        _, task, ev = self.tasks.pop(mid)
        timer = self._lapse.pop(mid, None)
        if timer is not None:
            timer.cancel()
        ev.set()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task

    async def stop(self, deadline: float = 10.0) -> None:
        """Tell every poller to stop now, so they wind down while the round finishes."""
        for _, _, ev in self.tasks.values():
            ev.set()
        await super().stop(deadline)

    async def close(self) -> None:
        """Wait for the pollers until the stop deadline, cancel those still busy, then
        release the leases (after, so no other process polls while ours still finishes)."""
        held = list(self.tasks)
        pollers = [task for _, task, _ in self.tasks.values()]
        for _, _, ev in self.tasks.values():
            ev.set()
        self.tasks.clear()
        for timer in self._lapse.values():
            timer.cancel()
        self._lapse.clear()
        if pollers:
            _, busy = await asyncio.wait(pollers, timeout=self.time_left())
            if busy:
                log.warning(
                    "mailboxes: %d pollers still busy at the deadline; cancelling", len(busy)
                )
            for task in busy:
                task.cancel()
            for task in pollers:
                with contextlib.suppress(BaseException):
                    await task
        if held:
            async with self.service.db.begin() as conn:
                await store.release_poll_leases(conn, held, self.holder)


def poller_identity() -> str:
    """``host:pid:random``, what ``mailboxes.poller`` shows of this process (≤ 100 characters).

    The random part tells a restarted process (same host, maybe the same pid in a
    container) from the one that held the lease before it.
    """
    tail = f":{os.getpid()}:{secrets.token_hex(4)}"
    return socket.gethostname()[: 100 - len(tail)] + tail


def lease_takeable(row: dict[str, Any], holder: str, now: datetime) -> bool:
    """Whether ``holder`` may take the mailbox's poller lease: free, expired, or its own."""
    until = row.get("poll_lease_until")
    return row.get("poller") in (None, holder) or until is None or until < now


def generation(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a poller stale: an edit bumps ``version``; a mailbox removed and added
    again may get the same id back (SQLite reuses the highest id), so its creation time
    and sealed password count too."""
    return (row["version"], row["created_at"], row["password_enc"])


async def _sleep_or_stop(delay: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
