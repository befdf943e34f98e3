"""The BCC dropbox over real SMTP: what gets filed, refused, deduplicated, decoded."""

from __future__ import annotations

import shutil
import smtplib
import subprocess
import threading
import uuid
from email.header import Header
from email.mime.text import MIMEText
from email.utils import formataddr

import httpx
import pytest

from tests.support.server import wait_until


@pytest.fixture(scope="module")
def org(mailgate):
    org = mailgate.org(f"Acme {uuid.uuid4().hex[:6]}", domains=["acme.co.jp"])
    user = mailgate.user(org, "taro@acme.co.jp", "山田 太郎")
    api = mailgate.api(user)
    return {"org": org, "user": user, "api": api, "dropbox": user["dropbox_address"]}


def message(
    *,
    frm="taro@acme.co.jp",
    to=(),
    cc=(),
    subject="ご提案の件",
    body="本文です",
    msgid=None,
    charset="utf-8",
) -> bytes:
    msg = MIMEText(body, "plain", charset)
    msg["From"] = frm
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = Header(subject, charset)
    msg["Message-ID"] = msgid or f"<{uuid.uuid4().hex}@acme.co.jp>"
    return msg.as_bytes()


def send(mailgate, raw: bytes, rcpt: str, mail_from: str = "taro@acme.co.jp") -> dict:
    """Deliver over SMTP and wait until it is filed (the 250 comes before filing)."""
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as s:
        refused = s.sendmail(mail_from, [rcpt], raw)
    mailgate.settle()
    return refused


def emails(api, module: str, rid: int) -> list[dict]:
    r = api.get(f"/api/v1/{module}/{rid}/emails")
    assert r.status_code == 200, r.text
    return r.json()["items"]


def lead(api, **fields) -> dict:
    r = api.post("/api/v1/leads", json=fields)
    assert r.status_code == 201, r.text
    return r.json()


def test_mail_is_filed_against_every_matching_lead_and_contact(mailgate, org):
    api = org["api"]
    l1 = lead(api, last_name="佐藤", first_name="花子", email="hanako@customer.example.jp")
    acct = api.post("/api/v1/accounts", json={"name": "顧客商事"}).json()
    c1 = api.post(
        "/api/v1/contacts",
        json={"last_name": "鈴木", "email": "ichiro@customer.example.jp", "account_id": acct["id"]},
    ).json()
    deal = api.post(
        "/api/v1/deals",
        json={
            "name": "大型案件",
            "account_id": acct["id"],
            "contact_id": c1["id"],
            "stage": "proposal",
            "amount": 1200000,
        },
    ).json()
    to = [formataddr((str(Header("佐藤 花子", "utf-8")), "Hanako@CUSTOMER.example.jp"))]
    raw = message(to=to, cc=["ICHIRO@customer.example.jp"], subject="お見積りの件")
    assert send(mailgate, raw, org["dropbox"]) == {}

    got = emails(api, "leads", l1["id"])
    assert [e["subject"] for e in got] == ["お見積りの件"]
    assert got[0]["direction"] == "outgoing" and got[0]["source"] == "dropbox"
    assert got[0]["from"] == "taro@acme.co.jp"
    assert "hanako@customer.example.jp" in got[0]["to"]
    assert [e["subject"] for e in emails(api, "contacts", c1["id"])] == ["お見積りの件"]
    # Dropbox mail is filed on leads and contacts; a deal lists only mail filed on the deal.
    assert emails(api, "deals", deal["id"]) == []


def test_unknown_recipients_become_leads_but_never_colleagues_or_role_addresses(mailgate, org):
    api = org["api"]
    raw = message(
        to=[
            formataddr((str(Header("高橋 健", "utf-8")), "ken.takahashi@prospect.example.com")),
            "info@prospect.example.com",
            "noreply@prospect.example.com",
        ],
        cc=["boss@acme.co.jp", "someone@sub.acme.co.jp"],
    )
    assert send(mailgate, raw, org["dropbox"]) == {}
    found = api.get("/api/v1/leads", params={"email": "ken.takahashi@prospect.example.com"}).json()[
        "items"
    ]
    assert len(found) == 1
    assert (found[0]["last_name"], found[0]["first_name"]) == ("高橋", "健")
    for address in (
        "info@prospect.example.com",
        "noreply@prospect.example.com",
        "boss@acme.co.jp",
        "someone@sub.acme.co.jp",
    ):
        assert api.get("/api/v1/leads", params={"email": address}).json()["items"] == []
        assert api.get("/api/v1/contacts", params={"email": address}).json()["items"] == []
    assert len(emails(api, "leads", found[0]["id"])) == 1


