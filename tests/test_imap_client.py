"""Connecting to a real Dovecot: what a user sees when the mailbox settings are wrong."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

import pytest

from gateway.receive.imap import (
    MailboxConfig,
    MailboxError,
    MailboxSource,
    connect,
    discover_folders,
)
from tests.support.dovecot import Dovecot, dovecot_server, free_port

dovecot = pytest.fixture(dovecot_server, name="dovecot")


def account(server: Dovecot, password: str = "secret", **kw) -> MailboxConfig:  # noqa: S107
    return MailboxConfig(server.host, server.port, "alice", password, security="none", **kw)


async def test_login_with_the_right_password_opens_a_session(dovecot):
    session = await connect(account(dovecot), timeout=5)
    async with session:
        assert session.has_capability("IDLE")
        assert session.commands["LOGIN"] == 1


async def test_wrong_password_is_reported_as_bad_login_in_plain_words(dovecot):
    with pytest.raises(MailboxError) as caught:
        await connect(account(dovecot, "wrong"), timeout=5)
    assert caught.value.kind == "bad_login"
    assert caught.value.message == "The server refused the login or password"
    assert not caught.value.retryable


async def test_a_failed_login_does_not_slow_down_the_next_one(dovecot):
    with pytest.raises(MailboxError):
        await connect(account(dovecot, "wrong"), timeout=5)
    started = time.monotonic()
    async with await connect(account(dovecot), timeout=5):
        pass
    assert time.monotonic() - started < 1.0


async def test_closed_port_is_unreachable():
    with pytest.raises(MailboxError) as caught:
        await connect(MailboxConfig("127.0.0.1", free_port(), "a", "b", "none"), timeout=5)
    assert caught.value.kind == "unreachable"
    assert "refused" in caught.value.message


async def test_unknown_host_is_unreachable():
    with pytest.raises(MailboxError) as caught:
        await connect(MailboxConfig("no-such-host.invalid", 993, "a", "b", "tls"), timeout=5)
    assert caught.value.kind == "unreachable"


async def test_silent_server_times_out_instead_of_hanging():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(MailboxError) as caught:
            await connect(MailboxConfig("127.0.0.1", port, "a", "b", "none"), timeout=0.5)
        assert caught.value.kind == "protocol"
        assert time.monotonic() - started < 3
    finally:
        listener.close()


async def test_tls_to_a_plaintext_port_is_a_tls_failure(dovecot):
    with pytest.raises(MailboxError) as caught:
        await connect(
            MailboxConfig(dovecot.host, dovecot.port, "alice", "secret", "tls"), timeout=5
        )
    assert caught.value.kind == "tls_failure"


async def test_starttls_is_required_when_asked_for(dovecot):
    # This Dovecot has ssl = no, so it offers no STARTTLS: the password must not be sent.
    with pytest.raises(MailboxError) as caught:
        await connect(
            MailboxConfig(dovecot.host, dovecot.port, "alice", "secret", "starttls"), timeout=5
        )
    assert caught.value.kind == "tls_failure"
    assert "LOGIN" not in caught.value.message


async def test_the_password_never_reaches_the_logs(dovecot, caplog):
    password = 'p"a\\ss word'
    dovecot.add_user("bob", password)
    caplog.set_level(logging.DEBUG)
    config = MailboxConfig(dovecot.host, dovecot.port, "bob", password, "none")
    async with await connect(config, timeout=5):
        pass
    with pytest.raises(MailboxError):
        await connect(
            MailboxConfig(dovecot.host, dovecot.port, "bob", "hunter2", "none"), timeout=5
        )
    assert "LOGIN" in caplog.text  # the log is on, it just leaves the secret out
    for secret in (password, 'p\\"a\\\\ss word', "hunter2"):
        assert secret not in caplog.text


async def test_sent_folder_is_found_by_special_use(dovecot):
    async with await connect(account(dovecot), timeout=5) as session:
        assert await discover_folders(session) == ["INBOX", "Sent"]
        assert await discover_folders(session, "Archive/Sent") == ["INBOX", "Archive/Sent"]


async def test_a_dropped_connection_fails_the_next_command_promptly(dovecot):
    async with await connect(account(dovecot), timeout=5) as session:
        await session.examine("INBOX")
        await asyncio.to_thread(dovecot.kick, "alice")
        started = time.monotonic()
        with pytest.raises(MailboxError) as caught:
            for _ in range(50):  # the close may take a moment to arrive
                await session.noop()
                await asyncio.sleep(0.02)
        assert caught.value.kind == "disconnected"
        assert time.monotonic() - started < 2


@pytest.fixture
def tls_dovecot():
    from tests.support.dovecot import DOVECOT, Dovecot

    if DOVECOT is None:
        pytest.skip("dovecot is not installed (Debian: apt-get install dovecot-imapd)")
    server = Dovecot().start(tls=True)
    try:
        server.add_user("alice", "secret")
        server.seed("alice", "INBOX", [b"Subject: over TLS\n\nhello\n"])
        yield server
    finally:
        server.stop()


def trusting(server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


async def test_implicit_tls_with_a_trusted_certificate_fetches_mail(tls_dovecot):
    config = MailboxConfig("127.0.0.1", tls_dovecot.tls_port, "alice", "secret", "tls")
    async with await connect(config, timeout=5, ssl_context=trusting(tls_dovecot)) as session:
        batches = [b async for b in MailboxSource(session).fetch_new("INBOX", None)]
    assert batches[0].messages[0].raw == b"Subject: over TLS\r\n\r\nhello\r\n"


async def test_starttls_upgrades_before_the_password_is_sent(tls_dovecot):
    config = MailboxConfig("127.0.0.1", tls_dovecot.port, "alice", "secret", "starttls")
    async with await connect(config, timeout=5, ssl_context=trusting(tls_dovecot)) as session:
        assert session.commands["STARTTLS"] == 1
        assert isinstance(session.protocol.transport.get_extra_info("ssl_object"), ssl.SSLObject)
        state = await session.examine("INBOX")
    assert state.exists == 1


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_an_untrusted_certificate_is_a_tls_failure_in_plain_words(tls_dovecot, security):
    port = tls_dovecot.tls_port if security == "tls" else tls_dovecot.port
    config = MailboxConfig("127.0.0.1", port, "alice", "secret", security)
    with pytest.raises(MailboxError) as caught:
        await connect(config, timeout=5)
    assert caught.value.kind == "tls_failure"
    assert "not trusted" in caught.value.message
