"""Mailbox hosts: no probing of the server's own network through ``/api/v1/mailboxes``.

A mailgate *without* ``MAILGATE_ALLOW_PRIVATE_TARGETS`` (the default) refuses
loopback and private hosts, open port or closed, before connecting anywhere;
one with it connects to the address it checked.
"""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest

from gateway.receive.imap import MailboxConfig
from gateway.receive.mailboxes import MailboxService
from gateway.receive.mailboxes.validate import (
    PrivateTarget,
    UnresolvableHost,
    is_public,
    resolve_target,
)
from tests.support.dovecot import free_port
from tests.support.server import MailgateServer


@pytest.fixture(scope="module")
def strict(database_url, tmp_path_factory):
    """A mailgate as shipped: private targets not allowed."""
    server = MailgateServer(
        database_url, tmp_path_factory.mktemp("data"), allow_private_targets=False
    ).start({"smtp", "http", "worker", "imap"})
    yield server
    server.stop()


@pytest.fixture
def listener():
    """An open loopback port (something listens there), closed at the end."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def body(host: str, port: int) -> dict:
    return {"host": host, "port": port, "login": "l", "password": "p", "security": "none"}


def test_private_hosts_are_refused_alike_whether_the_port_is_open_or_not(strict, listener):
    org = strict.org(f"Probe {uuid.uuid4().hex[:6]}")
    api = strict.api(strict.user(org, f"rep@{uuid.uuid4().hex[:6]}.example.jp"))
    answers = []
    for host, port in [
        ("127.0.0.1", listener),
        ("127.0.0.1", free_port()),
        ("localhost", listener),
        ("[::1]", listener),
        ("10.1.2.3", 993),
        ("192.168.0.1", 993),
        ("169.254.169.254", 80),
        ("0.0.0.0", listener),  # noqa: S104 - a target, not a bind address
        ("::ffff:127.0.0.1", listener),
    ]:
        r = api.post("/api/v1/mailboxes", json=body(host, port))
        assert r.status_code == 422, (host, r.text)
        answers.append(r.json())
    assert all(a == answers[0] for a in answers)
    assert answers[0]["error"]["code"] == "private_host"
    assert api.get("/api/v1/mailboxes").json()["items"] == []


def test_a_stored_private_mailbox_is_never_dialled(strict):
    """A host that was public when added and is private now (rebinding) is not connected to."""
    dialled: list[object] = []

    class Count(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            dialled.append(transport)
            transport.close()

    async def check():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Count, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        service = MailboxService(strict.db, None, strict.settings)  # type: ignore[arg-type]
        try:
            return await service.check(MailboxConfig("127.0.0.1", port, "l", "p", "none"))
        finally:
            server.close()

    problem = strict.call(check())
    assert problem is not None and problem.kind == "private_host"
    assert dialled == []


def test_admins_alone_connect_a_colleagues_mailbox(strict):
    org = strict.org(f"Who {uuid.uuid4().hex[:6]}")
    tag = uuid.uuid4().hex[:6]
    rep = strict.user(org, f"rep@{tag}.example.jp")
    other = strict.user(org, f"other@{tag}.example.jp")
    r = strict.api(rep).post(
        "/api/v1/mailboxes", json={**body("8.8.8.8", 993), "user_id": other["id"]}
    )
    assert r.status_code == 403, r.text


def test_every_address_of_a_name_is_checked_and_the_checked_one_returned():
    async def go():
        assert await resolve_target("8.8.8.8", 993, allow_private=False) == "8.8.8.8"
        with pytest.raises(PrivateTarget):
            await resolve_target("localhost", 993, allow_private=False)
        assert await resolve_target("localhost", 993, allow_private=True) in ("127.0.0.1", "::1")
        with pytest.raises(UnresolvableHost):
            await resolve_target("no-such-host.invalid", 993, allow_private=True)

    asyncio.run(go())


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),  # noqa: S104
    ],
)
def test_only_globally_routable_addresses_are_public(address, public):
    assert is_public(address) is public
