"""A real headless Chromium reads a tracked message: one open, one click — exactly.

The message HTML (rendered by :func:`tracking.prepare.prepare_html`, as the
composer does) is served from a local page, the way a webmail shows it; the
browser loads the pixel from mailgate and the recipient clicks a link, which
must land on the original page.  The browser runs with an ordinary Chrome
user agent: Chromium's default headless agent says ``HeadlessChrome``, which
the verdict rules rightly call a machine.
"""

from __future__ import annotations

import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.browser import chromium_browser
from tests.support.sends import events_of, flush, hits_of, make_send, send_row

CHROME_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


@pytest.fixture
def chromium():
    """Per test (~0.3 s): Playwright's sync API holds an event loop while it runs,
    which would stop the next engine's database fixture from setting up."""
    with chromium_browser() as browser:
        yield browser


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.pages.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webmail():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_browser_opening_and_clicking_counts_one_human_open_and_one_click(
    mailgate, chromium, webmail
):
    pages, base = webmail
    tracking = mailgate.running.services.tracking
    # The test server listens on an ephemeral port: point the links at it.
    judge = mailgate.running.services.runner("verdicts")
    tracking.public_url = judge.public_url = mailgate.http_url
    org = mailgate.org(f"browser-{secrets.token_hex(3)}")
    user = mailgate.user(org, f"b{secrets.token_hex(3)}@example.co.jp")
    html = (
        "<html><body><p>山田様、新商品のご案内です。</p>"
        f'<p><a id="go" href="{base}/landing?item=7&amp;utm=mail">詳しく見る</a></p>'
        f'<p><a id="other" href="{base}/other">その他</a></p>'
        '<p><a href="mailto:sales@example.co.jp">お問い合わせ</a></p>'
        "</body></html>"
    )
    send = make_send(mailgate, org, user, html=html, public_url=mailgate.http_url)
    _Pages.pages = {
        "/message": send["html"],
        "/landing?item=7&utm=mail": "<html><body><h1>landed</h1></body></html>",
    }

    context = chromium.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    try:
        with page.expect_response(lambda r: "/t/o/" in r.url) as pixel:
            page.goto(f"{base}/message")
        assert pixel.value.status == 200
        assert page.evaluate("document.images[0].naturalWidth") == 1
        page.click("#go")
        page.wait_for_url(f"{base}/landing?item=7&utm=mail")
        assert page.inner_text("h1") == "landed"
    finally:
        context.close()

    flush(mailgate)
    hits = hits_of(mailgate, send["id"])
    assert [(h["kind"], h["link_index"], h["verdict"]) for h in hits] == [
        ("open", None, "human"),
        ("click", 0, "human"),
    ]
    assert "HeadlessChrome" not in hits[0]["user_agent"]
    events = [(e["type"], e["data"]["verdict"]) for e in events_of(mailgate, org["id"])]
    assert events == [("email.opened", "human"), ("email.clicked", "human")]
    row = send_row(mailgate, send["id"])
    assert row["status"] == "clicked"
    report = mailgate.api(user).get("/api/v1/reports/emails").json()
    [total] = report["totals"]
    assert (total["sent"], total["opened"]["n"], total["clicked"]["n"]) == (1, 1, 1)
