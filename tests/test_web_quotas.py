"""The quotas landing page: today's figures, the 30-day chart from ``quota_usage``, the
80 % / 100 % warnings, and every org at a glance for the operators named in
``MAILGATE_OPERATORS`` (and for nobody else)."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest

from gateway.sending.usage import org_quota
from storage import quotas
from tests.support.browser import chromium_browser
from tests.support.server import MailgateServer
from tests.support.web import login, login_in_browser, new_member, with_password

ARTIFACTS = Path(__file__).parent / "artifacts"
OPERATOR = f"ops-{uuid.uuid4().hex[:6]}@operators.example.co.jp"


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory):
    server = MailgateServer(
        database_url,
        tmp_path_factory.mktemp("data"),
        operators=f" x@y.example , {OPERATOR.upper()}",
    ).start()
    yield server
    server.stop()


def _reserve(gate, org, kind: str, day: str, n: int) -> None:
    async def go():
        async with gate.db.begin() as conn:
            await conn.run_sync(quotas.reserve, org["id"], kind, day, n, 10**9)

    gate.call(go())


def _status(gate, org) -> dict:
    async def go():
        async with gate.db.connect() as conn:
            return await conn.run_sync(org_quota, org, gate.running.services.clock.now())

    return gate.call(go())


def _send_one(gate, user) -> None:
    api = gate.api(user)
    tag = uuid.uuid4().hex[:6]
    lead = api.post("/api/v1/leads", json={"last_name": "佐藤", "email": f"l{tag}@client.example"})
    assert lead.status_code == 201, lead.text
    r = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead.json()["id"]}], "subject": "見積", "text": "x"},
    )
    assert r.status_code == 202, r.text


def test_the_chart_shows_30_local_days_of_quota_usage_and_the_limit(gate):
    org, user = new_member(gate)
    _send_one(gate, user)
    _send_one(gate, user)
    status = _status(gate, org)["individual"]
    today = date.fromisoformat(status["day"])
    three_ago = (today - timedelta(days=3)).isoformat()
    _reserve(gate, org, "individual", three_ago, 7)
    _reserve(gate, org, "individual", (today - timedelta(days=30)).isoformat(), 99)  # too old
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium_browser() as browser:
        page = browser.new_page(locale="en-US", viewport={"width": 1200, "height": 1400})
        login_in_browser(page, gate, user)
        section = page.locator("section.history[data-kind=individual]")
        bars = section.locator("rect.bar")
        assert bars.count() == 30
        assert bars.nth(29).get_attribute("data-value") == str(status["used"]) == "2"
        assert bars.nth(29).get_attribute("data-label") == today.isoformat()[5:]
        assert bars.nth(26).get_attribute("data-value") == "7"
        assert sum(int(bars.nth(i).get_attribute("data-value")) for i in range(30)) == 9
        assert section.locator("line.limit").count() == 1
        assert f"{status['limit']:,}" in section.locator("line.limit title").text_content()
        assert page.locator("tr[data-kind=individual] td.used").inner_text() == "2"
        assert page.locator("table.all-orgs").count() == 0  # an org admin is no operator
        page.screenshot(path=str(ARTIFACTS / "quotas.png"), full_page=True)


def test_the_80_and_100_percent_warnings(gate):
    org, user = new_member(gate)
    status = _status(gate, org)
    individual, mass = status["individual"], status["mass"]
    _reserve(gate, org, "individual", individual["day"], -(-individual["limit"] * 8 // 10))
    if mass["limit"]:
        _reserve(gate, org, "mass", mass["day"], mass["limit"])
    client = login(gate, user, **{"Accept-Language": "en"})
    html = client.get("/").text
    assert "Individual mail: 80% of today&#39;s quota is used." in html
    if mass["limit"]:
        assert "Mass mail: today&#39;s quota is used up" in html
    ja = client.get("/?lang=ja").text
    assert "個別メール：本日の上限の80%に達しました。" in ja


def test_operators_see_every_org_and_nobody_else_does(gate):
    org_a, admin_a = new_member(gate)
    org_b, rep_b = new_member(gate, admin_user=False)
    _send_one(gate, rep_b)
    used_b = _status(gate, org_b)["individual"]
    operator = gate.user(org_a, OPERATOR.lower(), "運用 花子", admin=False)
    with_password(gate, operator)
    for outsider in (admin_a, rep_b):
        assert "all-orgs" not in login(gate, outsider).get("/").text
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium_browser() as browser:
        page = browser.new_page(locale="ja-JP", viewport={"width": 1200, "height": 1400})
        login_in_browser(page, gate, operator)
        table = page.locator("table.all-orgs")
        assert table.count() == 1
        row_b = table.locator(f"tr[data-org='{org_b['id']}']")
        assert row_b.locator("th").inner_text() == org_b["name"]
        assert (
            row_b.locator("td.individual").inner_text()
            == f"{used_b['used']:,} / {used_b['limit']:,}"
        )
        assert table.locator(f"tr[data-org='{org_a['id']}']").count() == 1
        page.screenshot(path=str(ARTIFACTS / "quotas-operators.png"), full_page=True)


def test_the_quota_page_has_no_inline_style_or_script(gate):
    _, user = new_member(gate)
    r = login(gate, user).get("/")
    assert r.status_code == 200
    assert " style=" not in r.text and "<script>" not in r.text and "<svg" in r.text
