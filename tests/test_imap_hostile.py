"""Servers that misbehave: the client must end every command, and say what went wrong.

These run a tiny scripted IMAP server on a real socket; Dovecot is too
well-behaved to stall mid-command or greet like a web server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.receive.imap import MailboxConfig, MailboxError, MailboxSource, connect

Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


async def serve(greeting: bytes, on_command: Script) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        try:
            while line := await reader.readline():
                await on_command(line, writer)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def config(port: int) -> MailboxConfig:
    return MailboxConfig("127.0.0.1", port, "alice", "secret", security="none")


async def answer_login_then(line: bytes, writer: asyncio.StreamWriter, after_login: Script) -> None:
    tag, _, rest = line.partition(b" ")
    verb = rest.split(b" ", 1)[0].strip().upper()
    if verb == b"CAPABILITY":
        writer.write(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + tag + b" OK done\r\n")
    elif verb == b"LOGIN":
        writer.write(tag + b" OK logged in\r\n")
    else:
        await after_login(line, writer)


async def test_a_server_that_stops_answering_mid_session_times_out():
    async def stall(line, writer):
        pass  # never answer EXAMINE

    server, port = await serve(
        b"* OK IMAP4rev1 ready\r\n", lambda line, w: answer_login_then(line, w, stall)
    )
    async with server:
        session = await connect(config(port), timeout=0.5)
        started = time.monotonic()
        with pytest.raises(MailboxError) as caught:
            await session.examine("INBOX")
        assert caught.value.kind == "timeout"
        assert time.monotonic() - started < 2
        assert not session.connected  # a half-answered command poisons the connection
        with pytest.raises(MailboxError) as again:
            await session.noop()
        assert again.value.kind == "disconnected"


async def test_a_server_that_greets_like_a_web_server_is_a_protocol_error():
    async def nothing(line, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n")

    server, port = await serve(b"HTTP/1.1 400 Bad Request\r\n\r\n", nothing)
    async with server:
        with pytest.raises(MailboxError) as caught:
            await connect(config(port), timeout=0.5)
    assert caught.value.kind == "protocol"


async def test_a_server_refusing_examine_is_reported_with_its_reason():
    async def refuse(line, writer):
        tag = line.split(b" ", 1)[0]
        writer.write(tag + b" NO [NONEXISTENT] Mailbox doesn't exist: Sent\r\n")

    server, port = await serve(
        b"* OK IMAP4rev1 ready\r\n", lambda line, w: answer_login_then(line, w, refuse)
    )
    async with server:
        session = await connect(config(port), timeout=2)
        with pytest.raises(MailboxError) as caught:
            await session.examine("Sent")
    assert caught.value.kind == "protocol"
    assert "doesn't exist" in caught.value.message


async def test_a_server_that_hangs_up_mid_fetch_is_a_disconnect():
    async def examine_then_hang_up(line, writer):
        tag, _, rest = line.partition(b" ")
        if rest.upper().startswith(b"EXAMINE"):
            writer.write(
                b"* 3 EXISTS\r\n* OK [UIDVALIDITY 9] ok\r\n* OK [UIDNEXT 4] ok\r\n"
                + tag
                + b" OK [READ-ONLY] done\r\n"
            )
        elif b"SEARCH" in rest.upper():
            writer.write(b"* SEARCH 1 2 3\r\n" + tag + b" OK done\r\n")
        else:  # half a literal, then gone
            writer.write(b"* 1 FETCH (UID 1 FLAGS () BODY[] {100}\r\nSubject: cut")
            await writer.drain()
            writer.close()

    server, port = await serve(
        b"* OK IMAP4rev1 ready\r\n",
        lambda line, w: answer_login_then(line, w, examine_then_hang_up),
    )
    async with server:
        session = await connect(config(port), timeout=2)
        started = time.monotonic()
        with pytest.raises(MailboxError) as caught:
            async for _batch in MailboxSource(session).fetch_new("INBOX", None):
                pass
    assert caught.value.kind == "disconnected"
    assert time.monotonic() - started < 1.5
