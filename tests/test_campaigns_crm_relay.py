"""Campaign sends delivered by the real relay path: its ``email.sent``, and a recipient refused
at RCPT (``email.failed`` then a hard ``email.bounced``), reach the recipients and members."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.browser import chromium_browser
from tests.support.campaign_sends import (
    open_mail,
    person,
    recipients,
    send_campaign,
    wait_delivered,
)
from tests.support.campaigns import members
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.sends import events_of, flush
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


CHROME_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


class _Pages(BaseHTTPRequestHandler):
    """A webmail: shows message ``i`` at ``/m/i``; the links land on ``/landing``."""

    pages: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.pages.get(self.path.split("?")[0])
        data = (body or "").encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webmail():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def chromium():
    """Per test: Playwright's sync API holds an event loop while it runs."""
    with chromium_browser() as browser:
        yield browser


def test_a_campaign_to_500_read_by_a_real_browser_registers_exactly_the_right_people(
    server, relay_port, webmail, chromium
):
    """Seed 000 at scale: opens register contacts (company needed), clicks register leads.

    Of 500 members, 20 open the mail in Chromium and the first 10 of them click. Even
    positions have a company, odd ones none; #4 has no first name; #16 is already a lead and
    #17 already a contact. Everyone else has no activity.
    """
    org = server.org(f"browser-{secrets.token_hex(3)}")
    user = server.user(org, f"sender{secrets.token_hex(3)}@example.co.jp", admin=True)
    api = server.api(user)
    tracking = server.running.services.tracking
    judge = server.running.services.runner("verdicts")
    tracking.public_url = judge.public_url = server.http_url

    def email(i: int) -> str:
        return f"m{i:03d}@client.example"

    people = [
        person(email(i), "" if i == 4 else f"名{i}", f"姓{i}", "" if i % 2 else f"会社{i % 3}")
        for i in range(500)
    ]
    existing = {
        16: ("leads", api.post("/api/v1/leads", json={"last_name": "既", "email": email(16)})),
        17: (
            "contacts",
            api.post("/api/v1/contacts", json={"last_name": "既", "email": email(17)}),
        ),
    }
    existing = {i: (m, r.json()["id"]) for i, (m, r) in existing.items()}
    html = (
        "<html><body><p>{i} 様</p>"
        f'<p><a id="go" href="{webmail}/landing?m={{i}}">詳しく見る</a></p></body></html>'
    )
    with ScriptedRelay(relay_port, Script()) as script:
        camp = send_campaign(
            server,
            org,
            user,
            people,
            register={"opened": "contacts", "clicked": "leads"},
            relay=True,
            html=html,
            public_url=server.http_url,
        )
        wait_delivered(server, camp["id"])
    assert sorted(script.received) == sorted(email(i) for i in range(500))

    # The members read their mail an hour after it was delivered (no "too fast" clicks).
    def an_hour_ago(conn) -> None:
        conn.execute(
            update(sends)
            .where(sends.c.campaign_id == camp["id"])
            .values(sent_at=datetime.now(UTC) - timedelta(hours=1))
        )

    server.call(server.db.run_write(an_hour_ago))
    _Pages.pages = {f"/m/{i}": camp["sends"][email(i)]["html"] for i in range(20)}
    _Pages.pages["/landing"] = "<html><body><h1>landed</h1></body></html>"
    context = chromium.new_context(user_agent=CHROME_UA)
    try:
        for i in range(20):
            page = context.new_page()
            with page.expect_response(lambda r: "/t/o/" in r.url):
                page.goto(f"{webmail}/m/{i}")
            if i < 10:
                page.click("#go")
                page.wait_for_url(f"{webmail}/landing?m={i}")
            page.close()
    finally:
        context.close()

    def judged() -> bool:
        """Every hit is an event (the verdicts loop may hold some in its own round)."""
        opened = {e["data"]["send_id"] for e in events_of(server, org["id"], "email.opened")}
        clicked = {e["data"]["send_id"] for e in events_of(server, org["id"], "email.clicked")}
        return len(opened) == 20 and len(clicked) == 10

    flush(server)
    wait_until(judged, timeout=20)
    server.drain_consumers()

    rows = recipients(server, camp["id"])
    status = {i: rows[email(i)]["status"] for i in range(500)}
    assert status == {
        i: "clicked" if i < 10 else "opened" if i < 20 else "sent" for i in range(500)
    }

    def expected(i: int) -> tuple[str | None, str | None]:
        """(registered module, not_registered_reason) by seed 000's rules."""
        if i >= 20:
            return None, "no_activity"
        if i in existing:
            return None, "already_in_crm"
        if i == 4:
            return None, "missing_fields"  # no first name: neither a contact nor a lead
        if i % 2 == 0:
            return "contacts", None  # the open registers a contact (company present)
        if i < 10:
            return "leads", None  # the open could not (no company); the click makes a lead
        return None, "missing_fields"

    got = {
        i: (rows[email(i)]["registered_module"], rows[email(i)]["not_registered_reason"])
        for i in range(500)
    }
    assert got == {i: expected(i) for i in range(500)}

    created = [
        e["data"]
        for e in events_of(server, org["id"], "record.created")
        if e["data"]["source"] == "campaigns"
    ]
    contacts_made = sorted(d["changed"]["email"] for d in created if d["module"] == "contacts")
    leads_made = sorted(d["changed"]["email"] for d in created if d["module"] == "leads")
    assert contacts_made == sorted(email(i) for i in range(20) if expected(i)[0] == "contacts")
    assert leads_made == sorted(email(i) for i in range(20) if expected(i)[0] == "leads")
    # One account per company name, made once.
    accounts_made = sorted(d["changed"]["name"] for d in created if d["module"] == "accounts")
    assert accounts_made == ["会社0", "会社1", "会社2"]

    # Every record's history shows this campaign with the recipient's status.
    for i in range(20):
        row = rows[email(i)]
        if row["record_id"] is None:
            continue
        [item] = api.get(f"/api/v1/{row['module']}/{row['record_id']}/campaigns").json()["items"]
        assert (item["campaign_id"], item["status"]) == (camp["id"], status[i])
    for i, (module, rid) in existing.items():
        assert (rows[email(i)]["module"], rows[email(i)]["record_id"]) == (module, rid)


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