@pytest.mark.parametrize("setting,module", [("contact", "contacts"), ("none", None)])
def test_dropbox_setting_decides_what_an_unknown_recipient_becomes(mailgate, org, setting, module):
    user = mailgate.user(org["org"], f"rep-{setting}@acme.co.jp", "Rep", dropbox_setting=setting)
    api = mailgate.api(user)
    address = f"new-{setting}-{uuid.uuid4().hex[:6]}@prospect.example.com"
    assert (
        send(
            mailgate,
            message(frm=user["email"], to=[address]),
            user["dropbox_address"],
            mail_from=user["email"],
        )
        == {}
    )
    wait_until(
        lambda: any(
            e["type"] == "email.filed" and e["data"]["user_id"] == user["id"]
            for e in api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
        )
    )
    leads = api.get("/api/v1/leads", params={"email": address}).json()["items"]
    contacts = api.get("/api/v1/contacts", params={"email": address}).json()["items"]
    assert leads == []
    assert len(contacts) == (1 if module == "contacts" else 0)


def test_envelope_sender_not_allowed_is_refused_at_rcpt(mailgate, org):
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port) as s:
        s.ehlo_or_helo_if_needed()
        s.mail("stranger@evil.example")
        code, text = s.rcpt(org["dropbox"])
    assert code == 550 and text.startswith(b"5.7.1")


def test_forged_envelope_alone_cannot_file_mail(mailgate, org):
    api = org["api"]
    target = lead(api, last_name="標的", email=f"target-{uuid.uuid4().hex[:6]}@victim.example")
    raw = message(frm="attacker@evil.example", to=[target["email"]])
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(mailgate, raw, org["dropbox"], mail_from="taro@acme.co.jp")
    assert exc.value.smtp_code == 550 and b"5.7.1" in exc.value.smtp_error
    assert emails(api, "leads", target["id"]) == []


def test_allowed_extra_sender_may_file(mailgate, org):
    from gateway.org import admin

    mailgate.call(
        admin.senders(mailgate.db, str(org["user"]["id"]), "add", "taro.private@gmail.example")
    )
    target = lead(org["api"], last_name="追加", email=f"x-{uuid.uuid4().hex[:6]}@client.example")
    raw = message(frm="Taro <Taro.Private@GMAIL.example>", to=[target["email"]])
    assert send(mailgate, raw, org["dropbox"], mail_from="taro.private@gmail.example") == {}
    assert len(emails(org["api"], "leads", target["id"])) == 1


def test_unknown_recipient_is_refused_with_551(mailgate, org):
    for rcpt in (
        "nobody@mailgate.test",
        "dropbox-doesnotexist@mailgate.test",
        "someone@elsewhere.example",
    ):
        with smtplib.SMTP("127.0.0.1", mailgate.smtp_port) as s:
            s.ehlo_or_helo_if_needed()
            s.mail("taro@acme.co.jp")
            code, text = s.rcpt(rcpt)
        assert code == 550 and text.startswith(b"5.1.1"), (rcpt, code, text)


def test_regenerated_dropbox_address_stops_working_at_once(mailgate, org):
    from gateway.org import admin

    user = mailgate.user(org["org"], f"regen-{uuid.uuid4().hex[:6]}@acme.co.jp", "Regen")
    old = user["dropbox_address"]
    new = mailgate.call(
        admin.dropbox(mailgate.db, str(user["id"]), regenerate=True, mail_domain="mailgate.test")
    )["dropbox_address"]
    assert new != old
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port) as s:
        s.ehlo_or_helo_if_needed()
        s.mail(user["email"])
        assert s.rcpt(old)[0] == 550
        s.rset()
        s.ehlo_or_helo_if_needed()
        s.mail(user["email"])
        assert s.rcpt(new)[0] == 250


