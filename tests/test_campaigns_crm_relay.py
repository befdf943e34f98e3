"""Campaign sends delivered by the real relay path: its ``email.sent``, and a recipient refused
at RCPT (``email.failed`` then a hard ``email.bounced``), reach the recipients and members."""

from __future__ import annotations

import secrets

import pytest

from tests.support import smtp_sink
from tests.support.campaign_sends import person, recipients, send_campaign
from tests.support.campaigns import members
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.server import MailgateServer


@pytest.fixture(scope="module")
def relay_port() -> int:
    return smtp_sink.free_port()


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay_port):
    srv = MailgateServer(
        database_url,
        tmp_path_factory.mktemp("data"),
        relay_url=f"smtp://127.0.0.1:{relay_port}",
        relay_retry_base=0.2,
        relay_retry_cap=0.5,
        relay_poll_interval=0.1,
        relay_timeout=5,
    ).start()
    yield srv
    srv.stop()


def test_the_relays_outcomes_move_recipients_and_members(server, relay_port):
    org = server.org(f"relayed-{secrets.token_hex(3)}")
    user = server.user(org, f"sender{secrets.token_hex(3)}@example.co.jp", admin=True)
    unknown = "550 5.1.1 <gone@client.example>: Recipient address rejected: User unknown"
    with ScriptedRelay(relay_port, Script(rcpt={"gone@client.example": unknown})) as script:
        camp = send_campaign(
            server,
            org,
            user,
            [person("ok@client.example"), person("gone@client.example")],
            relay=True,
        )
        server.drain("relay")
    assert script.received == ["ok@client.example"]
    server.drain_consumers()
    rows = recipients(server, camp["id"])
    assert rows["ok@client.example"]["status"] == "sent"
    assert rows["ok@client.example"]["sent_at"] is not None
    gone = rows["gone@client.example"]
    assert (gone["status"], gone["sent_at"], gone["bounced_at"] is not None) == (
        "bounced",
        None,
        True,
    )
    status = {m["email"]: m["status"] for m in members(server, camp["list_id"])}
    assert status == {"ok@client.example": "subscribed", "gone@client.example": "bounced"}
