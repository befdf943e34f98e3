"""The dashboard's door: login, sessions, CSRF, the rate limit, headers and languages."""

from __future__ import annotations

import uuid

import pytest

from gateway.web.pages import FAILURES_PER_EMAIL
from tests.support.browser import chromium_browser
from tests.support.web import (
    PASSWORD,
    browser_session,
    csrf_of,
    login,
    login_in_browser,
    new_member,
    with_password,
)


@pytest.fixture(scope="module")
def gate(mailgate):
    return mailgate


def test_anonymous_pages_go_to_login_and_come_back_after(gate):
    _, user = new_member(gate)
    client = browser_session(gate)
    r = client.get("/?lang=en")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/%3Flang%3Den"
    form = client.get(r.headers["location"])
    r = client.post(
        "/login",
        data={
            "csrf": csrf_of(form.text),
            "email": user["email"],
            "password": PASSWORD,
            "next": "/?lang=en",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/?lang=en"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    page = client.get("/")
    assert page.status_code == 200 and user["email"] not in page.text  # name shown, not email
    assert "山田 太郎" in page.text


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil"])
def test_login_never_redirects_off_the_site(gate, target):
    _, user = new_member(gate)
    client = browser_session(gate)
    form = client.get("/login")
    r = client.post(
        "/login",
        data={
            "csrf": csrf_of(form.text),
            "email": user["email"],
            "password": PASSWORD,
            "next": target,
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_a_wrong_password_or_unknown_address_is_one_message_and_no_session(gate):
    _, user = new_member(gate)
    client = browser_session(gate, **{"Accept-Language": "en"})
    for email, password in ((user["email"], "wrong password!"), ("nobody@x.example", PASSWORD)):
        form = client.get("/login")
        r = client.post(
            "/login", data={"csrf": csrf_of(form.text), "email": email, "password": password}
        )
        assert r.status_code == 401
        assert "That email and password do not match." in r.text
        assert "mg_session" not in r.headers.get("set-cookie", "")
    assert client.get("/").status_code == 303


def test_a_login_without_its_csrf_token_is_refused(gate):
    _, user = new_member(gate)
    client = browser_session(gate)
    client.get("/login")
    r = client.post("/login", data={"email": user["email"], "password": PASSWORD})
    assert r.status_code == 403
    other = browser_session(gate)  # a token from another browser's form does not do
    token = csrf_of(other.get("/login").text)
    r = client.post(
        "/login", data={"csrf": token + "x", "email": user["email"], "password": PASSWORD}
    )
    assert r.status_code == 403


def test_logins_are_rate_limited_per_address(gate):
    _, user = new_member(gate)
    client = browser_session(gate, **{"Accept-Language": "ja"})
    for _ in range(FAILURES_PER_EMAIL):
        form = client.get("/login")
        r = client.post(
            "/login",
            data={"csrf": csrf_of(form.text), "email": user["email"], "password": "not the one!"},
        )
        assert r.status_code == 401
    form = client.get("/login")
    r = client.post(
        "/login", data={"csrf": csrf_of(form.text), "email": user["email"], "password": PASSWORD}
    )
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert "分後にもう一度お試しください" in r.text


def test_a_form_post_without_the_sessions_csrf_token_is_refused(gate):
    _, user = new_member(gate)
    client = login(gate, user)
    assert client.post("/logout", data={}).status_code == 403
    assert client.post("/logout", data={"csrf": "forged"}).status_code == 403
    assert client.get("/").status_code == 200  # still logged in
    r = client.post("/logout", data={"csrf": csrf_of(client.get("/").text)})
    assert r.status_code == 303
    assert client.get("/").status_code == 303  # the session is gone server-side too


def test_every_page_carries_a_csp_without_inline_script(gate):
    _, user = new_member(gate)
    client = login(gate, user)
    for path in ("/", "/login"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp and r.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in r.text and " style=" not in r.text


def test_the_language_follows_the_browser_and_a_switch_is_remembered(gate):
    _, user = new_member(gate)
    client = login(gate, user, **{"Accept-Language": "en-US,en;q=0.9"})
    assert "Send quotas" in client.get("/").text
    r = client.get("/?lang=ja")
    assert "送信上限" in r.text and "mg_lang=ja" in r.headers["set-cookie"]
    assert "送信上限" in client.get("/").text  # remembered over Accept-Language
    assert 'lang="ja"' in client.get("/").text


def test_a_deactivated_users_session_ends_and_a_password_reset_ends_sessions(gate):
    org, admin_user = new_member(gate)
    _, rep = new_member(gate, admin_user=False, org=org)
    session = login(gate, rep)
    api = gate.api(admin_user)
    r = api.put(f"/api/v1/users/{rep['id']}/password", json={"password": "a brand new secret"})
    assert r.status_code == 200 and r.json()["password_set"] is True
    assert "a brand new secret" not in r.text
    assert session.get("/").status_code == 303
    with_password(gate, rep)
    session = login(gate, rep)
    assert api.post(f"/api/v1/users/{rep['id']}/deactivate").status_code == 200
    assert session.get("/").status_code == 303


def test_passwords_are_set_by_admins_only_and_must_be_long_enough(gate):
    org, admin_user = new_member(gate)
    _, rep = new_member(gate, admin_user=False, org=org)
    rep_api = gate.api(rep)
    assert (
        rep_api.put(
            f"/api/v1/users/{admin_user['id']}/password", json={"password": "x" * 20}
        ).status_code
        == 403
    )
    api = gate.api(admin_user)
    assert (
        api.put(f"/api/v1/users/{rep['id']}/password", json={"password": "short"}).status_code
        == 422
    )
    assert api.put(f"/api/v1/users/{rep['id']}/password", json={"password": 5}).status_code == 422
    _, stranger = new_member(gate)
    assert (
        api.put(f"/api/v1/users/{stranger['id']}/password", json={"password": "x" * 20}).status_code
        == 404
    )


def test_the_quota_page_shows_what_sends_through_the_api_used(gate):
    org, user = new_member(gate)
    tag = uuid.uuid4().hex[:6]
    api = gate.api(user)
    lead = api.post("/api/v1/leads", json={"last_name": "佐藤", "email": f"l{tag}@client.example"})
    assert lead.status_code == 201, lead.text
    r = api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": lead.json()["id"]}],
            "subject": "見積",
            "text": "本文",
        },
    )
    assert r.status_code == 202, r.text
    quota = api.get("/api/v1/quota").json()["individual"]
    with chromium_browser() as browser:
        page = browser.new_page(locale="ja-JP")
        login_in_browser(page, gate, user)
        row = page.locator("tr[data-kind=individual]")
        assert row.locator("td.used").inner_text() == f"{quota['used']:,}"
        assert row.locator("td.limit").inner_text() == f"{quota['limit']:,}"
        assert page.locator("h1").inner_text() == "送信上限"
        page.click("a[lang=en]")
        page.wait_for_load_state()
        assert page.locator("h1").inner_text() == "Send quotas"
        page.goto(gate.http_url + "/")
        assert page.locator("h1").inner_text() == "Send quotas"


@pytest.mark.parametrize(
    "path",
    [
        "/campaigns/%C2%B2",  # "²": str.isdigit() says yes, int() refuses it
        "/campaigns/%EF%BC%91",  # a full-width "１"
        "/syncs/%C2%B2",
        "/syncs/99999999999999999999",
        "/emails/%C2%B2",
        "/emails/0",
        "/records/leads/%C2%B2",
    ],
)
def test_a_hostile_id_in_a_page_path_is_a_404_page_not_a_crash(gate, path):
    _, user = new_member(gate)
    r = login(gate, user).get(path)
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]


def test_hostile_numbers_in_queries_and_forms_are_refused_not_crashes(gate):
    _, user = new_member(gate)
    client = login(gate, user)
    assert client.get("/campaigns?campaigns_after=%C2%B2").status_code == 200  # ignored
    assert client.get("/analytics?user=%C2%B2").status_code == 400
    csrf = csrf_of(client.get("/").text)
    r = client.post("/attention/replay", data={"csrf": csrf, "id": "²", "confirm": "yes"})
    assert r.status_code == 404
    # A Content-Length of "²" (byte 0xB2, read as Latin-1) on the wire, as no client library
    # would send it: the form reader answers with a page, not a crash.
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(gate.http_url)
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            b"POST /logout HTTP/1.1\r\nHost: x\r\nCookie: "
            + cookie.encode()
            + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + b"Content-Length: \xb2\r\nConnection: close\r\n\r\n"
        )
        status_line = sock.recv(200).split(b"\r\n")[0]
    assert status_line.split()[1] in (b"400", b"413"), status_line
