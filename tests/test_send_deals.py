"""Mail to a deal goes to the deal's contact and is filed on the deal and the contact.

Through the running server to a scripted relay: the relay gets the contact's
address, the send names its deal, the copy is linked to both records and
``email.filed`` names both.  A deal that cannot be mailed is a 422 saying why.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from storage.schema import message_links
from tests.support import smtp_sink
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.send_peer import delivered, filed_copy, parsed, record, relayed, send_state, team


@pytest.fixture(scope="module")
def relay():
    port = smtp_sink.free_port()
    with ScriptedRelay(port, Script()) as script:
        script.port = port
        yield script


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay):
    srv = relayed(database_url, tmp_path_factory.mktemp("data"), relay.port).start()
    yield srv
    srv.stop()


def links_of(server, message_pk: int) -> set[tuple[str, int]]:
    async def go():
        async with server.db.connect() as conn:
            q = select(message_links.c.module, message_links.c.record_id).where(
                message_links.c.message_id == message_pk
            )
            return {tuple(r) for r in (await conn.execute(q)).all()}

    return server.call(go())


def test_mail_to_a_deal_goes_to_its_contact_and_is_filed_on_both(server, relay):
    org, user, api = team(server)
    account = record(api, "accounts", name="山田商事株式会社")
    contact = record(
        api, "contacts", last_name="山田", first_name="太郎", email="yamada@yamada-shoji.example.jp",
        account_id=account,
    )  # fmt: skip
    deal = record(api, "deals", name="基幹システム更改", contact_id=contact, account_id=account)
    tpl = api.post(
        "/api/v1/templates",
        json={
            "name": "商談フォロー",
            "module": "deals",
            "subject": "{{ deal.name }}のお見積り",
            "html": "<p>{{ deal.account.name }} {{ deal.contact.last_name }}様</p>",
        },
    )
    assert tpl.status_code == 201, tpl.text
    quota = api.get("/api/v1/quota").json()["individual"]["used"]
    r = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "deals", "id": deal}], "template_id": tpl.json()["id"]},
    )
    assert r.status_code == 202, r.text
    [send] = r.json()["sends"]
    assert send["to"] == {
        "module": "deals",
        "id": deal,
        "contact_id": contact,
        "email": "yamada@yamada-shoji.example.jp",
    }
    assert api.get("/api/v1/quota").json()["individual"]["used"] == quota + 1

    rcpts, raw = delivered(relay, send)
    assert rcpts == ["yamada@yamada-shoji.example.jp"]
    msg = parsed(raw)
    assert msg["Subject"] == "基幹システム更改のお見積り"
    assert "山田商事株式会社 山田様" in msg.get_body(("html",)).get_content()

    state = send_state(api, send["id"])
    assert (state["module"], state["record_id"], state["deal_id"]) == ("contacts", contact, deal)
    copy = filed_copy(api, "contacts", contact, send["id"])
    assert links_of(server, copy["id"]) == {("deals", deal), ("contacts", contact)}
    # The deal's own list shows it (whether deals list their links or their contact's mail).
    assert [m["id"] for m in api.get(f"/api/v1/deals/{deal}/emails").json()["items"]] == [
        copy["id"]
    ]
    filed = [
        e
        for e in api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
        if e["type"] == "email.filed" and e["data"].get("send_id") == send["id"]
    ]
    assert filed[0]["data"]["records"] == [
        {"module": "deals", "id": deal},
        {"module": "contacts", "id": contact},
    ]


def test_a_deal_and_its_own_contact_in_one_request_get_one_message(server, relay):
    org, user, api = team(server)
    contact = record(api, "contacts", last_name="佐々木", email="sasaki@client.example.jp")
    deal = record(api, "deals", name="保守契約", contact_id=contact)
    r = api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "deals", "id": deal}, {"module": "contacts", "id": contact}],
            "subject": "ご案内",
            "text": "本文",
        },
    )
    assert r.status_code == 202, r.text
    assert len(r.json()["sends"]) == 1
    assert r.json()["skipped"] == [
        {
            "to": {"module": "contacts", "id": contact, "email": "sasaki@client.example.jp"},
            "reason": "duplicate",
        }
    ]


def test_a_deal_without_a_contact_or_whose_contact_has_no_address_is_a_422(server):
    org, user, api = team(server)
    lonely = record(api, "deals", name="連絡先なし")
    no_mail = record(api, "contacts", last_name="メールなし")
    mute = record(api, "deals", name="宛先なし", contact_id=no_mail)
    for deal, code in ((lonely, "deal_without_contact"), (mute, "deal_contact_without_email")):
        r = api.post(
            "/api/v1/emails",
            json={"to": [{"module": "deals", "id": deal}], "subject": "s", "text": "x"},
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == code
        assert f"deal {deal}" in r.json()["error"]["message"]
    assert api.get("/api/v1/quota").json()["individual"]["used"] == 0


def test_another_orgs_deal_is_not_found(server):
    _, _, other = team(server)
    contact = record(other, "contacts", last_name="他社", email="other@client.example.jp")
    deal = record(other, "deals", name="他社の商談", contact_id=contact)
    org, user, api = team(server)
    r = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "deals", "id": deal}], "subject": "s", "text": "x"},
    )
    assert r.status_code == 202, r.text
    assert r.json() == {
        "sends": [],
        "skipped": [{"to": {"module": "deals", "id": deal}, "reason": "not_found"}],
    }


def test_a_deal_in_cc_copies_its_contact_and_files_on_the_deal_one_without_a_contact_is_skipped(
    server, relay
):
    org, user, api = team(server)
    lead = record(api, "leads", last_name="森", email="mori@client.example.jp")
    contact = record(api, "contacts", last_name="林", email="hayashi@partner.example.jp")
    deal = record(api, "deals", name="共同提案", contact_id=contact)
    lonely = record(api, "deals", name="連絡先なし")
    r = api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": lead}],
            "cc": [{"module": "deals", "id": deal}, {"module": "deals", "id": lonely}],
            "subject": "共同提案の件",
            "text": "本文",
        },
    )
    assert r.status_code == 202, r.text
    assert r.json()["cc_skipped"] == [
        {"cc": {"module": "deals", "id": lonely}, "reason": "no_email"}
    ]
    send = r.json()["sends"][0]
    rcpts, raw = delivered(relay, send)
    assert rcpts == ["mori@client.example.jp", "hayashi@partner.example.jp"]
    assert parsed(raw)["Cc"].addresses[0].addr_spec == "hayashi@partner.example.jp"
    copy = filed_copy(api, "leads", lead, send["id"])
    assert links_of(server, copy["id"]) == {("leads", lead), ("deals", deal), ("contacts", contact)}