def test_regenerated_address_is_refused_even_right_after_it_was_used(mailgate, org):
    """RCPT may be answered from a few seconds' cache, so the 250 may still come; the
    ingest runner re-checks the token, files nothing, and parks the mail as refused
    with the reason, for an operator to see (``mailgate inbound list --state refused``)."""
    from gateway.org import admin
    from storage import inbound_store

    user = mailgate.user(org["org"], f"hot-{uuid.uuid4().hex[:6]}@acme.co.jp", "Hot")
    api = mailgate.api(user)
    target = lead(api, last_name="直後", email=f"hot-{uuid.uuid4().hex[:6]}@client.example")
    assert (
        send(
            mailgate,
            message(frm=user["email"], to=[target["email"]]),
            user["dropbox_address"],
            mail_from=user["email"],
        )
        == {}
    )
    mailgate.call(
        admin.dropbox(mailgate.db, str(user["id"]), regenerate=True, mail_domain="mailgate.test")
    )
    try:
        send(
            mailgate,
            message(frm=user["email"], to=[target["email"]], subject="after regenerating"),
            user["dropbox_address"],
            mail_from=user["email"],
        )
    except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused) as exc:
        assert b"5.1.1" in str(exc).encode()  # the cache had expired: refused at once
    else:
        refused = mailgate.call(mailgate.db.run_read(inbound_store.list_state, "refused", 100))
        mine = [r for r in refused if r["user_id"] == user["id"]]
        assert len(mine) == 1
        assert (mine[0]["failed_stage"], mine[0]["last_error"]) == (
            "authorise",
            "the dropbox address was regenerated",
        )
    assert len(emails(api, "leads", target["id"])) == 1


def test_same_message_twice_is_filed_once(mailgate, org):
    api = org["api"]
    target = lead(api, last_name="重複", email=f"dup-{uuid.uuid4().hex[:6]}@client.example")
    raw = message(to=[target["email"]])
    send(mailgate, raw, org["dropbox"])
    send(mailgate, raw.replace(b"\n", b"\r\n"), org["dropbox"])  # same Message-ID, other bytes
    no_id = message(to=[target["email"]]).replace(b"Message-ID:", b"X-Old-ID:")
    send(mailgate, no_id, org["dropbox"])
    send(mailgate, no_id, org["dropbox"])  # same bytes, no Message-ID
    assert len(emails(api, "leads", target["id"])) == 2


def test_oversized_message_is_refused_with_552(mailgate, org):
    raw = message(to=["a@client.example"], body="x" * (3 * 1024 * 1024))
    with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPSenderRefused)) as exc:
        send(mailgate, raw, org["dropbox"])
    assert exc.value.smtp_code == 552 and b"5.3.4" in exc.value.smtp_error


def test_japanese_encodings_decode_to_unicode(mailgate, org):
    api = org["api"]
    target = lead(api, last_name="日本", email=f"jp-{uuid.uuid4().hex[:6]}@client.example")
    for charset in ("iso-2022-jp", "shift_jis", "utf-8"):
        raw = message(
            to=[target["email"]],
            subject=f"【{charset}】お打ち合わせの御礼",
            body="先日はありがとうございました。",
            charset=charset,
        )
        assert send(mailgate, raw, org["dropbox"]) == {}
    subjects = sorted(e["subject"] for e in emails(api, "leads", target["id"]))
    assert subjects == sorted(
        f"【{c}】お打ち合わせの御礼" for c in ("iso-2022-jp", "shift_jis", "utf-8")
    )


