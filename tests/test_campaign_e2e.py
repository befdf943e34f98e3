"""Issue #11 end to end: a campaign to a list of 500, made and sent through the HTTP API,
composed by the ``campaigns`` runner, delivered by the relay to a real SMTP server, read and
clicked by a real headless Chromium, written back to the CRM by the consumers.

Nothing is written to the database by hand. The only help the test gives is time: the
members read their mail "an hour later" through the server's injected clock (a click
seconds after delivery is judged ``too_fast``, i.e. a scanner).
"""

from __future__ import annotations

import csv
import email
import email.policy
import io
import secrets
import threading
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.clock import SystemClock
from tests.support import smtp_sink
from tests.support.browser import chromium_browser
from tests.support.campaign_sends import LaterClock, relayed_server, send_through_api
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.sends import events_of, flush
from tests.support.server import MailgateServer, wait_until

CHROME_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
MEMBERS = 500
OPENERS = range(20)  # read the mail in Chromium
CLICKERS = range(10)  # ... and follow its link
NO_FIRST_NAME = 4
#: Members already in the CRM before the campaign: position → module.
EXISTING = {3: "leads", 16: "leads", 17: "contacts"}


def address(i: int) -> str:
    return f"m{i:03d}@client.example"


def first_name(i: int) -> str:
    return "" if i == NO_FIRST_NAME else f"名{i}"


def company(i: int) -> str:
    """Even positions work for one of three companies; odd ones gave none."""
    return "" if i % 2 else f"会社{i % 3}"


def members_csv() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["メールアドレス", "姓", "名", "会社名"])
    for i in range(MEMBERS):
        writer.writerow([address(i), f"姓{i}", first_name(i), company(i)])
    return out.getvalue().encode()


def expected(i: int) -> tuple[str | None, str | None]:
    """(registered module, ``not_registered_reason``) by seed 000's rules for this campaign
    (``{"opened": "contacts", "clicked": "leads"}``)."""
    if i not in OPENERS:
        return None, "no_activity"
    if i in EXISTING:
        return None, "already_in_crm"
    if i == NO_FIRST_NAME:
        return None, "missing_fields"  # neither a contact (open) nor a lead (click)
    if company(i):
        return "contacts", None  # the open makes a contact (company present)
    if i in CLICKERS:
        return "leads", None  # the open could not (no company); the click makes a lead
    return None, "missing_fields"  # opened only, no company


def expected_status(i: int) -> str:
    return "clicked" if i in CLICKERS else "opened" if i in OPENERS else "sent"


def html_part(raw: bytes) -> str:
    """The HTML a mail client shows: the message's text/html part, decoded."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return msg.get_body(preferencelist=("html",)).get_content()


@pytest.fixture(scope="module")
def relay_port() -> int:
    return smtp_sink.free_port()


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay_port):
    srv = relayed_server(database_url, tmp_path_factory.mktemp("data"), relay_port)
    yield srv
    srv.stop()


class _Webmail(BaseHTTPRequestHandler):
    """A webmail: shows message ``i`` at ``/m/i``; the campaign's link lands on ``/landing``."""

    pages: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.pages.get(self.path.split("?")[0])
        data = (body or "").encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webmail():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Webmail)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def chromium():
    with chromium_browser() as browser:
        yield browser


def read_in_chromium(chromium, webmail: str, html: dict[int, str]) -> None:
    """Open every message of ``html`` in the webmail; click the link in the first ten."""
    _Webmail.pages = {f"/m/{i}": body for i, body in html.items()}
    _Webmail.pages["/landing"] = "<html><body><h1>landed</h1></body></html>"
    context = chromium.new_context(user_agent=CHROME_UA)
    try:
        for i in html:
            page = context.new_page()
            with page.expect_response(lambda r: "/t/o/" in r.url):
                page.goto(f"{webmail}/m/{i}")
            if i in CLICKERS:
                page.click("#go")
                page.wait_for_url(f"{webmail}/landing*")
            page.close()
    finally:
        context.close()


def all_items(api, path: str) -> list[dict[str, Any]]:
    items, after = [], None
    while True:
        params = {"limit": 500, **({"after": after} if after else {})}
        page = api.get(path, params=params)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        after = page.json()["next"]
        if not after:
            return items


