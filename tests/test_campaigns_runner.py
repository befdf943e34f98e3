"""The campaign runner through a real relay (Postfix's smtp-sink) over a socket.

Every eligible member receives exactly one message (counted at the sink),
with one-click List-Unsubscribe and its merge fields filled; the sends carry
the campaign's id; a copy is filed only on a recipient linked to a CRM
record; the campaign ends ``sent`` with one ``campaign.sent``.  Two rounds
at once, or a runner stopped mid-way and started again, never compose a
recipient twice.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections import Counter
from datetime import UTC, datetime
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from gateway.addresses import normalise
from storage.schema import message_links, messages
from storage.schema_campaigns import campaign_recipients, list_members
from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.campaigns import add_member, make_list
from tests.support.server import MailgateServer, wait_until

pytestmark = pytest.mark.skipif(
    not smtp_sink.available(), reason="Postfix smtp-sink not installed (apt-get install postfix)"
)

PUBLIC_URL = "https://mail.example.test"


@pytest.fixture(scope="module")
def relay_port() -> int:
    return smtp_sink.free_port()


@pytest.fixture(scope="module")
def relay(relay_port, database_url):
    sink = smtp_sink.SmtpSink(relay_port).start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay) -> MailgateServer:
    srv = MailgateServer(
        database_url,
        Path(tmp_path_factory.mktemp("data")),
        relay_url=f"smtp://127.0.0.1:{relay.port}",
        public_url=PUBLIC_URL,
        relay_retry_base=0.2,
        relay_retry_cap=0.5,
        relay_poll_interval=0.1,
        relay_timeout=5,
        relay_pool_size=2,
    ).start()
    yield srv
    srv.stop()


def delivered_to(relay, domain: str) -> list[email.message.Message]:
    """Messages at the sink addressed to ``@domain`` (each test uses its own domain)."""
    out = []
    for raw in relay.messages():
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        if (msg["To"] or "").rstrip(">").endswith(f"@{domain}"):
            out.append(msg)
    return out


def rows(server, query) -> list[dict]:
    return server.call(server.db.run_read(lambda c: [dict(r) for r in c.execute(query).mappings()]))


def bulk_members(server, org, list_id: int, emails: list[str]) -> None:
    now = datetime.now(UTC)
    values = [
        {
            "org_id": org["id"],
            "list_id": list_id,
            "email": e,
            "email_norm": normalise(e),
            "first_name": f"名{i}",
            "last_name": "山田",
            "fields": {},
            "created_at": now,
            "updated_at": now,
        }
        for i, e in enumerate(emails)
    ]
    server.call(server.db.run_write(lambda conn: conn.execute(insert(list_members), values)))


def campaign(api, list_ids, **content) -> int:
    body = {"name": "冬のご案内", "list_ids": list_ids, **content}
    r = api.post("/api/v1/campaigns", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_every_eligible_member_gets_one_message_with_one_click_and_merge_fields(server, relay):
    org = server.org("配信株式会社", plan="professional")
    user = server.user(org, "news@example.co.jp", name="配信 担当")
    api = server.api(user)
    lst = make_list(server, org, "会員")
    add_member(server, org, lst, "hanako@one.example", first_name="花子", last_name="佐藤")
    add_member(server, org, lst, "taro@one.example", first_name="太郎", last_name="鈴木")
    add_member(server, org, lst, "gone@one.example", status="unsubscribed")
    lead = api.post(
        "/api/v1/leads",
        json={"last_name": "高橋", "first_name": "一郎", "email": "ichiro@one.example"},
    ).json()
    add_member(server, org, lst, "ichiro@one.example", first_name="一郎", last_name="高橋")
    tpl = api.post(
        "/api/v1/templates",
        json={
            "name": "案内",
            "module": "leads",
            "subject": "${Leads.Last Name}様へ 冬のご案内",
            "html": "<p>{{ lead.last_name }} {{ lead.first_name }} 様</p>"
            '<a href="https://shop.example/sale">セール</a>',
        },
    )
    assert tpl.status_code == 201, tpl.text
    cid = campaign(api, [lst], template_id=tpl.json()["id"])
    r = api.post(f"/api/v1/campaigns/{cid}/send", json={})
    assert r.status_code == 202 and r.json()["recipients"] == 3, r.text

    got = wait_until(lambda: len(delivered_to(relay, "one.example")) >= 3 and True, timeout=30)
    assert got
    time.sleep(0.3)  # anything extra would have arrived by now
    msgs = delivered_to(relay, "one.example")
    subjects = sorted(str(make_header(decode_header(m["Subject"]))) for m in msgs)
    assert subjects == ["佐藤様へ 冬のご案内", "鈴木様へ 冬のご案内", "高橋様へ 冬のご案内"]
    for m in msgs:
        assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert f"<{PUBLIC_URL}/u/" in " ".join(m["List-Unsubscribe"].split())
        html = next(p for p in m.walk() if p.get_content_type() == "text/html")
        body = html.get_payload(decode=True).decode("utf-8")
        assert " 様" in body and f"{PUBLIC_URL}/t/" in body
    hanako = next(m for m in msgs if "hanako" in m["To"])
    html = next(p for p in hanako.walk() if p.get_content_type() == "text/html")
    assert "佐藤 花子 様" in html.get_payload(decode=True).decode("utf-8")

    sent = rows(server, select(sends).where(sends.c.org_id == org["id"]))
    assert len(sent) == 3 and {s["campaign_id"] for s in sent} == {cid}
    assert {s["kind"] for s in sent} == {"mass"}
    recips = rows(
        server, select(campaign_recipients).where(campaign_recipients.c.campaign_id == cid)
    )
    assert sorted(r["send_id"] for r in recips) == sorted(s["id"] for s in sent)
    # A copy is filed only on the recipient linked to a CRM record.
    filed = rows(
        server,
        select(message_links.c.module, message_links.c.record_id)
        .join(messages, messages.c.id == message_links.c.message_id)
        .where(messages.c.org_id == org["id"], messages.c.source == "campaign"),
    )
    assert filed == [{"module": "leads", "record_id": lead["id"]}]

    wait_until(lambda: api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "sent")
    done = [
        e
        for e in api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
        if e["type"] == "campaign.sent"
    ]
    assert (
        len(done) == 1
        and done[0]["data"]["campaign_id"] == cid
        and done[0]["data"]["recipients"] == 3
    )
    server.drain("campaigns")
    assert len(delivered_to(relay, "one.example")) == 3


def test_a_500_member_campaign_reaches_the_relay_once_each_quickly(server, relay):
    org = server.org("大量配信株式会社", plan="professional")  # 500 mass mails a day
    api = server.api(server.user(org, "bulk@example.co.jp"))
    lst = make_list(server, org, "500")
    bulk_members(server, org, lst, [f"m{i}@five.example" for i in range(500)])
    cid = campaign(api, [lst], subject="{{ lead.first_name }}さんへ", html="<p>やあ</p>")
    started = time.monotonic()
    r = api.post(f"/api/v1/campaigns/{cid}/send", json={})
    assert r.status_code == 202 and r.json()["recipients"] == 500, r.text
    wait_until(lambda: len(delivered_to(relay, "five.example")) >= 500, timeout=20, interval=0.2)
    assert time.monotonic() - started < 20
    msgs = delivered_to(relay, "five.example")
    twice = [to for to, n in Counter(m["To"] for m in msgs).items() if n > 1]
    assert len(msgs) == 500 and not twice, twice[:5]
    wait_until(lambda: api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "sent")


def test_two_rounds_at_once_and_a_stop_mid_way_never_compose_a_recipient_twice(server, relay):
    org = server.org("二重防止株式会社", plan="enterprise")
    api = server.api(server.user(org, "twice@example.co.jp"))
    lst = make_list(server, org, "twice")
    bulk_members(server, org, lst, [f"t{i}@twice.example" for i in range(450)])
    services = server.running.services
    runner = services.runner("campaigns")
    server.call(runner.stop())  # this test drives the rounds itself
    try:
        cid = campaign(api, [lst], subject="hi", text="hello")
        assert api.post(f"/api/v1/campaigns/{cid}/send", json={}).json()["recipients"] == 450
        assert server.call(runner.run_once()) == 200  # one batch, then "stopped"
        # Started again: two rounds race for the rest.

        async def race():
            return await asyncio.gather(runner.run_once(), runner.run_once())

        first = server.call(race())
        assert sum(first) >= 200
        server.call(runner.drain())
    finally:
        server.call(runner.start())
    recips = rows(
        server, select(campaign_recipients).where(campaign_recipients.c.campaign_id == cid)
    )
    assert {r["status"] for r in recips} != {"pending"}
    assert all(r["send_id"] for r in recips)
    assert len({r["send_id"] for r in recips}) == 450
    count = rows(server, select(func.count().label("n")).where(sends.c.campaign_id == cid))[0]["n"]
    assert count == 450
    wait_until(lambda: len(delivered_to(relay, "twice.example")) >= 450, timeout=30, interval=0.2)
    time.sleep(0.3)
    assert len(delivered_to(relay, "twice.example")) == 450
    events = api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
    assert [e["data"]["campaign_id"] for e in events if e["type"] == "campaign.sent"] == [cid]


def test_a_recipient_the_template_cannot_render_fails_alone_and_its_neighbours_go(server, relay):
    org = server.org("部分失敗株式会社", plan="professional")
    api = server.api(server.user(org, "partial@example.co.jp"))
    lst = make_list(server, org, "partial")
    add_member(server, org, lst, "ok1@boom.example", last_name="y")
    add_member(server, org, lst, "boom@boom.example", last_name="x" * 100)
    add_member(server, org, lst, "ok2@boom.example", last_name="y")
    # 100 x's each replaced by 1,001 characters: over template_max_string for this member only.
    html = '<p>{{ lead.last_name | replace("x", "' + "Z" * 1001 + '") }}</p>'
    cid = campaign(api, [lst], subject="s", html=html)
    assert api.post(f"/api/v1/campaigns/{cid}/send", json={}).json()["recipients"] == 3
    wait_until(lambda: api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "sent")
    wait_until(lambda: len(delivered_to(relay, "boom.example")) >= 2, timeout=20)
    time.sleep(0.3)
    assert sorted(m["To"] for m in delivered_to(relay, "boom.example")) == [
        "y <ok1@boom.example>",
        "y <ok2@boom.example>",
    ]
    status = {
        r["email"]: r["status"] for r in api.get(f"/api/v1/campaigns/{cid}/members").json()["items"]
    }
    assert status["boom@boom.example"] == "failed"
    assert status["ok1@boom.example"] != "pending" and status["ok2@boom.example"] != "pending"