HOSTILE = {
    "bare_lf_cr_nul": b"From: taro@acme.co.jp\nTo: {to}\nSubject: bare\x00 endings\r\n\nbody\x00with NUL\rand CR\n\r\n",
    "empty_message_id": b"From: taro@acme.co.jp\r\nTo: {to}\r\nMessage-Id: <>\r\nSubject: empty id\r\n\r\nx\r\n",
    "unknown_charset": (
        b"From: taro@acme.co.jp\r\nTo: {to}\r\nSubject: =?x-klingon?B?5pel5pys?=\r\n"
        b"Content-Type: text/plain; charset=x-klingon\r\n\r\n\xe6\x97\xa5\xe6\x9c\xac\r\n"
    ),
    "broken_mime": (
        b"From: taro@acme.co.jp\r\nTo: {to}\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="nope\r\n\r\n--nope\r\nContent-Type: text/html;'
        b" charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n"
    ),
    "huge_header": b"From: taro@acme.co.jp\r\nTo: {to}\r\nX-Junk: "
    + b"a" * 900
    + b"\r\n a" * 50_000
    + b"\r\nSubject: huge\r\n\r\nx\r\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_is_filed_or_refused_never_crashes(mailgate, org, name):
    api = org["api"]
    target = lead(api, last_name="敵対", email=f"h-{uuid.uuid4().hex[:6]}@client.example")
    raw = HOSTILE[name].replace(b"{to}", target["email"].encode())
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as s:
        s.ehlo_or_helo_if_needed()
        s.mail("taro@acme.co.jp")
        assert s.rcpt(org["dropbox"])[0] == 250
        s.putcmd("data")
        assert s.getreply()[0] == 354
        s.send(
            raw.replace(b"\r\n.", b"\r\n..") + (b"" if raw.endswith(b"\n") else b"\r\n") + b".\r\n"
        )
        code, _ = s.getreply()
    assert code == 250
    mailgate.settle()
    assert len(emails(api, "leads", target["id"])) == 1
    # the receiver still answers normally afterwards
    assert send(mailgate, message(to=["after@client.example"]), org["dropbox"]) == {}


def test_a_48_kb_line_is_accepted_and_filed(mailgate, org):
    """Real MTAs relay such lines (one-line HTML newsletters); refusing them lost mail."""
    api = org["api"]
    target = lead(api, last_name="長行", email=f"long-{uuid.uuid4().hex[:6]}@client.example")
    line = b"<p>" + b"x" * 48_000 + b"</p>"
    raw = (
        b"From: taro@acme.co.jp\r\nTo: " + target["email"].encode() + b"\r\nSubject: long line\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n" + line + b"\r\n"
    )
    assert send(mailgate, raw, org["dropbox"]) == {}
    assert [e["subject"] for e in emails(api, "leads", target["id"])] == ["long line"]


def test_a_line_over_a_mebibyte_is_refused_with_a_clear_reply(mailgate, org):
    raw = b"From: taro@acme.co.jp\r\nSubject: long\r\n\r\n" + b"x" * (1024 * 1024 + 10) + b"\r\n"
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(mailgate, raw, org["dropbox"])
    assert exc.value.smtp_code == 500 and b"too long" in exc.value.smtp_error.lower()
    assert send(mailgate, message(to=["after-long@client.example"]), org["dropbox"]) == {}


def test_twenty_parallel_sessions_lose_nothing_and_file_nothing_twice(mailgate, org):
    api = org["api"]
    target = lead(api, last_name="並行", email=f"par-{uuid.uuid4().hex[:6]}@client.example")
    shared = message(to=[target["email"]], subject="shared")  # every session sends this one too
    errors: list[Exception] = []

    def session(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=60) as s:
                for i in range(5):
                    s.sendmail(
                        "taro@acme.co.jp",
                        [org["dropbox"]],
                        message(to=[target["email"]], subject=f"s{n}-{i}"),
                    )
                s.sendmail("taro@acme.co.jp", [org["dropbox"]], shared)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    mailgate.settle()
    subjects = [
        e["subject"]
        for e in api.get(f"/api/v1/leads/{target['id']}/emails", params={"limit": 500}).json()[
            "items"
        ]
    ]
    assert len(subjects) == 101
    assert sorted(subjects) == sorted(
        {f"s{n}-{i}" for n in range(20) for i in range(5)} | {"shared"}
    )


def test_swaks_delivers_to_the_dropbox(mailgate, org):
    swaks = shutil.which("swaks")
    if not swaks:
        pytest.skip("swaks is not installed (Debian package swaks)")
    target = lead(
        org["api"], last_name="スワックス", email=f"sw-{uuid.uuid4().hex[:6]}@client.example"
    )
    out = subprocess.run(
        [
            swaks,
            "--server",
            "127.0.0.1",
            "--port",
            str(mailgate.smtp_port),
            "--from",
            "taro@acme.co.jp",
            "--to",
            org["dropbox"],
            "--h-From",
            "taro@acme.co.jp",
            "--h-To",
            target["email"],
            "--h-Subject",
            "=?UTF-8?B?44K544Ov44OD44Kv44K544Gn6YCB5L+h?=",
            "--body",
            "hello",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0" in out.stdout
    mailgate.settle()
    assert [e["subject"] for e in emails(org["api"], "leads", target["id"])] == ["スワックスで送信"]


def test_replies_and_filing_outcomes_are_counted_in_metrics(mailgate, org):
    target = lead(org["api"], last_name="計測", email=f"m-{uuid.uuid4().hex[:6]}@client.example")
    assert send(mailgate, message(to=[target["email"]]), org["dropbox"]) == {}
    text = httpx.get(f"{mailgate.http_url}/metrics", timeout=30).text
    assert 'mailgate_smtp_messages_total{reply="250"}' in text
    assert 'mailgate_filed_messages_total{outcome="filed"}' in text
