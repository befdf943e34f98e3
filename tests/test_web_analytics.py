"""``/analytics`` shows what ``GET /api/v1/reports/emails`` and ``/no-response`` answer for
the same filters: the summary row, the per-period table, A/B versions, who did not
respond; bad filters are a page with a message, never a 500; other orgs stay out."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.browser import chromium_browser
from tests.support.sends import make_send
from tests.support.web import login, login_in_browser, new_member

ARTIFACTS = Path(__file__).parent / "artifacts"
T0 = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)  # Monday 10:00 in Tokyo
RANGE = {"from": "2026-11-01", "to": "2026-11-15"}


@pytest.fixture(scope="module")
def gate(mailgate):
    return mailgate


@pytest.fixture(scope="module")
def world(gate):
    """An org with two reps, a template of two versions, a lead who never answered, and a
    second org whose sends must never show."""
    org, admin_user = new_member(gate)
    _, rep = new_member(gate, admin_user=False, org=org)
    api = gate.api(admin_user)
    r = api.post(
        "/api/v1/templates",
        json={"name": "秋のご案内", "module": "leads", "subject": "ご案内", "html": "<p>x</p>"},
    )
    assert r.status_code == 201, r.text
    template = r.json()
    lead = api.post(
        "/api/v1/leads",
        json={"last_name": "佐藤", "first_name": "花子", "email": "hanako@client.example"},
    ).json()

    def send(user, at, **kw):
        to = kw.pop("to", f"{secrets.token_hex(4)}@x.jp")
        return make_send(gate, org, user, sent_at=at, to=to, **kw)

    tid = template["id"]
    # Version 1 (admin): 3 sent, 1 bounced, 1 opened + clicked.  Version 2 (rep): 2 sent, 2
    # opened, 1 replied.  Without a template (rep, a week later): 1 sent to the silent lead.
    send(admin_user, T0, template_id=tid, template_version=1, bounced_at=T0, status="bounced")
    send(admin_user, T0, template_id=tid, template_version=1)
    opened = T0 + timedelta(hours=2)
    send(admin_user, T0, template_id=tid, template_version=1, opened_at=opened, clicked_at=opened)
    send(rep, T0 + timedelta(days=1), template_id=tid, template_version=2, opened_at=opened)
    send(
        rep,
        T0 + timedelta(days=1),
        template_id=tid,
        template_version=2,
        opened_at=opened,
        replied_at=opened,
    )
    send(rep, T0 + timedelta(days=8), module="leads", record_id=lead["id"], to=lead["email"])
    other_org, other_user = new_member(gate)
    for _ in range(4):
        make_send(gate, other_org, other_user, sent_at=T0, to="z@x.jp")
    return {
        "org": org,
        "admin": admin_user,
        "rep": rep,
        "template": template,
        "lead": lead,
        "other_user": other_user,
    }


def _cells(row) -> dict[str, str]:
    return {
        name: row.locator(f"td.{name}").inner_text()
        for name in ("sent", "bounced", "opened", "clicked", "received", "replied")
    }


def _expected(item: dict, *, received: bool = True) -> dict[str, str]:
    """What a row of the page shows for one item of the API's report."""
    got = item.get("received")
    return {
        "sent": f"{item['sent']:,}",
        "bounced": f"{item['bounced']['pct']:,.1f}%{item['bounced']['n']:,}",
        "opened": f"{item['opened']['pct']:,.1f}%{item['opened']['n']:,}",
        "clicked": f"{item['clicked']['pct']:,.1f}%{item['clicked']['n']:,}",
        "received": f"{got:,}" if received and got is not None else "-",
        "replied": f"{item['replied']['n']:,}{item['replied']['pct']:,.1f}%",
    }


