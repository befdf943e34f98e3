"""Waiting for mail and surviving the server: IDLE, BYE, kicks, and the reconnecting loop."""

from __future__ import annotations

import asyncio
import time
from datetime import date

import pytest

from gateway.receive.imap import (
    Backoff,
    Checkpoint,
    FetchBatch,
    MailboxConfig,
    MailboxError,
    MailboxSource,
    connect,
    poll_forever,
    wait_for_new,
)
from tests.support.dovecot import Dovecot, crlf, dovecot_server

dovecot = pytest.fixture(dovecot_server, name="dovecot")


def account(server: Dovecot, password: str = "secret") -> MailboxConfig:  # noqa: S107
    return MailboxConfig(server.host, server.port, "alice", password, security="none")


def message(i: int) -> bytes:
    return f"Message-ID: <m{i}@example.com>\nSubject: {i}\n\n".encode() + b"y" * 5000 + b"\n"


class Filing:
    """A stand-in for the lead's ingest: files messages and stores the checkpoint together."""

    def __init__(self) -> None:
        self.uids: dict[str, list[int]] = {}
        self.raw: dict[tuple[str, int], bytes] = {}
        self.checkpoints: dict[str, Checkpoint] = {}
        self.batches = 0
        self.changed = asyncio.Event()

    async def load(self, folder: str) -> Checkpoint | None:
        return self.checkpoints.get(folder)

    async def on_batch(self, batch: FetchBatch) -> None:
        for msg in batch.messages:
            self.uids.setdefault(batch.folder, []).append(msg.uid)
            self.raw[(batch.folder, msg.uid)] = msg.raw
        self.checkpoints[batch.folder] = batch.checkpoint
        self.batches += 1
        self.changed.set()

    async def until(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.changed.clear()
            remaining = deadline - time.monotonic()
            assert remaining > 0, "timed out waiting for the poller"
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass


async def test_mail_delivered_during_idle_is_noticed_within_two_seconds(dovecot):
    async with await connect(account(dovecot), timeout=5) as session:
        state = await session.examine("INBOX")
        checkpoint = Checkpoint(state.uidvalidity, 0)

        async def deliver_soon():
            await asyncio.sleep(0.3)
            dovecot.append("alice", "INBOX", message(1))

        delivery = asyncio.ensure_future(deliver_soon())
        started = time.monotonic()
        assert await wait_for_new(session, "INBOX", 10, checkpoint)
        assert time.monotonic() - started < 2.3
        await delivery
        assert session.commands["IDLE"] == 1 and session.commands["DONE"] == 1
        batches = [b async for b in MailboxSource(session).fetch_new("INBOX", checkpoint)]
    assert [m.raw for b in batches for m in b.messages] == [crlf(message(1))]


async def test_mail_that_arrived_before_idle_returns_at_once(dovecot):
    async with await connect(account(dovecot), timeout=5) as session:
        state = await session.examine("INBOX")
        dovecot.append("alice", "INBOX", message(1))
        assert await wait_for_new(session, "INBOX", 10, Checkpoint(state.uidvalidity, 0))
        assert session.commands["IDLE"] == 0


async def test_idle_times_out_quietly_and_leaves_the_session_usable(dovecot):
    async with await connect(account(dovecot), timeout=5) as session:
        assert not await wait_for_new(session, "INBOX", 0.3)
        await session.noop()


async def test_a_kick_during_idle_is_a_disconnect_not_a_hang(dovecot):
    async with await connect(account(dovecot), timeout=5) as session:

        async def kick_soon():
            await asyncio.sleep(0.2)
            await asyncio.to_thread(dovecot.kick, "alice")

        kicker = asyncio.ensure_future(kick_soon())
        started = time.monotonic()
        with pytest.raises(MailboxError) as caught:
            await wait_for_new(session, "INBOX", 30)
        await kicker
    assert caught.value.kind == "disconnected"
    assert time.monotonic() - started < 2


async def test_without_idle_capability_a_noop_poll_finds_new_mail(dovecot):
    async with await connect(account(dovecot), timeout=5) as session:
        session.protocol.capabilities.discard("IDLE")  # behave like a server without IDLE
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, dovecot.append, "alice", "INBOX", message(1))
        assert await wait_for_new(session, "INBOX", 5, noop_interval=0.1)
        assert session.commands["IDLE"] == 0 and session.commands["NOOP"] >= 1


