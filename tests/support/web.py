"""Logging in to the dashboard from a test: over HTTP (httpx) or in headless Chromium."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from gateway.org import admin
from tests.support.server import MailgateServer

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def with_password(server: MailgateServer, user: dict[str, Any], password: str = PASSWORD) -> None:
    server.call(admin.set_password(server.db, None, str(user["id"]), password))


def new_member(
    server: MailgateServer, *, admin_user: bool = True, org: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fresh org (or ``org``) and a user of it with a dashboard password."""
    tag = uuid.uuid4().hex[:8]
    org = org or server.org(f"web-{tag}", domains=[f"{tag}.example.co.jp"])
    user = server.user(org, f"rep-{tag}@{tag}.example.co.jp", "山田 太郎", admin=admin_user)
    with_password(server, user)
    return org, user


def browser_session(server: MailgateServer, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=server.http_url, timeout=30, headers=headers)


def login(
    server: MailgateServer, user: dict[str, Any], password: str = PASSWORD, **headers: str
) -> httpx.Client:
    """An httpx client holding a dashboard session cookie, as a browser would."""
    client = browser_session(server, **headers)
    form = client.get("/login")
    r = client.post(
        "/login",
        data={"csrf": csrf_of(form.text), "email": user["email"], "password": password},
    )
    assert r.status_code == 303, r.text
    return client


def login_in_browser(page: Any, server: MailgateServer, user: dict[str, Any]) -> None:
    """Log in through the real form in a Playwright page."""
    page.goto(server.http_url + "/login")
    page.fill("input[name=email]", user["email"])
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(server.http_url + "/")
