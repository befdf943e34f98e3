"""A mailgate whose individual sends go to a scripted relay (aiosmtpd) over a real socket.

The relay records each accepted message's envelope recipients and bytes, so
a test sees exactly what a smarthost got: RCPT TO for To and CC, the headers,
the attachments.  The server's HTTP port is chosen up front so the tracked
links it composes point at itself.
"""

from __future__ import annotations

import email
import email.policy
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from tests.support import smtp_sink
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.server import MailgateServer, wait_until


def relayed(database_url: str, data_dir: Path, relay_port: int, **overrides: Any) -> MailgateServer:
    """A (not yet started) server relaying to ``127.0.0.1:relay_port``, links pointing at it."""
    http_port = smtp_sink.free_port()
    srv = MailgateServer(
        database_url,
        data_dir,
        relay_url=f"smtp://127.0.0.1:{relay_port}",
        relay_retry_base=0.2,
        relay_retry_cap=0.5,
        relay_poll_interval=0.1,
        relay_timeout=5,
        **overrides,
    )
    srv.settings.http_listen = f"127.0.0.1:{http_port}"
    srv.settings.public_url = f"http://127.0.0.1:{http_port}"
    return srv


@contextmanager
def scripted_relay(script: Script) -> Iterator[Script]:
    """``script`` answered by a relay on a free loopback port (``script.port``) for the block."""
    port = smtp_sink.free_port()
    with ScriptedRelay(port, script) as running:
        running.port = port  # type: ignore[attr-defined]
        yield running


def team(server: MailgateServer, **org_kw: Any) -> tuple[dict, dict, httpx.Client]:
    """A fresh org, a user in it and that user's API client."""
    tag = secrets.token_hex(4)
    org = server.org(f"送信 {tag}", **org_kw)
    user = server.user(org, f"rep-{tag}@sender.example.jp", name="佐藤 花子")
    return org, user, server.api(user)


def record(api: httpx.Client, module: str, **values: Any) -> int:
    r = api.post(f"/api/v1/{module}", json=values)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def delivered(script: Script, send: dict, timeout: float = 20) -> tuple[list[str], bytes]:
    """(envelope recipients, bytes) of the message the relay accepted for ``send`` (an item
    of the 202's ``sends``): found by its Message-ID, unique across servers sharing a relay."""
    marker = f"Message-ID: {send['message_id']}".encode()

    def find():
        for rcpts, raw in list(script.messages):
            if marker in raw:
                return rcpts, raw
        return None

    return wait_until(find, timeout=timeout, interval=0.05)


def parsed(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def send_state(api: httpx.Client, send_id: int, state: str = "sent") -> dict:
    """The send once it reached ``state`` (``GET /api/v1/sends/{id}``)."""

    def check():
        r = api.get(f"/api/v1/sends/{send_id}")
        assert r.status_code == 200, r.text
        return r.json() if r.json()["state"] == state else None

    return wait_until(check, timeout=20)


def filed_copy(api: httpx.Client, module: str, rid: int, send_id: int) -> dict:
    """The record's filed copy of ``send_id`` (``GET /api/v1/{module}/{id}/emails``)."""
    items = api.get(f"/api/v1/{module}/{rid}/emails", params={"limit": 500}).json()["items"]
    [item] = [m for m in items if m["send_id"] == send_id]
    return item
