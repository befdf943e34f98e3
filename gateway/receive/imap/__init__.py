"""The IMAP poller's mailbox layer: raw messages with UIDs, from a checkpoint.

Entry points: :func:`connect` → :class:`ImapSession`; :func:`discover_folders`;
:class:`MailboxSource` (``fetch_new``, ``set_seen``, ``changed_flags``);
:func:`wait_for_new`; :func:`poll_forever` for the whole reconnecting loop.

Filing one poll by hand::

    async with await connect(config, timeout=30) as session:
        source = MailboxSource(session)
        for folder in await discover_folders(session, config.sent_folder_override):
            async for batch in source.fetch_new(folder, stored_checkpoint(folder)):
                file_and_store(batch.messages, batch.checkpoint)  # one transaction

``batch.checkpoint`` is safe to store only once ``batch.messages`` are
durably filed; a crash in between refetches that one batch (≤ 200 messages),
which the ingest dedupe (Message-ID / content hash) absorbs.
"""

from gateway.receive.imap.checkpoint import Checkpoint, FetchPlan, FolderState, PlanKind, plan_fetch
from gateway.receive.imap.client import ImapSession, MailboxConfig, MailboxError, connect
from gateway.receive.imap.fetch import FetchBatch, FetchedMessage, MailboxSource
from gateway.receive.imap.folders import discover_folders, find_sent
from gateway.receive.imap.idle import wait_for_new
from gateway.receive.imap.poller import Backoff, poll_forever, poll_once

__all__ = [
    "Backoff",
    "Checkpoint",
    "FetchBatch",
    "FetchPlan",
    "FetchedMessage",
    "FolderState",
    "ImapSession",
    "MailboxConfig",
    "MailboxError",
    "MailboxSource",
    "PlanKind",
    "connect",
    "discover_folders",
    "find_sent",
    "plan_fetch",
    "poll_forever",
    "poll_once",
    "wait_for_new",
]
