"""The one small interface between the mailbox service and a protocol (IMAP, POP3).

The service owns everything that is the same for every connected mailbox:
state and errors, backoff, sealed passwords, progress, ``last_ok_at``, one
poller task per mailbox, and storing each batch in the spool.  A
:class:`MailSource` owns what differs: how a session finds new mail, what it
remembers to not fetch it again, and how it waits for more.

The contract that keeps a restart from refetching or skipping: a source hands
over :class:`PolledBatch` es whose ``remember`` writes *what the batch covers*
(IMAP: the folder's UID checkpoint; POP3: the batch's UIDLs).  The service runs
``remember`` inside the spool transaction that stores the batch's messages, so
both commit or neither does.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from sqlalchemy import Connection


class FolderKind(enum.StrEnum):
    """Which way a folder's mail went: read by ingest's ``classify`` step (origin ``kind``)."""

    INBOX = "inbox"
    SENT = "sent"


@dataclass(frozen=True, slots=True)
class PolledMessage:
    """A message as the server holds it, and where (joined into the spool row's ``origin``).

    ``where``: IMAP ``uidvalidity``, ``uid``, ``seen``; POP3 ``uidl``.
    """

    raw: bytes
    where: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PolledBatch:
    """Messages to store together, and what to remember once they are stored.

    ``remember(conn)`` runs in the spool transaction of ``messages``.  A batch
    may hold no message (it then only moves the checkpoint, or records mail
    that was skipped).
    """

    folder: str
    kind: FolderKind
    messages: list[PolledMessage]
    remember: Callable[[Connection], None]


OnBatch = Callable[[PolledBatch], Awaitable[None]]
Progress = Callable[[str, int, int], None]


class MailSource(Protocol):
    """One logged-in session with a mailbox, as the service polls it."""

    #: The ingest channel (and ``messages.source``) of its mail: ``imap`` or ``pop``.
    channel: str

    async def prepare(self) -> None:
        """Once per cycle before fetching: IMAP syncs read flags both ways; POP3 nothing."""

    async def fetch_new(
        self, on_batch: OnBatch, *, since: date, fresh: bool, on_progress: Progress
    ) -> int:
        """Hand every new message over in batches (awaiting ``on_batch`` each); how many.

        ``fresh`` ignores what was remembered (an explicit backfill); ``since``
        bounds a first fetch where the protocol can (IMAP SEARCH SINCE).
        """
        ...

    async def wait_for_new(self, stop: asyncio.Event) -> bool:
        """Wait until there may be new mail (or ``stop``).

        True: poll again on this session (IMAP IDLE); False: the session is
        done, connect anew (POP3 shows new mail only to a new login).
        """
        ...

    async def close(self) -> None:
        """Log out politely; never raises."""
