"""A rep's BCC dropbox over HTTP (seed 004): the address, its vCard, regenerate, the five
allowed senders, and the two settings (what an unknown recipient becomes, which records
are searched), each proved through the running server's SMTP and HTTP."""

from __future__ import annotations

import smtplib
import uuid
from email.header import Header
from email.mime.text import MIMEText

import pytest


def _mail(frm: str, to: str, subject: str) -> bytes:
    msg = MIMEText("本文です", "plain", "utf-8")
    msg["From"], msg["To"] = frm, to
    msg["Subject"] = Header(subject, "utf-8")
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.jp>"
    return msg.as_bytes()


def rcpt(mailgate, mail_from: str, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as s:
        s.ehlo()
        s.mail(mail_from)
        code, _ = s.rcpt(address)
        s.rset()
    return code


def send(mailgate, frm: str, dropbox: str, to: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as s:
        s.sendmail(frm, [dropbox], _mail(frm, to, subject))
    mailgate.settle()


@pytest.fixture
def rep(mailgate):
    org = mailgate.org(f"Acme {uuid.uuid4().hex[:8]}", domains=["acme.co.jp"])
    boss = mailgate.user(org, "boss@acme.co.jp", "社長 一郎", admin=True)
    rep = mailgate.user(org, "taro@acme.co.jp", "山田, 太郎")
    return {"org": org, "user": rep, "api": mailgate.api(rep), "admin": mailgate.api(boss)}


def test_a_rep_reads_their_own_dropbox_address_and_settings(mailgate, rep):
    r = rep["api"].get("/api/v1/me/dropbox")
    assert r.status_code == 200
    assert r.json() == {
        "address": rep["user"]["dropbox_address"],
        "setting": "lead",
        "search": "both",
        "allowed_senders": [],
    }
    assert mailgate.api({"api_token": "mg_nope"}).get("/api/v1/me/dropbox").status_code == 401


def test_the_vcard_download_is_a_folded_crlf_vcard_any_address_book_reads(mailgate):
    org = mailgate.org(f"Acme {uuid.uuid4().hex[:8]}")
    # A long Japanese name with the characters vCard escapes: folding must not cut a kanji.
    name = "営業部長;山田,太郎\\" + "長い名前" * 10
    user = mailgate.user(org, "chief@acme.co.jp", name)
    r = mailgate.api(user).get("/api/v1/me/dropbox.vcf")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/vcard; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="mailgate-dropbox.vcf"'
    raw = r.content
    assert raw.endswith(b"END:VCARD\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
    physical = raw.split(b"\r\n")[:-1]
    assert all(len(line) <= 75 for line in physical), [len(x) for x in physical]
    assert any(line.startswith(b" ") for line in physical), "the long FN was not folded"
    for line in physical:
        line.decode("utf-8")  # every physical line is valid UTF-8 on its own: no cut character
    unfolded = raw.decode("utf-8").replace("\r\n ", "").split("\r\n")
    assert unfolded[:2] == ["BEGIN:VCARD", "VERSION:3.0"]
    fn = next(line for line in unfolded if line.startswith("FN:"))
    assert fn == "FN:営業部長\\;山田\\,太郎\\\\" + "長い名前" * 10 + " (mailgate dropbox)"
    assert f"EMAIL;TYPE=INTERNET:{user['dropbox_address']}" in unfolded


def test_regenerate_gives_a_new_address_and_the_old_one_is_refused_over_smtp(mailgate, rep):
    old = rep["user"]["dropbox_address"]
    assert rcpt(mailgate, "taro@acme.co.jp", old) == 250  # now cached by the receiver
    r = rep["api"].post("/api/v1/me/dropbox/regenerate")
    assert r.status_code == 200, r.text
    new = r.json()["address"]
    assert new != old and new.endswith("@mailgate.test")
    assert rep["api"].get("/api/v1/me/dropbox").json()["address"] == new
    assert rcpt(mailgate, "taro@acme.co.jp", old) == 550
    assert rcpt(mailgate, "taro@acme.co.jp", new) == 250


def test_allowed_senders_are_set_over_http_at_most_five(mailgate, rep):
    api, dropbox = rep["api"], rep["user"]["dropbox_address"]
    assert rcpt(mailgate, "me@home.example.jp", dropbox) == 550
    r = api.put("/api/v1/me/dropbox/senders", json={"senders": ["Me@Home.Example.JP"]})
    assert r.status_code == 200, r.text
    assert r.json()["allowed_senders"] == ["me@home.example.jp"]
    assert rcpt(mailgate, "me@home.example.jp", dropbox) == 250

    six = [f"s{i}@home.example.jp" for i in range(6)]
    r = api.put("/api/v1/me/dropbox/senders", json={"senders": six})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_senders"
    # Their own address is not one of the five; duplicates count once.
    five = [*six[:5], "taro@acme.co.jp", "S0@home.example.jp"]
    assert api.put("/api/v1/me/dropbox/senders", json={"senders": five}).status_code == 200
    assert api.get("/api/v1/me/dropbox").json()["allowed_senders"] == six[:5]
    # The earlier sender was removed: refused at once, though the receiver had accepted it.
    assert rcpt(mailgate, "me@home.example.jp", dropbox) == 550

    for bad in ({"senders": "a@b.jp"}, {"senders": ["not an address"]}, {"senders": [1]}, {}):
        r = api.put("/api/v1/me/dropbox/senders", json=bad)
        assert r.status_code == 422, (bad, r.text)


def test_bad_dropbox_settings_are_refused_clearly(mailgate, rep):
    api = rep["api"]
    for body, says in (
        ({"setting": "deal"}, "setting must be one of lead, contact, none"),
        ({"search": "deals"}, "search must be one of leads, contacts, both"),
        ({"search": None, "setting": 3}, "setting must be one of"),
        ({"address": "x"}, "unknown field"),
    ):
        r = api.patch("/api/v1/me/dropbox", json=body)
        assert r.status_code == 422, r.text
        assert says in r.json()["error"]["message"]
    assert api.get("/api/v1/me/dropbox").json()["setting"] == "lead"


def test_searching_contacts_only_does_not_link_a_lead_and_creates_a_contact(mailgate, rep):
    api = rep["api"]
    lead = api.post(
        "/api/v1/leads", json={"last_name": "見込", "email": "prospect@customer.example.jp"}
    ).json()
    r = api.patch("/api/v1/me/dropbox", json={"search": "contacts", "setting": "contact"})
    assert r.status_code == 200 and r.json()["search"] == "contacts"
    dropbox = rep["user"]["dropbox_address"]
    send(mailgate, "taro@acme.co.jp", dropbox, "prospect@customer.example.jp", "連絡先のみ")

    assert api.get(f"/api/v1/leads/{lead['id']}/emails").json()["items"] == []
    contacts = api.get("/api/v1/contacts", params={"email": "prospect@customer.example.jp"})
    [contact] = contacts.json()["items"]
    filed = api.get(f"/api/v1/contacts/{contact['id']}/emails").json()["items"]
    assert [m["subject"] for m in filed] == ["連絡先のみ"]

    # Back to both: the lead (and the new contact) are found, nothing new is created.
    api.patch("/api/v1/me/dropbox", json={"search": "both"})
    send(mailgate, "taro@acme.co.jp", dropbox, "prospect@customer.example.jp", "両方")
    assert [
        m["subject"] for m in api.get(f"/api/v1/leads/{lead['id']}/emails").json()["items"]
    ] == ["両方"]
    again = api.get("/api/v1/contacts", params={"email": "prospect@customer.example.jp"})
    assert len(again.json()["items"]) == 1


def test_setting_none_files_mail_without_creating_records(mailgate, rep):
    api = rep["api"]
    assert api.patch("/api/v1/me/dropbox", json={"setting": "none"}).status_code == 200
    send(
        mailgate,
        "taro@acme.co.jp",
        rep["user"]["dropbox_address"],
        "stranger@unknown.example.jp",
        "誰でもない",
    )
    for module in ("leads", "contacts"):
        found = api.get(f"/api/v1/{module}", params={"email": "stranger@unknown.example.jp"})
        assert found.json()["items"] == []


def test_an_admin_changes_a_reps_dropbox_settings_a_rep_cannot_change_anothers(mailgate, rep):
    rid = rep["user"]["id"]
    r = rep["admin"].patch(f"/api/v1/users/{rid}/dropbox", json={"search": "leads"})
    assert r.status_code == 200 and r.json() == {
        "user_id": rid,
        "setting": "lead",
        "search": "leads",
    }
    assert rep["api"].get("/api/v1/me/dropbox").json()["search"] == "leads"
    r = rep["api"].patch(f"/api/v1/users/{rid}/dropbox", json={"search": "both"})
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/api/v1/me/dropbox", '{"setting": %s}'),
        ("PATCH", "/api/v1/users/{rid}/dropbox", '{"search": %s}'),
        ("PUT", "/api/v1/me/dropbox/senders", '{"senders": [%s]}'),
    ],
)
@pytest.mark.parametrize("value", ['"\\ud800"', '"a\\u0000b"', str(2**63)])
def test_hostile_json_on_the_dropbox_endpoints_is_a_4xx(mailgate, rep, method, path, body, value):
    api = rep["admin"] if "users" in path else rep["api"]
    r = api.request(method, path.format(rid=rep["user"]["id"]), content=body % value)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] == "invalid_field"
    assert rep["api"].get("/api/v1/me/dropbox").json()["setting"] == "lead"


@pytest.mark.parametrize("big", [str(2**63), "1" + "0" * 30])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/users/{id}/deactivate"),
        ("POST", "/api/v1/users/{id}/activate"),
        ("PATCH", "/api/v1/users/{id}/dropbox"),
    ],
)
def test_a_user_id_beyond_64_bits_is_a_404(mailgate, rep, method, path, big):
    r = rep["admin"].request(method, path.format(id=big), content="{}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
