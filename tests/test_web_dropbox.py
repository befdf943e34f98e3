"""Dashboard pages /dropbox, /suppressions and /attention (#13), through the running server:
headless Chromium for what a user sees, httpx for the refusals (CSRF, 404, 403)."""

from __future__ import annotations

import smtplib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from storage import suppressions
from storage.schema import inbound
from tests.support.browser import chromium_browser
from tests.support.web import csrf_of, login, login_in_browser, new_member

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def gate(mailgate):
    return mailgate


def shot(page, name: str, database_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    dialect = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    page.screenshot(path=str(ARTIFACTS / f"{name}-{dialect}.png"), full_page=True)


def rcpt(gate, mail_from: str, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", gate.smtp_port, timeout=30) as s:
        s.ehlo()
        s.mail(mail_from)
        code, _ = s.rcpt(address)
        s.rset()
        return code


def rcpt_reply(gate, mail_from: str, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gate.smtp_port, timeout=30) as s:
        s.ehlo()
        s.mail(mail_from)
        return s.rcpt(address)


def suppress(gate, org, email: str, reason: str, at: datetime | None = None) -> None:
    gate.call(
        gate.db.run_write(lambda conn: suppressions.suppress(conn, org["id"], email, reason, at=at))
    )


def api_dropbox(gate, user) -> dict:
    return gate.api(user).get("/api/v1/me/dropbox").json()


def keep(gate, org, user, *, channel="dropbox", state="refused", **values) -> int:
    """A parked inbound row, as the ingest runner or the bounce worker leaves it."""
    raw = (
        b"From: stranger@else.example\r\nTo: client@client.example\r\nSubject: kept\r\n"
        b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@else.example>\r\n\r\nbody\r\n"
    )
    row = {
        "org_id": org["id"] if org else None,
        "user_id": user["id"] if user else None,
        "channel": channel,
        "state": state,
        "mail_from": "stranger@else.example",
        "rcpt_to": [user["dropbox_address"]] if user else ["bounces+nope@mailgate.test"],
        "raw": raw,
        **values,
    }

    async def seed():
        async with gate.db.begin() as conn:
            q = insert(inbound).values(**row).returning(inbound.c.id)
            return (await conn.execute(q)).scalar_one()

    return gate.call(seed())


# -- /dropbox -------------------------------------------------------------------------------


def test_regenerate_in_the_browser_and_the_old_address_is_refused_over_smtp(gate, database_url):
    _, user = new_member(gate, admin_user=False)
    old = user["dropbox_address"]
    assert rcpt(gate, user["email"], old) == 250  # the receiver now has it cached
    with chromium_browser() as browser:
        context = browser.new_context(locale="en-US")
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = context.new_page()
        login_in_browser(page, gate, user)
        page.goto(gate.http_url + "/dropbox?lang=en")
        assert page.locator("#dropbox-address").inner_text() == old
        page.click("button.copy")
        assert page.evaluate("navigator.clipboard.readText()") == old
        assert page.locator("button.copy").inner_text() == "Copied"
        shot(page, "dropbox", database_url)
        # Without the confirmation the browser does not send the form (the box is required).
        page.click("form[action='/dropbox/regenerate'] button[type=submit]")
        assert page.url.endswith("/dropbox?lang=en")
        page.check("form[action='/dropbox/regenerate'] input[name=confirm]")
        page.click("form[action='/dropbox/regenerate'] button[type=submit]")
        page.wait_for_url("**/dropbox?done=regenerated")
        new = page.locator("#dropbox-address").inner_text()
        assert page.locator(".notice").inner_text().startswith("Your dropbox has a new address")
        context.close()
    assert new != old and new.endswith("@mailgate.test")
    assert api_dropbox(gate, user)["address"] == new
    code, reply = rcpt_reply(gate, user["email"], old)
    assert code == 550 and reply.startswith(b"5.1.1"), reply
    assert rcpt(gate, user["email"], new) == 250


def test_regenerate_without_the_csrf_token_or_the_confirmation_is_refused(gate):
    _, user = new_member(gate, admin_user=False)
    client = login(gate, user, **{"Accept-Language": "en"})
    assert client.post("/dropbox/regenerate", data={"confirm": "yes"}).status_code == 403
    r = client.post("/dropbox/regenerate", data={"confirm": "yes", "csrf": "forged"})
    assert r.status_code == 403
    token = csrf_of(client.get("/dropbox").text)
    r = client.post("/dropbox/regenerate", data={"csrf": token})
    assert r.status_code == 422 and "Tick the box to confirm" in r.text
    assert api_dropbox(gate, user)["address"] == user["dropbox_address"]
    r = client.post("/dropbox/regenerate", data={"csrf": token, "confirm": "yes"})
    assert r.status_code == 303 and r.headers["location"] == "/dropbox?done=regenerated"
    assert api_dropbox(gate, user)["address"] != user["dropbox_address"]


def test_the_vcard_is_the_same_bytes_as_the_apis_and_needs_a_session(gate):
    _, user = new_member(gate, admin_user=False)
    client = login(gate, user)
    page = client.get("/dropbox.vcf")
    api = gate.api(user).get("/api/v1/me/dropbox.vcf")
    assert page.status_code == 200 and page.content == api.content
    assert page.headers["content-type"] == api.headers["content-type"]
    assert page.headers["content-disposition"] == api.headers["content-disposition"]
    anonymous = gate.api({"api_token": "none"})
    anonymous.headers.pop("Authorization")
    r = anonymous.get("/dropbox.vcf")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_allowed_senders_are_added_and_removed_at_most_five(gate):
    _, user = new_member(gate, admin_user=False)
    client = login(gate, user, **{"Accept-Language": "en"})
    token = csrf_of(client.get("/dropbox").text)
    assert rcpt(gate, "me@home.example.jp", user["dropbox_address"]) == 550
    for i in range(5):
        r = client.post("/dropbox/senders", data={"csrf": token, "add": f"S{i}@Home.Example.JP"})
        assert r.status_code == 303, r.text
    assert api_dropbox(gate, user)["allowed_senders"] == [f"s{i}@home.example.jp" for i in range(5)]
    assert rcpt(gate, "s0@home.example.jp", user["dropbox_address"]) == 250
    page = client.get("/dropbox").text
    assert "All 5 places are used" in page and 'name="add"' not in page
    r = client.post("/dropbox/senders", data={"csrf": token, "add": "me@home.example.jp"})
    assert r.status_code == 422 and "At most five other senders" in r.text
    r = client.post("/dropbox/senders", data={"csrf": token, "add": "not an address"})
    assert r.status_code == 422 and "not an email address" in r.text
    r = client.post("/dropbox/senders", data={"csrf": token, "remove": "s0@home.example.jp"})
    assert r.status_code == 303
    assert "s0@home.example.jp" not in api_dropbox(gate, user)["allowed_senders"]
    assert rcpt(gate, "s0@home.example.jp", user["dropbox_address"]) == 550
    assert client.post("/dropbox/senders", data={"add": "x@y.example"}).status_code == 403


def test_the_dropbox_settings_are_the_apis(gate):
    _, user = new_member(gate, admin_user=False)
    client = login(gate, user)
    token = csrf_of(client.get("/dropbox").text)
    r = client.post(
        "/dropbox/settings", data={"csrf": token, "setting": "contact", "search": "contacts"}
    )
    assert r.status_code == 303
    view = api_dropbox(gate, user)
    assert (view["setting"], view["search"]) == ("contact", "contacts")
    r = client.post("/dropbox/settings", data={"csrf": token, "setting": "boss", "search": "x"})
    assert r.status_code == 422
    assert api_dropbox(gate, user)["setting"] == "contact"


# -- /suppressions ----------------------------------------------------------------------------


def test_lift_a_suppression_in_the_browser_and_it_is_gone_with_its_event(gate, database_url):
    org, user = new_member(gate, admin_user=False)
    suppress(gate, org, "gone@client.example", "hard_bounce")
    suppress(gate, org, "stays@client.example", "unsubscribe")
    with chromium_browser() as browser:
        page = browser.new_page(locale="ja-JP")
        login_in_browser(page, gate, user)
        page.goto(gate.http_url + "/suppressions?lang=ja")
        rows = page.locator("table.suppressions tbody tr")
        assert rows.count() == 2
        assert "ハードバウンス" in page.locator("tr[data-email='gone@client.example']").inner_text()
        page.fill("input[name=email]", "gone@")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**/suppressions?email=gone*")
        assert rows.count() == 1
        shot(page, "suppressions", database_url)
        row = page.locator("tr[data-email='gone@client.example']")
        row.locator("input[name=confirm]").check()
        row.locator("button[type=submit]").click()
        page.wait_for_url("**/suppressions?done=lifted*")
        assert (
            "gone@client.example の配信停止を解除しました" in page.locator(".notice").inner_text()
        )
        assert page.locator("tr[data-email='gone@client.example']").count() == 0
        assert page.locator("tr[data-email='stays@client.example']").count() == 1
    items = gate.api(user).get("/api/v1/suppressions").json()["items"]
    assert [i["email"] for i in items] == ["stays@client.example"]
    events = gate.api(user).get("/api/v1/events", params={"limit": 1000}).json()["items"]
    lifted = [e for e in events if e["type"] == "suppression.lifted"]
    assert len(lifted) == 1
    assert lifted[0]["data"]["email"] == "gone@client.example"
    assert lifted[0]["data"]["reason"] == "hard_bounce"
    assert lifted[0]["data"]["user_id"] == user["id"]


def test_suppressions_are_searched_by_address_reason_and_day(gate):
    org, user = new_member(gate, admin_user=False)
    suppress(gate, org, "a@one.example", "hard_bounce", datetime(2026, 3, 1, 3, tzinfo=UTC))
    suppress(gate, org, "b@two.example", "complaint", datetime(2026, 3, 2, 3, tzinfo=UTC))
    # 2026-03-02 16:00 UTC is 3 March in Tokyo (the org's time zone).
    suppress(gate, org, "c_d@two.example", "manual", datetime(2026, 3, 2, 16, tzinfo=UTC))
    client = login(gate, user)

    def shown(**params: str) -> list[str]:
        html = client.get("/suppressions", params=params).text
        return sorted(e for e in ("a@one", "b@two", "c_d@two") if f'data-email="{e}' in html)

    assert shown() == ["a@one", "b@two", "c_d@two"]
    assert shown(email="TWO.example") == ["b@two", "c_d@two"]
    assert shown(email="c_") == ["c_d@two"]
    assert shown(email="%") == []  # a wildcard is a character to find, not a pattern
    assert shown(reason="complaint") == ["b@two"]
    assert shown(reason="bogus") == ["a@one", "b@two", "c_d@two"]
    assert shown(**{"from": "2026-03-02", "to": "2026-03-02"}) == ["b@two"]
    assert shown(**{"from": "2026-03-03"}) == ["c_d@two"]
    assert shown(**{"to": "not-a-day"}) == ["a@one", "b@two", "c_d@two"]


def test_another_orgs_suppression_cannot_be_lifted_and_lift_needs_csrf_and_confirmation(gate):
    other, _ = new_member(gate)
    suppress(gate, other, "theirs@client.example", "hard_bounce")
    org, user = new_member(gate, admin_user=False)
    suppress(gate, org, "mine@client.example", "hard_bounce")
    client = login(gate, user, **{"Accept-Language": "en"})
    page = client.get("/suppressions").text
    assert "theirs@client.example" not in page
    token = csrf_of(page)
    r = client.post(
        "/suppressions/lift",
        data={"csrf": token, "email": "theirs@client.example", "confirm": "yes"},
    )
    assert r.status_code == 404
    assert (
        client.post(
            "/suppressions/lift", data={"email": "mine@client.example", "confirm": "yes"}
        ).status_code
        == 403
    )
    r = client.post("/suppressions/lift", data={"csrf": token, "email": "mine@client.example"})
    assert r.status_code == 422 and "Tick the box" in r.text
    mine = gate.api(user).get("/api/v1/suppressions").json()["items"]
    assert [i["email"] for i in mine] == ["mine@client.example"]
    assert gate.call(  # still suppressed in the other org
        gate.db.run_read(suppressions.suppressed_among, other["id"], ["theirs@client.example"])
    ) == {"theirs@client.example": "hard_bounce"}


# -- /attention -------------------------------------------------------------------------------


def test_a_non_admin_cannot_open_attention_nor_replay(gate):
    org, admin_user = new_member(gate)
    _, rep = new_member(gate, admin_user=False, org=org)
    kept = keep(gate, org, rep)
    client = login(gate, rep, **{"Accept-Language": "en"})
    r = client.get("/attention")
    assert r.status_code == 403 and "Only administrators" in r.text
    assert 'href="/attention"' not in client.get("/dropbox").text  # not in their menu
    token = csrf_of(client.get("/dropbox").text)
    r = client.post("/attention/replay", data={"csrf": token, "id": str(kept), "confirm": "yes"})
    assert r.status_code == 403
    assert 'href="/attention"' in login(gate, admin_user).get("/").text


def test_attention_in_the_browser_lists_parked_mail_and_replays_it(gate, database_url):
    org, admin_user = new_member(gate)
    _, rep = new_member(gate, admin_user=False, org=org)
    refused = keep(
        gate,
        org,
        rep,
        failed_stage="authorise",
        last_error="envelope sender stranger@else.example is not an allowed sender",
    )
    failed = keep(gate, org, rep, state="failed", failed_stage="match", last_error="boom")
    bounce = keep(gate, org, None, channel="bounce", state="held", last_error="unrecognised: x")
    elsewhere, other_user = new_member(gate)
    theirs = keep(gate, elsewhere, other_user)
    unowned = keep(gate, None, None, channel="bounce", state="held", last_error="no token")
    # The sender is allowed now: the refused mail can be filed.
    r = gate.api(rep).put("/api/v1/me/dropbox/senders", json={"senders": ["stranger@else.example"]})
    assert r.status_code == 200
    with chromium_browser() as browser:
        page = browser.new_page(locale="en-US")
        login_in_browser(page, gate, admin_user)
        page.goto(gate.http_url + "/attention?lang=en")
        ids = page.locator("table.attention tbody tr").evaluate_all(
            "rows => rows.map(r => Number(r.dataset.id))"
        )
        assert ids == [refused, failed, bounce]  # never another org's, nor an unowned bounce
        assert theirs not in ids and unowned not in ids
        text = page.locator(f"tr[data-id='{refused}']").inner_text()
        assert "Refused" in text and "is not an allowed sender" in text
        assert "Unattributed bounce" in page.locator(f"tr[data-id='{bounce}']").inner_text()
        shot(page, "attention", database_url)
        row = page.locator(f"tr[data-id='{refused}']")
        row.locator("input[name=confirm]").check()
        row.locator("button[type=submit]").click()
        page.wait_for_url("**/attention?done=replayed*")
        assert f"Message {refused} was processed again." in page.locator(".notice").inner_text()
        assert page.locator(f"tr[data-id='{refused}']").count() == 0

    async def state_of(inbound_id: int) -> str:
        from storage import inbound_store

        return (await gate.db.run_read(inbound_store.get, inbound_id))["state"]

    assert gate.call(state_of(refused)) == "done"


def test_replay_refuses_another_orgs_mail_a_missing_confirmation_and_a_failing_replay(gate):
    org, admin_user = new_member(gate)
    _, rep = new_member(gate, admin_user=False, org=org)
    elsewhere, other_user = new_member(gate)
    theirs = keep(gate, elsewhere, other_user)
    unowned = keep(gate, None, None, channel="bounce", state="held", last_error="no token")
    mine = keep(gate, org, rep, failed_stage="authorise", last_error="not allowed")
    client = login(gate, admin_user, **{"Accept-Language": "en"})
    token = csrf_of(client.get("/attention").text)
    for target in (theirs, unowned, 10**17, "x"):
        r = client.post("/attention/replay", data={"csrf": token, "id": target, "confirm": "yes"})
        assert r.status_code == 404, target
    assert client.post("/attention/replay", data={"id": mine, "confirm": "yes"}).status_code == 403
    r = client.post("/attention/replay", data={"csrf": token, "id": mine})
    assert r.status_code == 422 and "Tick the box to confirm the replay." in r.text
    # The sender is still not allowed: refused again, shown with the reason, and kept.
    r = client.post("/attention/replay", data={"csrf": token, "id": mine, "confirm": "yes"})
    assert r.status_code == 409 and "The replay did not succeed" in r.text
    assert f"message {mine} refused again at authorise" in r.text
    assert f'data-id="{mine}"' in r.text


def test_a_replay_that_breaks_is_one_line_on_the_page_and_a_bounce_goes_back_to_its_queue(
    gate, monkeypatch
):
    from gateway.web import dropbox as pages
    from storage import inbound_store

    org, admin_user = new_member(gate)
    _, rep = new_member(gate, admin_user=False, org=org)
    mine = keep(gate, org, rep, state="failed", failed_stage="file", last_error="boom")
    bounce = keep(gate, org, None, channel="bounce", state="held", last_error="unrecognised")
    client = login(gate, admin_user, **{"Accept-Language": "en"})
    token = csrf_of(client.get("/attention").text)

    async def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    with monkeypatch.context() as patch:
        patch.setattr(pages, "replay_kept", broken)
        r = client.post("/attention/replay", data={"csrf": token, "id": mine, "confirm": "yes"})
    assert r.status_code == 409
    assert f"replay of message {mine} broke: RuntimeError: disk on fire" in r.text
    assert "second line" not in r.text
    r = client.post("/attention/replay", data={"csrf": token, "id": bounce, "confirm": "yes"})
    assert r.status_code == 303 and r.headers["location"] == f"/attention?done=replayed&id={bounce}"
    row = gate.call(gate.db.run_read(inbound_store.get, bounce))
    assert row["state"] in ("pending", "held")  # back in the bounce worker's queue
