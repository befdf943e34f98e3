"""Fetching from a real Dovecot: complete, byte-exact, incremental, and cheap when idle."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import date
from pathlib import Path

import pytest

from gateway.receive.imap import Checkpoint, MailboxConfig, MailboxSource, connect
from gateway.receive.imap.fetch import FetchBatch
from tests.support.dovecot import Dovecot, crlf, dovecot_server

dovecot = pytest.fixture(dovecot_server, name="dovecot")


def account(server: Dovecot) -> MailboxConfig:
    return MailboxConfig(server.host, server.port, "alice", "secret", security="none")


def message(i: int, size: int = 0) -> bytes:
    head = f"From: a{i}@example.com\nTo: b@example.com\nMessage-ID: <m{i}@example.com>\nSubject: number {i}\n\n"
    return head.encode() + (b"x" * 75 + b"\n") * (size // 76) + f"body {i}\n".encode()


async def collect(source: MailboxSource, folder: str, checkpoint, **kw) -> list[FetchBatch]:
    return [batch async for batch in source.fetch_new(folder, checkpoint, **kw)]


def corpus_files(corpora: Path) -> list[Path]:
    files = sorted(corpora.glob("japanese/*.eml")) + sorted(corpora.glob("malformed/**/*.eml"))
    assert len(files) > 60
    return files


async def test_japanese_and_malformed_mail_comes_back_byte_exact(dovecot, corpora):
    files = corpus_files(corpora)
    dovecot.seed("alice", "INBOX", [p.read_bytes() for p in files])
    async with await connect(account(dovecot), timeout=5) as session:
        batches = await collect(MailboxSource(session), "INBOX", None, since=date.min)
    fetched = [m for b in batches for m in b.messages]
    assert [m.uid for m in fetched] == list(range(1, len(files) + 1))
    for path, msg in zip(files, fetched, strict=True):
        # IMAP carries CRLF and no NUL: bare LF -> CRLF, NUL -> 0x80, nothing else.
        assert msg.raw == crlf(path.read_bytes()), path.name
        assert msg.folder == "INBOX" and msg.internal_date is not None


async def test_sent_folder_is_fetched_like_inbox(dovecot):
    dovecot.seed("alice", "Sent", [message(1), message(2)])
    async with await connect(account(dovecot), timeout=5) as session:
        batches = await collect(MailboxSource(session), "Sent", None)
    assert [m.raw for b in batches for m in b.messages] == [crlf(message(1)), crlf(message(2))]


async def test_five_thousand_messages_backfill_completely_in_batches(dovecot):
    originals = [message(i, 5000) for i in range(5000)]
    dovecot.seed("alice", "INBOX", originals)
    progress: list[tuple[int, int]] = []
    async with await connect(account(dovecot), timeout=10) as session:
        source = MailboxSource(session)
        batches = await collect(
            source, "INBOX", None, on_progress=lambda d, t: progress.append((d, t))
        )
        fetches = session.commands["UID FETCH"]
    fetched = [m for b in batches for m in b.messages]
    assert len(fetched) == 5000 and len({m.uid for m in fetched}) == 5000
    assert fetches == 25  # 200 UIDs per FETCH
    assert all(len(b.messages) <= 200 for b in batches)
    for i in (0, 1, 777, 2500, 4999):
        assert (
            hashlib.sha256(fetched[i].raw).digest() == hashlib.sha256(crlf(originals[i])).digest()
        )
    assert progress[0] == (0, 5000) and progress[-1] == (5000, 5000)
    assert batches[-1].checkpoint.last_uid == 5000
    # Each batch's checkpoint covers exactly what was handed over so far.
    assert [b.checkpoint.last_uid for b in batches] == [
        max(m.uid for m in b.messages) for b in batches
    ]


async def test_a_poll_with_nothing_new_sends_no_fetch(dovecot):
    dovecot.seed("alice", "INBOX", [message(i) for i in range(1000)])
    async with await connect(account(dovecot), timeout=5) as session:
        source = MailboxSource(session)
        batches = await collect(source, "INBOX", None)
        checkpoint = batches[-1].checkpoint
        before = session.commands.copy()
        assert await collect(source, "INBOX", checkpoint) == []
        spent = session.commands - before
    assert dict(spent) == {"EXAMINE": 1}


async def test_only_mail_after_the_checkpoint_is_fetched(dovecot):
    dovecot.seed("alice", "INBOX", [message(i) for i in range(10)])
    async with await connect(account(dovecot), timeout=5) as session:
        source = MailboxSource(session)
        checkpoint = (await collect(source, "INBOX", None))[-1].checkpoint
        dovecot.append("alice", "INBOX", message(10))
        dovecot.append("alice", "INBOX", message(11))
        batches = await collect(source, "INBOX", checkpoint)
    assert [m.uid for b in batches for m in b.messages] == [11, 12]
    assert batches[-1].checkpoint == Checkpoint(checkpoint.uidvalidity, 12)
    assert not batches[-1].resync


async def test_first_connection_backfills_only_the_recent_window(dovecot):
    dovecot.seed("alice", "INBOX", [message(1), message(2), message(3)])
    box = dovecot.maildir("alice")
    old = sorted((box / "new").iterdir())[:2]
    stamp = time.time() - 90 * 86400
    for path in old:  # delivered 90 days ago: Dovecot takes INTERNALDATE from the mtime
        os.utime(path, (stamp, stamp))
    async with await connect(account(dovecot), timeout=5) as session:
        batches = await collect(MailboxSource(session), "INBOX", None)
    assert [m.uid for b in batches for m in b.messages] == [3]
    assert batches[-1].checkpoint.last_uid == 3  # the old ones are skipped for good


async def test_changed_uidvalidity_is_detected_and_everything_refetched(dovecot):
    dovecot.seed("alice", "INBOX", [message(i) for i in range(5)])
    async with await connect(account(dovecot), timeout=5) as session:
        checkpoint = (await collect(MailboxSource(session), "INBOX", None))[-1].checkpoint
    dovecot.reset_uidvalidity("alice")
    async with await connect(account(dovecot), timeout=5) as session:
        batches = await collect(MailboxSource(session), "INBOX", checkpoint)
    assert all(b.resync for b in batches)
    assert batches[-1].checkpoint.uidvalidity != checkpoint.uidvalidity
    assert sorted(m.raw for b in batches for m in b.messages) == sorted(
        crlf(message(i)) for i in range(5)
    )


async def test_fetching_does_not_mark_mail_read_but_set_seen_does(dovecot):
    dovecot.seed("alice", "INBOX", [message(1), message(2)])
    async with await connect(account(dovecot), timeout=5) as session:
        source = MailboxSource(session)
        first = [m for b in await collect(source, "INBOX", None) for m in b.messages]
        assert not any(m.seen for m in first)
        _, modseq = await source.changed_flags("INBOX", None)
        await source.set_seen("INBOX", 2)
        changed, new_modseq = await source.changed_flags("INBOX", modseq)
        await session.examine("INBOX")
        again = await source.fetch_uids("INBOX", [1, 2])
    assert changed == {2: frozenset({"\\Seen"})}
    assert new_modseq > modseq
    assert [m.seen for m in again] == [False, True]


async def test_flag_sync_without_a_modseq_lists_every_message_in_batches(dovecot):
    dovecot.seed("alice", "INBOX", [message(i) for i in range(450)])
    async with await connect(account(dovecot), timeout=5) as session:
        flags, modseq = await MailboxSource(session).changed_flags("INBOX", None)
        assert session.commands["UID FETCH"] == 3
    assert len(flags) == 450 and modseq is not None


async def test_an_oversized_batch_is_refused_before_reaching_the_server(dovecot):
    async with await connect(account(dovecot), timeout=5) as session:
        with pytest.raises(ValueError):
            MailboxSource(session, batch_size=1000)