async def test_kicks_mid_backfill_still_file_every_uid_exactly_once(dovecot):
    total = 3000
    dovecot.seed("alice", "INBOX", [message(i) for i in range(total)])
    dovecot.seed("alice", "Sent", [message(10_000 + i) for i in range(30)])
    filing, errors, stop = Filing(), [], asyncio.Event()
    kicked_twice = asyncio.Event()

    async def kicker():
        # First kick lands while a FETCH is streaming; the second between batches.
        await filing.until(lambda: filing.batches >= 3)
        await asyncio.to_thread(dovecot.kick, "alice")
        await filing.until(lambda: filing.batches >= 9)
        await asyncio.to_thread(dovecot.kick, "alice")
        kicked_twice.set()

    poller = asyncio.ensure_future(
        poll_forever(
            account(dovecot),
            filing.on_batch,
            stop,
            load_checkpoint=filing.load,
            since=date.min,
            backoff=Backoff(0.05, 0.2),
            on_error=errors.append,
            timeout=5,
        )
    )
    kicks = asyncio.ensure_future(kicker())
    try:
        await filing.until(
            lambda: (
                len(filing.uids.get("INBOX", [])) >= total
                and len(filing.uids.get("Sent", [])) >= 30
            ),
            timeout=60,
        )
        await asyncio.wait_for(kicks, 10)
    finally:
        stop.set()
        await asyncio.wait_for(poller, 10)
    assert kicked_twice.is_set()
    assert [e.kind for e in errors] and all(e.kind == "disconnected" for e in errors)
    assert filing.uids["INBOX"] == list(range(1, total + 1))  # each once, in order
    assert filing.uids["Sent"] == list(range(1, 31))
    assert filing.raw[("INBOX", 1234)] == crlf(message(1233))


async def test_the_poller_reconnects_after_a_kick_and_picks_up_new_mail(dovecot):
    filing, errors, stop = Filing(), [], asyncio.Event()
    dovecot.seed("alice", "INBOX", [message(0)])
    poller = asyncio.ensure_future(
        poll_forever(
            account(dovecot),
            filing.on_batch,
            stop,
            load_checkpoint=filing.load,
            backoff=Backoff(0.05, 0.2),
            on_error=errors.append,
            idle_timeout=30,
            timeout=5,
        )
    )
    try:
        await filing.until(lambda: filing.uids.get("INBOX") == [1])
        await asyncio.sleep(0.2)  # now idling
        await asyncio.to_thread(dovecot.kick, "alice")
        dovecot.append("alice", "INBOX", message(1))
        await filing.until(lambda: filing.uids.get("INBOX") == [1, 2])
    finally:
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(poller, 10)
    assert time.monotonic() - started < 2  # stop interrupts IDLE
    assert [e.kind for e in errors] == ["disconnected"]


async def test_the_poller_gives_up_on_a_wrong_password(dovecot):
    stop = asyncio.Event()
    with pytest.raises(MailboxError) as caught:
        await asyncio.wait_for(
            poll_forever(
                account(dovecot, "nope"), Filing().on_batch, stop, load_checkpoint=Filing().load
            ),
            10,
        )
    assert caught.value.kind == "bad_login"


async def test_the_poller_retries_an_unreachable_server_until_stopped():
    from tests.support.dovecot import free_port

    stop, errors = asyncio.Event(), []
    config = MailboxConfig("127.0.0.1", free_port(), "a", "b", "none")
    poller = asyncio.ensure_future(
        poll_forever(
            config,
            Filing().on_batch,
            stop,
            load_checkpoint=Filing().load,
            backoff=Backoff(0.05, 0.1),
            on_error=errors.append,
        )
    )
    # Three attempts take ~0.2 s; a loaded machine may need longer, never forever.
    deadline = asyncio.get_running_loop().time() + 10
    while len(errors) < 3 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(poller, 2)
    assert len(errors) >= 3 and {e.kind for e in errors} == {"unreachable"}


async def test_a_missing_sent_override_is_reported_but_inbox_keeps_filing(dovecot):
    dovecot.seed("alice", "INBOX", [message(0)])
    filing, errors, stop = Filing(), [], asyncio.Event()
    config = MailboxConfig(
        dovecot.host, dovecot.port, "alice", "secret", "none", sent_folder_override="Gesendet"
    )
    poller = asyncio.ensure_future(
        poll_forever(
            config,
            filing.on_batch,
            stop,
            load_checkpoint=filing.load,
            on_error=errors.append,
            timeout=5,
        )
    )
    try:
        await filing.until(lambda: filing.uids.get("INBOX") == [1])
        await asyncio.sleep(0.3)
        dovecot.append("alice", "INBOX", message(1))
        await filing.until(lambda: filing.uids.get("INBOX") == [1, 2])
    finally:
        stop.set()
        await asyncio.wait_for(poller, 5)
    assert errors and all(e.kind == "protocol" and "Gesendet" in e.message for e in errors)
