"""Campaign sends delivered by the real relay path: its ``email.sent``, and a recipient refused
at RCPT (``email.failed`` then a hard ``email.bounced``), reach the recipients and members."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.campaign_sends import (
    open_mail,
    person,
    recipients,
    send_campaign,
    wait_delivered,
)
from tests.support.campaigns import members
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.sends import rows as rows_of
from tests.support.server import MailgateServer, wait_until


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
        wait_delivered(server, camp["id"])
    assert script.received == ["ok@client.example"]
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


def test_a_campaign_made_and_sent_through_the_api_registers_its_reader(server, relay_port):
    """The whole path with nothing written by hand: a list configured for registration and a
    member (``/api/v1/lists``), a campaign registering openers as leads
    (``/api/v1/campaigns`` … ``/send``), the campaign runner and the relay, a human open."""
    org = server.org(f"api-{secrets.token_hex(3)}")
    admin = server.user(org, f"admin{secrets.token_hex(3)}@example.co.jp", admin=True)
    api = server.api(admin)
    lst = api.post("/api/v1/lists", json={"name": "ご案内", "register": True})
    assert lst.status_code == 201, lst.text
    list_id = lst.json()["id"]
    member = {"email": "reader@client.example", "first_name": "読", "last_name": "者"}
    assert api.post(f"/api/v1/lists/{list_id}/members", json=member).status_code == 201
    body = {
        "name": "API のご案内",
        "list_ids": [list_id],
        "subject": "ご案内",
        "html": '<p>本文 <a href="https://shop.example.co.jp/x">見る</a></p>',
        "register": {"opened": "leads", "clicked": None},
    }
    campaign_id = api.post("/api/v1/campaigns", json=body).json()["id"]
    with ScriptedRelay(relay_port, Script()) as script:
        sent = api.post(f"/api/v1/campaigns/{campaign_id}/send")
        assert sent.status_code == 202, sent.text
        server.running.services.wake("campaigns")
        wait_until(lambda: recipients(server, campaign_id).get(member["email"], {}).get("send_id"))
        wait_delivered(server, campaign_id)
    assert script.received == [member["email"]]
    [row] = recipients(server, campaign_id).values()
    assert (row["status"], row["not_registered_reason"]) == ("sent", "no_activity")

    send = dict(
        rows_of(server, select(sends).where(sends.c.id == row["send_id"]))[0],
        html=f"/t/o/{server.running.services.tracking.signer.open_token(row['send_id'])}",
    )

    def an_hour_ago(conn) -> None:
        conn.execute(
            update(sends)
            .where(sends.c.id == row["send_id"])
            .values(sent_at=datetime.now(UTC) - timedelta(hours=1))
        )

    server.call(server.db.run_write(an_hour_ago))
    open_mail(server, send)

    [lead] = api.get("/api/v1/leads", params={"email": member["email"]}).json()["items"]
    assert (lead["last_name"], lead["first_name"], lead["source"]) == ("者", "読", "campaigns")
    members_api = api.get(f"/api/v1/campaigns/{campaign_id}/members").json()["items"]
    assert [
        (m["email"], m["status"], m["record"], m["not_registered_reason"]) for m in members_api
    ] == [(member["email"], "opened", {"module": "leads", "id": lead["id"]}, None)]
    stats = api.get(f"/api/v1/campaigns/{campaign_id}").json()["stats"]
    assert (stats["sent"], stats["opened"]) == (1, 1)
    [item] = api.get(f"/api/v1/leads/{lead['id']}/campaigns").json()["items"]
    assert (item["campaign_id"], item["name"], item["status"]) == (
        campaign_id,
        "API のご案内",
        "opened",
    )