def test_a_campaign_to_500_made_through_the_api_and_read_in_chromium_registers_exactly_right(
    server: MailgateServer, relay_port, webmail, chromium
):
    """Of 500 imported members, 20 open the delivered mail in Chromium and the first 10 of
    them click its link. Even positions have a company, odd ones none; #4 has no first name;
    #3 and #16 are already leads and #17 a contact. Everyone else does nothing."""
    org = server.org(f"e2e-{secrets.token_hex(3)}")
    owner = server.user(org, f"owner{secrets.token_hex(3)}@example.co.jp", admin=True)
    api = server.api(owner)

    existing: dict[int, tuple[str, int]] = {}
    for i, module in EXISTING.items():
        body = {"last_name": "既存", "first_name": f"名{i}", "email": address(i)}
        made = api.post(f"/api/v1/{module}", json=body)
        assert made.status_code == 201, made.text
        existing[i] = (module, made.json()["id"])

    lst = api.post("/api/v1/lists", json={"name": "年末のご案内", "register": True})
    assert lst.status_code == 201, lst.text
    list_id = lst.json()["id"]
    imported = api.post(
        f"/api/v1/lists/{list_id}/members/import",
        content=members_csv(),
        headers={"Content-Type": "text/csv"},
    )
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"added": MEMBERS, "updated": 0, "unchanged": 0, "skipped": []}

    html = (
        "<html><body><p>{{ lead.last_name }} {{ lead.first_name | default('お客様') }} 様</p>"
        "<p>{{ lead.company | default('個人') }}</p>"
        f'<p><a id="go" href="{webmail}/landing">詳しく見る</a></p></body></html>'
    )
    made = api.post(
        "/api/v1/campaigns",
        json={
            "name": "年末セール",
            "list_ids": [list_id],
            "subject": "{{ lead.last_name }} 様へ年末のご案内",
            "html": html,
            "register": {"opened": "contacts", "clicked": "leads"},
        },
    )
    assert made.status_code == 201, made.text
    campaign_id = made.json()["id"]

    with ScriptedRelay(relay_port, Script()) as relay:
        send_through_api(server, api, campaign_id)
    assert Counter(relay.received) == Counter({address(i): 1 for i in range(MEMBERS)})
    delivered = {rcpts[0]: raw for rcpts, raw in relay.messages}
    assert [len(rcpts) for rcpts, _ in relay.messages] == [1] * MEMBERS

    # What was delivered is what Chromium reads: the decoded HTML part, merge fields filled.
    html_of = {i: html_part(delivered[address(i)]) for i in OPENERS}
    assert "姓0 名0 様" in html_of[0] and "会社0" in html_of[0]
    assert "姓4 お客様 様" in html_of[NO_FIRST_NAME]
    assert "個人" in html_of[1]
    assert all(f"{webmail}/landing" not in h for h in html_of.values())  # tracked links

    services = server.running.services
    services.clock = LaterClock(timedelta(hours=1))
    try:
        read_in_chromium(chromium, webmail, html_of)

        def judged() -> bool:
            """Every hit is an event (the verdicts loop may hold some in its own round)."""
            opened = {e["data"]["send_id"] for e in events_of(server, org["id"], "email.opened")}
            clicked = {e["data"]["send_id"] for e in events_of(server, org["id"], "email.clicked")}
            return len(opened) == len(OPENERS) and len(clicked) == len(CLICKERS)

        flush(server)
        wait_until(judged, timeout=20)
        server.drain_consumers()
    finally:
        services.clock = SystemClock()

    stats = api.get(f"/api/v1/campaigns/{campaign_id}").json()["stats"]
    assert stats == {
        "sent": MEMBERS,
        "opened": len(OPENERS),
        "clicked": len(CLICKERS),
        "bounced": 0,
        "unsubscribed": 0,
        "complained": 0,
        "unopened": MEMBERS - len(OPENERS),
    }

    got = {m["email"]: m for m in all_items(api, f"/api/v1/campaigns/{campaign_id}/members")}
    assert sorted(got) == [address(i) for i in range(MEMBERS)]
    assert {i: got[address(i)]["status"] for i in range(MEMBERS)} == {
        i: expected_status(i) for i in range(MEMBERS)
    }
    assert {i: got[address(i)]["not_registered_reason"] for i in range(MEMBERS)} == {
        i: expected(i)[1] for i in range(MEMBERS)
    }

    # Registrations: one record.created each, contacts on open, leads on click, and one
    # account per company name, made once.
    created = [
        e["data"]
        for e in events_of(server, org["id"], "record.created")
        if e["data"]["source"] == "campaigns"
    ]
    made_by = {
        module: sorted(
            d["changed"].get("email") or d["changed"].get("name")
            for d in created
            if d["module"] == module
        )
        for module in ("leads", "contacts", "accounts")
    }
    assert made_by == {
        "leads": [address(i) for i in OPENERS if expected(i)[0] == "leads"],
        "contacts": [address(i) for i in OPENERS if expected(i)[0] == "contacts"],
        "accounts": ["会社0", "会社1", "会社2"],
    }
    ids = {(d["module"], d["changed"].get("email")): d["id"] for d in created}

    # Each member's record: the one registered, the one already in the CRM, or none.
    for i in range(MEMBERS):
        record = got[address(i)]["record"]
        module = expected(i)[0]
        if i in EXISTING:
            want = dict(zip(("module", "id"), existing[i], strict=True))
        elif module:
            want = {"module": module, "id": ids[(module, address(i))]}
        else:
            want = None
        assert record == want, (i, record)

    # Every record involved shows this campaign, with the member's status, in its history.
    for i in OPENERS:
        record = got[address(i)]["record"]
        if record is None:
            continue
        history = api.get(f"/api/v1/{record['module']}/{record['id']}/campaigns").json()
        assert [(h["campaign_id"], h["status"]) for h in history["items"]] == [
            (campaign_id, expected_status(i))
        ], i
    contact = api.get(f"/api/v1/contacts/{ids[('contacts', address(0))]}").json()
    assert (contact["last_name"], contact["first_name"], contact["source"]) == (
        "姓0",
        "名0",
        "campaigns",
    )

    # Nobody already in the CRM, nor the member without a first name, got a second record.
    for i in [*EXISTING, NO_FIRST_NAME]:
        for module in ("leads", "contacts"):
            found = api.get(f"/api/v1/{module}", params={"email": address(i)}).json()["items"]
            want = [existing[i][1]] if existing.get(i, ("",))[0] == module else []
            assert [r["id"] for r in found] == want, (i, module)
