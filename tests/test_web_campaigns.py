"""The Campaigns and syncs pages (#13): lists, campaigns with per-member status, syncs with
pause/resume and run history, consumer lag; org scoping, CSRF and admin-only parts.

Through a running server: headless Chromium for what a user sees (screenshots saved in
``tests/artifacts/``), httpx for the refusals.  The JSON API is the reference each page
must agree with.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from gateway.addresses import normalise
from storage.schema_campaigns import campaign_recipients, campaigns
from sync import CONSUMERS
from tests.support.browser import chromium_browser
from tests.support.campaigns import add_member, make_list
from tests.support.server import MailgateServer, wait_until
from tests.support.web import csrf_of, login, login_in_browser, new_member
from tests.test_syncs_rules import lead, runs, start_sync

ARTIFACTS = Path(__file__).parent / "artifacts"
STATUSES = ("sent", "opened", "clicked", "bounced", "unsubscribed", "failed", "queued")


@pytest.fixture(scope="module")
def gate(mailgate):
    return mailgate


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sent_campaign(
    server: MailgateServer, org: dict[str, Any], user: dict[str, Any], n: int = len(STATUSES)
) -> tuple[int, int]:
    """A list of ``n`` members and a sent campaign to it, its recipients in varied states."""
    tag = uuid.uuid4().hex[:6]
    list_id = make_list(server, org, f"ニュースレター {tag}")
    at = datetime.now(UTC) - timedelta(hours=2)
    people = [(f"p{i}-{tag}@kokyaku.example.jp", STATUSES[i % len(STATUSES)]) for i in range(n)]
    member_ids = [
        add_member(server, org, list_id, email, first_name="太郎", last_name=f"山田{i}")
        for i, (email, _) in enumerate(people)
    ]

    def go(conn) -> int:
        cid = conn.execute(
            insert(campaigns)
            .values(
                org_id=org["id"], user_id=user["id"], name=f"秋のご案内 {tag}",
                list_ids=[list_id], subject="ご案内", html="<p>x</p>",
                from_email=user["email"], status="sent", recipients=n,
                started_at=at, sent_at=at, created_at=at, updated_at=at,
            )
            .returning(campaigns.c.id)
        ).scalar_one()  # fmt: skip
        for (email, status), member_id, i in zip(people, member_ids, range(n), strict=True):
            sent = at if status not in ("queued", "failed") else None
            conn.execute(
                insert(campaign_recipients).values(
                    org_id=org["id"], campaign_id=cid, member_id=member_id, list_id=list_id,
                    email=email, email_norm=normalise(email), first_name="太郎",
                    last_name=f"山田{i}", due_at=at, status=status, sent_at=sent,
                    opened_at=at if status in ("opened", "clicked") else None,
                    clicked_at=at if status == "clicked" else None,
                    bounced_at=at if status == "bounced" else None,
                    unsubscribed_at=at if status == "unsubscribed" else None,
                    not_registered_reason="not_requested",
                )
            )  # fmt: skip
        return cid

    return server.call(server.db.run_write(go)), list_id


def api_members(server: MailgateServer, user: dict[str, Any], cid: int) -> dict[str, str]:
    with server.api(user) as api:
        r = api.get(f"/api/v1/campaigns/{cid}/members", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return {m["email"]: m["status"] for m in r.json()["items"]}


def sync_state(server: MailgateServer, user: dict[str, Any], sync_id: int) -> str:
    with server.api(user) as api:
        r = api.get(f"/api/v1/syncs/{sync_id}")
    assert r.status_code == 200, r.text
    return r.json()["state"]


def a_sync(server: MailgateServer, org: dict[str, Any], user: dict[str, Any]) -> int:
    """A leads → list sync whose full run has happened, one lead skipped as a role address."""
    list_id = make_list(server, org, f"同期リスト {uuid.uuid4().hex[:6]}")
    with server.api(user) as api:
        lead(api, email=f"hanako-{list_id}@kokyaku.example.jp", first_name="花子")
        lead(api, email="info@kokyaku.example.jp")
        sync_id = start_sync(api, list_id)
        wait_until(lambda: any(r["kind"] == "full" for r in runs(api, sync_id)), timeout=15)
    return sync_id


# -- Chromium: what a user sees -------------------------------------------------------------


def test_a_campaigns_page_shows_each_members_status_as_the_api_does(gate):
    org, user = new_member(gate)
    cid, list_id = sent_campaign(gate, org, user)
    expected = api_members(gate, user, cid)
    assert len(expected) == len(STATUSES)
    with chromium_browser() as browser:
        page = browser.new_page(locale="en-US")
        login_in_browser(page, gate, user)
        page.goto(gate.http_url + "/campaigns?lang=en")
        row = page.locator(f"tr[data-list='{list_id}']")
        assert row.locator("td.members").inner_text() == str(len(STATUSES))
        camp = page.locator(f"tr[data-campaign='{cid}']")
        assert camp.locator("td.state").inner_text() == "Sent"
        assert camp.locator("td.stat-opened").inner_text() == "2"  # opened + clicked
        shot(page, "campaigns_index")
        camp.locator("a").click()
        page.wait_for_url(f"{gate.http_url}/campaigns/{cid}")
        seen = {
            tr.get_attribute("data-email"): tr.get_attribute("data-status")
            for tr in page.locator("tr.member").all()
        }
        assert seen == expected
        bounced = next(e for e, s in expected.items() if s == "bounced")
        assert page.locator(f"tr[data-email='{bounced}'] td.status").inner_text() == "Bounced"
        shot(page, "campaigns_campaign")
        # The status filter narrows the list to what the API's ?status= gives.
        page.select_option("select[name=status]", "bounced")
        page.click("form.filter button")
        page.wait_for_url(lambda url: "status=bounced" in url)
        assert page.locator("tr.member").count() == 1
        page.goto(f"{gate.http_url}/campaigns/{cid}?lang=ja")
        assert page.locator(f"tr[data-email='{bounced}'] td.status").inner_text() == "バウンス"


def test_pausing_a_sync_from_the_page_pauses_it_for_the_api_and_resume_works(gate):
    org, user = new_member(gate)
    sync_id = a_sync(gate, org, user)
    assert sync_state(gate, user, sync_id) == "active"
    with chromium_browser() as browser:
        page = browser.new_page(locale="en-US")
        login_in_browser(page, gate, user)
        page.goto(gate.http_url + "/syncs?lang=en")
        row = page.locator(f"tr[data-sync='{sync_id}']")
        assert row.locator("td.state").get_attribute("data-state") == "active"
        shot(page, "syncs_index")
        row.locator("button", has_text="Pause").click()
        page.wait_for_url(lambda url: "done=pause" in url)
        assert "paused" in page.locator("p.notice").inner_text()
        assert sync_state(gate, user, sync_id) == "paused"
        row = page.locator(f"tr[data-sync='{sync_id}']")
        assert row.locator("td.state").get_attribute("data-state") == "paused"
        row.locator("button", has_text="Resume").click()
        page.wait_for_url(lambda url: "done=resume" in url)
        assert sync_state(gate, user, sync_id) == "active"
        # The run history shows the full run and, one click on, the skipped record's reason.
        page.goto(f"{gate.http_url}/syncs/{sync_id}")
        full = page.locator("table.runs tr[data-kind='full']").first
        assert full.locator("span[data-reason='role_address']").count() == 1
        full.locator("td.skipped a").click()
        page.wait_for_url(lambda url: "run=" in url)
        skip = page.locator("table.skips tr[data-reason='role_address']")
        assert skip.locator("td.email").inner_text() == "info@kokyaku.example.jp"
        assert skip.locator("td.reason").inner_text() == "role address"
        shot(page, "syncs_sync")
        # The sync's own page has the button too, and comes back to itself.
        page.click("form.change button")
        page.wait_for_url(lambda url: f"/syncs/{sync_id}?done=pause" in url)
        assert page.locator("dd.state").get_attribute("data-state") == "paused"
        assert sync_state(gate, user, sync_id) == "paused"


def test_consumer_lag_shows_each_consumer_for_admins(gate):
    org, user = new_member(gate)
    a_sync(gate, org, user)
    gate.drain_consumers()
    with chromium_browser() as browser:
        page = browser.new_page(locale="en-US")
        login_in_browser(page, gate, user)
        page.goto(gate.http_url + "/syncs?lang=en")
        lag = page.locator("table.lag")
        names = [tr.get_attribute("data-consumer") for tr in lag.locator("tbody tr").all()]
        assert names == [c.name for c in CONSUMERS]
        last = int(page.locator("p.last-id").inner_text().split(":")[1].replace(",", ""))
        assert last > 0
        for tr in lag.locator("tbody tr").all():
            position = int(tr.locator("td.position").inner_text().replace(",", ""))
            behind = int(tr.locator("td.lag").inner_text().replace(",", ""))
            assert 0 < position <= last and behind == last - position
        assert page.locator("tr[data-consumer='crm_to_campaigns'] th").inner_text() == (
            "CRM to Campaigns"
        )
        shot(page, "syncs_lag")


# -- httpx: refusals ------------------------------------------------------------------------


def test_a_pause_without_the_csrf_token_is_refused_and_changes_nothing(gate):
    org, user = new_member(gate)
    sync_id = a_sync(gate, org, user)
    client = login(gate, user, **{"Accept-Language": "en"})
    for data in ({}, {"csrf": "forged"}):
        r = client.post(f"/syncs/{sync_id}/pause", data=data)
        assert r.status_code == 403 and "did not come from this site" in r.text
    assert sync_state(gate, user, sync_id) == "active"
    token = csrf_of(client.get("/syncs").text)
    r = client.post(f"/syncs/{sync_id}/pause", data={"csrf": token})
    assert r.status_code == 303 and sync_state(gate, user, sync_id) == "paused"


def test_another_orgs_campaign_and_sync_are_not_found(gate):
    org, user = new_member(gate)
    cid, _ = sent_campaign(gate, org, user, n=2)
    sync_id = a_sync(gate, org, user)
    _, stranger = new_member(gate)
    client = login(gate, stranger, **{"Accept-Language": "en"})
    for path in (f"/campaigns/{cid}", f"/syncs/{sync_id}", "/campaigns/999999999", "/syncs/0"):
        r = client.get(path)
        assert r.status_code == 404 and "There is no such page" in r.text, path
    token = csrf_of(client.get("/syncs").text)
    for action in ("pause", "resume"):
        assert client.post(f"/syncs/{sync_id}/{action}", data={"csrf": token}).status_code == 404
    assert sync_state(gate, user, sync_id) == "active"
    listing = client.get("/campaigns").text + client.get("/syncs").text
    assert f"/campaigns/{cid}" not in listing and f"/syncs/{sync_id}" not in listing


def test_a_non_admin_sees_syncs_but_not_the_installations_consumer_lag(gate):
    org, admin = new_member(gate)
    sync_id = a_sync(gate, org, admin)
    _, member = new_member(gate, admin_user=False, org=org)
    client = login(gate, member, **{"Accept-Language": "en"})
    page = client.get("/syncs")
    assert page.status_code == 200 and f"/syncs/{sync_id}" in page.text
    assert 'table class="lag"' not in page.text and "Consumer lag" not in page.text
    admin_page = login(gate, admin, **{"Accept-Language": "en"}).get("/syncs").text
    assert "Consumer lag" in admin_page


def test_a_campaigns_members_are_paged(gate):
    org, user = new_member(gate)
    cid, _ = sent_campaign(gate, org, user, n=60)
    client = login(gate, user)
    first = client.get(f"/campaigns/{cid}")
    assert first.status_code == 200 and first.text.count('class="member"') == 50
    nxt = first.text.split('rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
    second = client.get(nxt)
    assert second.text.count('class="member"') == 10 and 'rel="next"' not in second.text
    emails = set(api_members(gate, user, cid))
    shown = {
        line.split('data-email="')[1].split('"')[0]
        for text in (first.text, second.text)
        for line in text.splitlines()
        if 'class="member"' in line
    }
    assert shown == emails


def test_anonymous_visitors_go_to_login(gate):
    import httpx

    with httpx.Client(base_url=gate.http_url) as client:
        for path in ("/campaigns", "/syncs", "/syncs/1"):
            r = client.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
        assert client.post("/syncs/1/pause").status_code == 303


def test_every_value_the_pages_name_has_words_in_both_languages():
    """States, statuses, reasons and consumers are shown through keys built from their value."""
    from gateway.http.campaigns import RECIPIENT_STATUSES
    from gateway.http.lists import LIST_KINDS, MEMBER_STATUSES
    from gateway.web.i18n import CATALOGUE
    from sync.mirror import DoNotMail, Module, SkipReason, Subscription

    keys = {
        *(f"campaigns.state.{s}" for s in ("draft", "scheduled", "sending", "sent", "cancelled")),
        *(f"campaigns.rstatus.{s}" for s in RECIPIENT_STATUSES),
        *(f"campaigns.mstatus.{s}" for s in MEMBER_STATUSES),
        *(f"campaigns.list.kind.{k}" for k in LIST_KINDS),
        *(f"campaigns.module.{m}" for m in Module),
        *(f"syncs.subscription.{s}" for s in Subscription),
        *(f"syncs.do_not_mail.{d}" for d in DoNotMail),
        *(f"syncs.reason.{r}" for r in SkipReason),
        *(f"syncs.run.kind.{k}" for k in ("full", "change")),
        *(f"syncs.state.{s}" for s in ("active", "paused")),
        *(f"syncs.lag.consumer.{c.name}" for c in CONSUMERS),
        *(
            f"campaigns.reason.{r}"
            for r in (
                "already_in_crm",
                "missing_fields",
                "list_not_configured",
                "no_activity",
                "not_requested",
            )
        ),  # fmt: skip
    }
    for lang in ("en", "ja"):
        assert not keys - set(CATALOGUE[lang]), (lang, keys - set(CATALOGUE[lang]))