def test_the_page_shows_the_apis_numbers_for_the_same_filters(gate, world):
    api = gate.api(world["rep"])
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium_browser() as browser:
        page = browser.new_page(locale="ja-JP", viewport={"width": 1300, "height": 1600})
        login_in_browser(page, gate, world["rep"])
        # The filters are a GET form a user fills in.
        page.goto(gate.http_url + "/analytics")
        page.fill("input[name=from]", RANGE["from"])
        page.fill("input[name=to]", RANGE["to"])
        page.select_option("select[name=group]", "week")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**/analytics?*group=week*")
        assert page.locator("h1").inner_text() == "メールの追跡"
        body = api.get("/api/v1/reports/emails", params={**RANGE, "group": "week"}).json()
        rows = page.locator("#report tbody tr[data-period]")
        assert rows.count() == len(body["totals"]) == 2
        for i, item in enumerate(body["totals"]):
            assert rows.nth(i).get_attribute("data-period") == item["period"]
            assert _cells(rows.nth(i)) == _expected(item)
        summary = _cells(page.locator("#report tr.summary"))
        assert summary["sent"] == "6" and summary["bounced"] == "16.7%1"
        assert summary["opened"] == "60.0%3"  # of the 5 delivered, as the API counts
        assert page.locator("figure.chart rect.bar").count() == 2 * 4
        # A/B: the template's versions side by side, as by=template reports them.
        by_template = api.get(
            "/api/v1/reports/emails", params={**RANGE, "group": "month", "by": "template"}
        ).json()
        tid = world["template"]["id"]
        for item in by_template["items"]:
            if item["template_id"] != tid:
                continue
            row = page.locator(
                f"#ab tr[data-template='{tid}'][data-version='{item['template_version']}']"
            )
            assert _cells(row) == _expected(item, received=False)
            assert row.locator("th").inner_text() == "秋のご案内"
        assert page.locator("#ab tr[data-version='1'] td.opened").inner_text() == "50.0%1"
        # Who did not respond: the silent lead, 姓 名 as the org's locale says.
        silent = api.get("/api/v1/reports/no-response", params=RANGE).json()["items"]
        lead = world["lead"]
        assert [(s["module"], s["id"]) for s in silent] == [("leads", lead["id"])]
        row = page.locator(f"#silent tr[data-record='leads/{lead['id']}']")
        assert row.locator("th a").inner_text() == "佐藤 花子"
        assert row.locator("th a").get_attribute("href") == f"/records/leads/{lead['id']}"
        page.screenshot(path=str(ARTIFACTS / "analytics.png"), full_page=True)

        # A user filter: the user's rows of by=user, received included.
        page.goto(
            gate.http_url
            + f"/analytics?from={RANGE['from']}&to={RANGE['to']}&group=day&user={world['rep']['id']}"
        )
        by_user = api.get("/api/v1/reports/emails", params={**RANGE, "by": "user"}).json()
        mine = [i for i in by_user["items"] if i["user_id"] == world["rep"]["id"]]
        rows = page.locator("#report tbody tr[data-period]")
        assert rows.count() == len(mine) == 2
        for i, item in enumerate(mine):
            assert _cells(rows.nth(i)) == _expected(item)
        assert _cells(page.locator("#report tr.summary"))["sent"] == "3"
        # A template filter: the template's versions added up per period.
        page.goto(
            gate.http_url + f"/analytics?from={RANGE['from']}&to={RANGE['to']}&template={tid}"
        )
        summary = _cells(page.locator("#report tr.summary"))
        assert summary["sent"] == "5" and summary["replied"] == "1" + "25.0%"
        assert page.locator("#ab tbody tr").count() == 2
        page.screenshot(path=str(ARTIFACTS / "analytics-template.png"), full_page=True)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "26/11/2026"}, "Dates must look like 2026-11-26."),
        ({"from": "2026-11-20", "to": "2026-11-01"}, "The start date must be before the end"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "A report covers at most three years."),
        ({"group": "year"}, "Choose a day, a week or a month."),
        ({"user": "abc"}, "There is no such user in your organization."),
        ({"template": "-1"}, "There is no such template in your organization."),
    ],
)
def test_bad_filters_are_a_page_with_a_message(gate, world, params, message):
    client = login(gate, world["rep"], **{"Accept-Language": "en"})
    r = client.get("/analytics", params=params)
    assert r.status_code == 400 and message in r.text
    assert 'name="from"' in r.text  # the form is there to fix it


def test_another_orgs_user_or_template_is_refused_and_its_sends_never_counted(gate, world):
    client = login(gate, world["other_user"], **{"Accept-Language": "en"})
    r = client.get("/analytics", params={"user": world["rep"]["id"]})
    assert r.status_code == 400 and "There is no such user" in r.text
    r = client.get("/analytics", params={"template": world["template"]["id"]})
    assert r.status_code == 400 and "There is no such template" in r.text
    r = client.get("/analytics", params={**RANGE, "group": "month"})
    assert r.status_code == 200 and "秋のご案内" not in r.text and "佐藤" not in r.text
    mine = login(gate, world["rep"]).get("/analytics", params={**RANGE, "group": "month"})
    assert 'class="num sent">6<' in mine.text and 'class="num sent">4<' in r.text


def test_a_user_and_a_template_at_once_is_explained(gate, world):
    client = login(gate, world["rep"], **{"Accept-Language": "ja"})
    params = {"user": world["rep"]["id"], "template": world["template"]["id"]}
    r = client.get("/analytics", params=params)
    assert r.status_code == 400 and "どちらか一方" in r.text


def test_the_analytics_page_needs_a_session_and_has_no_inline_style(gate, world):
    anonymous = gate.api(world["rep"])  # an API token is not a dashboard session
    anonymous.headers.pop("Authorization")
    r = anonymous.get("/analytics", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/analytics")
    r = login(gate, world["rep"]).get("/analytics", params=RANGE)
    assert r.status_code == 200 and " style=" not in r.text and "<script>" not in r.text


def test_an_org_without_mail_sees_zeros_and_a_note_not_an_empty_chart(gate):
    _, user = new_member(gate)
    r = login(gate, user, **{"Accept-Language": "en"}).get("/analytics")
    assert r.status_code == 200
    assert "No mail was sent in this period." in r.text and "<svg" not in r.text
    assert 'class="num sent">0<' in r.text and "Everyone mailed in this period responded." in r.text
