"""Fetching new mail from a folder in batches the caller can commit one by one.

``MailboxSource.fetch_new(folder, checkpoint)`` is an async iterator of
:class:`FetchBatch`.  The caller files ``batch.messages`` durably, then stores
``batch.checkpoint``; after a crash or a dropped connection the next poll
starts from the last stored checkpoint, so at most one batch is fetched twice
(and the caller's Message-ID/content-hash dedupe absorbs that).

Batches are at most 200 UIDs: aioimaplib parses a response recursively, one
stack frame per line, and a FETCH answer of ~1,000 lines raises RecursionError
inside the protocol and leaves the command waiting forever.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from gateway.receive.imap.checkpoint import (
    Checkpoint,
    FetchPlan,
    FolderState,
    PlanKind,
    batches,
    checkpoint_after,
    new_uids,
    plan_fetch,
    uid_set,
)
from gateway.receive.imap.client import ImapSession

#: aioimaplib recursion limit (see module docstring) leaves ~1,000 lines; 3 lines per message.
MAX_BATCH = 200
DEFAULT_BACKFILL_DAYS = 30
FETCH_ITEMS = "(UID FLAGS INTERNALDATE BODY.PEEK[])"

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """One message exactly as the server stores it."""

    folder: str
    uid: int
    flags: frozenset[str]
    internal_date: datetime | None
    raw: bytes

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags


@dataclass(frozen=True, slots=True)
class FetchBatch:
    """Messages to file, and the checkpoint to store once they are filed.

    ``resync`` is True on every batch of a fetch that started over because the
    server's UIDVALIDITY changed: expect messages you already filed.
    A batch may be empty: it then only moves the checkpoint.
    """

    folder: str
    messages: list[FetchedMessage]
    checkpoint: Checkpoint
    resync: bool = False


class MailboxSource:
    """New mail from one logged-in session.  See the module docstring for the contract."""

    def __init__(
        self,
        session: ImapSession,
        *,
        batch_size: int = MAX_BATCH,
        batch_timeout: float | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self.session = session
        self.batch_size = batch_size
        #: Per-batch FETCH deadline; a 200 × 25 MB batch needs more than a NOOP does.
        self.batch_timeout = batch_timeout or max(session.timeout, 60.0)

    async def fetch_new(
        self,
        folder: str,
        checkpoint: Checkpoint | None,
        *,
        since: date | None = None,
        on_progress: Progress | None = None,
    ) -> AsyncIterator[FetchBatch]:
        """Batches of mail newer than ``checkpoint`` (all of it within ``since`` if none).

        With no checkpoint (first connection) or after a UIDVALIDITY change,
        only mail delivered on or after ``since`` is fetched (default: the last
        30 days; pass ``date.min`` for everything).  A poll that finds nothing
        new costs exactly one EXAMINE.
        """
        state = await self.session.examine(folder)
        plan = plan_fetch(checkpoint, state)
        if plan.kind is PlanKind.NOTHING:
            final = checkpoint_after(plan, state, checkpoint)
            if final != checkpoint:
                yield FetchBatch(folder, [], final)
            return
        uids = await self._uids_to_fetch(plan, since)
        total, done = len(uids), 0
        if on_progress is not None:
            on_progress(0, total)
        current = checkpoint if not plan.starts_over else None
        resync = plan.kind is PlanKind.RESYNC
        for chunk in batches(uids, self.batch_size):
            messages = await self.fetch_uids(folder, chunk)
            done += len(chunk)
            current = Checkpoint(
                state.uidvalidity, max(chunk[-1], current.last_uid if current else 0)
            )
            if on_progress is not None:
                on_progress(done, total)
            yield FetchBatch(folder, messages, current, resync)
        final = checkpoint_after(plan, state, current)
        if final != current:
            yield FetchBatch(folder, [], final, resync)

    async def fetch_uids(self, folder: str, uids: list[int]) -> list[FetchedMessage]:
        """One UID FETCH of the selected ``folder``; at most ``batch_size`` UIDs."""
        if len(uids) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} UIDs per FETCH")
        lines = await self.session.uid_fetch(uid_set(uids), FETCH_ITEMS, self.batch_timeout)
        wanted = set(uids)
        return [m for m in parse_fetch_response(lines, folder) if m.uid in wanted]

    async def _uids_to_fetch(self, plan: FetchPlan, since: date | None) -> list[int]:
        criteria = [f"UID {plan.first_uid}:*"]
        if plan.starts_over:
            window = (
                since if since is not None else date.today() - timedelta(days=DEFAULT_BACKFILL_DAYS)
            )
            if window > date.min:
                criteria.append(f"SINCE {imap_date(window)}")
        return new_uids(await self.session.uid_search(*criteria), plan.first_uid)

    # -- flags ------------------------------------------------------------------

    async def set_seen(self, folder: str, uid: int, seen: bool = True) -> None:
        """Mark a message read (or unread) on the server, as the CRM user did in the CRM."""
        if self.session.selected != folder or self.session.selected_readonly:
            await self.session.select(folder)
        await self.session.uid_store(
            str(uid), "+FLAGS.SILENT" if seen else "-FLAGS.SILENT", "(\\Seen)"
        )

    async def changed_flags(
        self, folder: str, since_modseq: int | None
    ) -> tuple[dict[int, frozenset[str]], int | None]:
        """Flags changed since ``since_modseq`` (CONDSTORE), and the modseq to pass next time.

        With ``since_modseq=None`` (or a server without CONDSTORE) it returns
        the flags of every message, in batches.
        """
        state = await self._examine_condstore(folder)
        if since_modseq is not None and state.highestmodseq is not None:
            if state.highestmodseq <= since_modseq:
                return {}, state.highestmodseq
            uids = await self.session.uid_search(f"MODSEQ {since_modseq + 1}")
        else:
            uids = await self.session.uid_search("ALL") if state.exists else []
        flags: dict[int, frozenset[str]] = {}
        for chunk in batches(sorted(set(uids)), self.batch_size):
            lines = await self.session.uid_fetch(uid_set(chunk), "(UID FLAGS)", self.batch_timeout)
            for uid, item_flags in parse_flag_updates(lines):
                flags[uid] = item_flags
        return flags, state.highestmodseq

    async def _examine_condstore(self, folder: str) -> FolderState:
        return await self.session.examine(
            folder, condstore=self.session.has_capability("CONDSTORE")
        )


# -- parsing (pure) -------------------------------------------------------------

_FETCH_START = re.compile(rb"^(\d+) FETCH \(", re.IGNORECASE)
_UID = re.compile(rb"\bUID (\d+)", re.IGNORECASE)
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)", re.IGNORECASE)
_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"', re.IGNORECASE)
_BODY_LITERAL = re.compile(rb"\bBODY\[\] \{\d+\}$", re.IGNORECASE)
_BODY_INLINE = re.compile(rb'\bBODY\[\] (NIL|"(?:[^"\\]|\\.)*")', re.IGNORECASE)


def parse_fetch_response(lines: list[bytes | bytearray], folder: str) -> list[FetchedMessage]:
    """Messages out of a ``UID FETCH (UID FLAGS INTERNALDATE BODY.PEEK[])`` answer.

    aioimaplib hands us the answer as lines (``bytes``) interleaved with
    literals (``bytearray``): ``b'7 FETCH (UID 9 FLAGS () … BODY[] {512}'``,
    the 512 message bytes, then ``b')'``.  Items may come in any order and a
    literal may be followed by more items, so each record's text parts are
    joined before looking for UID/FLAGS/INTERNALDATE.  Records without a body
    (unsolicited flag updates) are skipped.
    """
    messages: list[FetchedMessage] = []
    for text, body in _records(lines):
        uid = _UID.search(text)
        if uid is None or body is None:
            continue
        flags = _FLAGS.search(text)
        stamp = _DATE.search(text)
        messages.append(
            FetchedMessage(
                folder=folder,
                uid=int(uid.group(1)),
                flags=frozenset(flags.group(1).decode("ascii", "replace").split())
                if flags
                else frozenset(),
                internal_date=parse_internal_date(stamp.group(1)) if stamp else None,
                raw=body,
            )
        )
    return messages


def parse_flag_updates(lines: list[bytes | bytearray]) -> list[tuple[int, frozenset[str]]]:
    """(UID, flags) pairs out of a ``UID FETCH (UID FLAGS)`` answer."""
    out = []
    for text, _body in _records(lines):
        uid, flags = _UID.search(text), _FLAGS.search(text)
        if uid and flags:
            out.append(
                (int(uid.group(1)), frozenset(flags.group(1).decode("ascii", "replace").split()))
            )
    return out


def _records(lines: list[bytes | bytearray]) -> list[tuple[bytes, bytes | None]]:
    records: list[tuple[bytes, bytes | None]] = []
    text: list[bytes] = []
    body: bytes | None = None
    in_record = False
    for part in lines:
        if isinstance(part, bytearray):  # a literal: the text before it ended in BODY[] {n}
            if in_record and text and _BODY_LITERAL.search(text[-1]):
                body = bytes(part)
            continue
        if _FETCH_START.match(part):
            if in_record:
                records.append((b" ".join(text), body))
            text, body, in_record = [part], None, True
        elif in_record:
            text.append(part)
    if in_record:
        records.append((b" ".join(text), body))
    # A body given inline ("" or NIL) rather than as a literal.
    return [(t, b if b is not None else _inline_body(t)) for t, b in records]


def _inline_body(text: bytes) -> bytes | None:
    m = _BODY_INLINE.search(text)
    if m is None:
        return None
    value = m.group(1)
    return b"" if value.upper() == b"NIL" else re.sub(rb"\\(.)", rb"\1", value[1:-1])


def parse_internal_date(value: bytes) -> datetime | None:
    """``" 3-Nov-2026 20:45:35 +0100"`` → aware datetime (None if unreadable)."""
    try:
        return datetime.strptime(value.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")
    except (ValueError, UnicodeDecodeError):
        return None


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def imap_date(day: date) -> str:
    """IMAP SEARCH date (``1-Nov-2026``), independent of the process locale."""
    return f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"
