"""A reply sent from the CRM lands in the same thread, as a real IMAP client sees it.

An original message is put into a real Dovecot mailbox and filed by the IMAP
poller; the rep answers it through ``POST /api/v1/emails`` with
``in_reply_to``; the bytes the relay received are appended to the same
Dovecot mailbox, and Dovecot's own ``THREAD REFERENCES`` shows one thread of
two.  The reply is filed on the original's records, and only mail the sender
may see can be answered.
"""

from __future__ import annotations

import imaplib
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from sqlalchemy import select

from storage.schema import message_links, messages
from tests.support import smtp_sink
from tests.support.dovecot import start_or_skip
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.send_peer import delivered, filed_copy, parsed, record, relayed, send_state
from tests.support.server import wait_until

LOGINS = [f"thread{i}" for i in range(4)]


@pytest.fixture(scope="module")
def dovecot():
    server = start_or_skip()
    server.add_users({login: "pw" for login in LOGINS})
    server.unused = list(LOGINS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relay():
    port = smtp_sink.free_port()
    with ScriptedRelay(port, Script()) as script:
        script.port = port
        yield script


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay):
    srv = relayed(database_url, tmp_path_factory.mktemp("data"), relay.port)
    srv.start({"smtp", "http", "worker", "imap"})
    yield srv
    srv.stop()


def one(server, query):
    async def go():
        async with server.db.connect() as conn:
            return [tuple(r) for r in (await conn.execute(query)).all()]

    return server.call(go())


def original(tag: str, lead: str, contact: str, rep: str) -> bytes:
    return (
        f"From: 鈴木 <{lead}>\nTo: {rep}\nCc: {contact}\n"
        f"Message-ID: <orig-{tag}@customer.example.com>\n"
        f"References: <root-{tag}@customer.example.com>\n"
        f"In-Reply-To: <root-{tag}@customer.example.com>\n"
        "Subject: =?UTF-8?B?UkU6IOOBlOaPkOahiOOBruS7tg==?=\n"  # "RE: ご提案の件"
        f"Date: {format_datetime(datetime.now(UTC))}\nMIME-Version: 1.0\n"
        'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: 8bit\n\n'
        "ご提案ありがとうございます。価格について教えてください。\n"
    ).encode()


def threads(dovecot, login: str) -> list[bytes]:
    imap = imaplib.IMAP4(dovecot.host, dovecot.port)
    try:
        imap.login(login, "pw")
        imap.select("INBOX")
        typ, data = imap.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
        assert typ == "OK", data
        return data
    finally:
        imap.logout()


def test_a_reply_lands_in_the_thread_in_dovecot_and_is_filed_on_the_originals_records(
    server, relay, dovecot
):
    tag = uuid.uuid4().hex[:8]
    org = server.org(f"返信 {tag}", domains=[f"{tag}.example.jp"])
    rep_address = f"rep@{tag}.example.jp"
    rep = server.user(org, rep_address, "佐藤 花子", admin=True)
    api = server.api(rep)
    lead_email, contact_email = f"lead-{tag}@customer.example.com", f"cc-{tag}@customer.example.com"
    lead = record(api, "leads", last_name="鈴木", email=lead_email)
    contact = record(api, "contacts", last_name="高橋", email=contact_email)
    login = dovecot.unused.pop()
    dovecot.seed(login, "INBOX", [original(tag, lead_email, contact_email, rep_address)])
    body = {
        "host": dovecot.host,
        "port": dovecot.port,
        "login": login,
        "password": "pw",
        "security": "none",
    }
    assert api.post("/api/v1/mailboxes", json=body).status_code == 201
    items = wait_until(
        lambda: api.get(f"/api/v1/leads/{lead}/emails").json()["items"], timeout=30, interval=0.2
    )
    [filed] = items
    assert filed["source"] == "imap" and filed["direction"] == "incoming"

    r = api.post(
        "/api/v1/emails",
        json={
            # The customer asked us to answer their manager: the reply goes to the contact
            # and is also filed where the original is (the lead).
            "to": [{"module": "contacts", "id": contact}],
            "in_reply_to": filed["id"],
            "html": "<p>高橋様</p><p>価格表をお送りします。</p>",
        },
    )
    assert r.status_code == 202, r.text
    send = r.json()["sends"][0]
    _, raw = delivered(relay, send)
    msg = parsed(raw)
    assert msg["Subject"] == "Re: ご提案の件"  # "RE: " taken off, not stacked
    assert msg["In-Reply-To"] == f"<orig-{tag}@customer.example.com>"
    assert msg["References"].split() == [
        f"<root-{tag}@customer.example.com>",
        f"<orig-{tag}@customer.example.com>",
    ]
    assert send_state(api, send["id"])["in_reply_to"] == filed["id"]

    dovecot.append(login, "INBOX", raw.replace(b"\r\n", b"\n"))
    data = threads(dovecot, login)
    assert len(data) == 1 and data[0].count(b"(") == 1, data  # one thread …
    assert sorted(int(u) for u in data[0].strip(b"()").split()) == [1, 2]  # … of both messages

    # Filed on its To record and where the original is (the lead); threaded in the database.
    copy = filed_copy(api, "contacts", contact, send["id"])
    assert filed_copy(api, "leads", lead, send["id"])["id"] == copy["id"]
    links = one(server, select(message_links.c.module, message_links.c.record_id).where(
        message_links.c.message_id == copy["id"]))  # fmt: skip
    assert sorted(links) == [("contacts", contact), ("leads", lead)]
    [(in_reply_to, references)] = one(
        server,
        select(messages.c.in_reply_to, messages.c.references).where(messages.c.id == copy["id"]),
    )
    assert in_reply_to == f"orig-{tag}@customer.example.com"
    assert references == [f"root-{tag}@customer.example.com", f"orig-{tag}@customer.example.com"]

    # A subject given by the caller wins over "Re: …"; the thread headers stay.  A CC
    # named as a record is filed on too.
    r = api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": lead}],
            "cc": [{"module": "contacts", "id": contact}],
            "in_reply_to": filed["id"],
            "subject": "価格表の件",
            "text": "追記です。",
        },
    )
    assert r.status_code == 202, r.text
    second = r.json()["sends"][0]
    rcpts, raw = delivered(relay, second)
    assert rcpts == [lead_email, contact_email]
    assert parsed(raw)["Subject"] == "価格表の件"
    assert parsed(raw)["In-Reply-To"] == f"<orig-{tag}@customer.example.com>"
    assert filed_copy(api, "contacts", contact, second["id"])["cc"] == [contact_email]

    # Only mail the sender may see can be answered: another org's is absent, and so is a
    # private colleague's mailbox mail.
    stranger = server.api(server.user(server.org(f"他社 {tag}"), f"x@{tag}.other.jp"))
    other_lead = record(stranger, "leads", last_name="他", email=lead_email)
    r = stranger.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": other_lead}],
            "in_reply_to": filed["id"],
            "text": "x",
        },
    )
    assert r.status_code == 404, r.text
    assert "ご提案" not in r.text
    colleague = server.api(server.user(org, f"peer@{tag}.example.jp", "同僚 次郎"))
    assert (
        api.put(f"/api/v1/users/{rep['id']}/sharing", json={"mode": "private"}).status_code == 200
    )
    r = colleague.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead}], "in_reply_to": filed["id"], "text": "x"},
    )
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    ("original", "reply"),
    [
        ("ご提案の件", "Re: ご提案の件"),
        ("Re: ご提案の件", "Re: ご提案の件"),
        ("RE: Re: ご提案の件", "Re: ご提案の件"),
        ("Re：ご提案の件", "Re: ご提案の件"),  # a full-width colon
        ("Ｒｅ：ご提案の件", "Re: ご提案の件"),  # full-width letters
        ("Re[2]: お見積り", "Re: お見積り"),
        ("AW: Re: Angebot", "Re: Angebot"),
        ("返信: 打ち合わせ", "Re: 打ち合わせ"),
        ("Reminder: 納期", "Re: Reminder: 納期"),  # a word starting with "Re" is no prefix
        ("Fwd: 資料", "Re: Fwd: 資料"),
        ("", "Re:"),
        ("Re: 件名\r\nBcc: evil@example.com", "Re: 件名 Bcc: evil@example.com"),
    ],
)
def test_reply_subjects_never_stack_prefixes(original, reply):
    from gateway.sending.extras import reply_subject

    assert reply_subject(original) == reply


def test_references_keep_the_root_and_the_latest_and_drop_ids_a_header_cannot_carry():
    from gateway.sending.extras import MAX_REFERENCES, thread_references

    refs = [f"m{i}@x.jp" for i in range(40)]
    out = thread_references(refs, "parent@x.jp")
    assert len(out) == MAX_REFERENCES
    assert out[0] == "m0@x.jp" and out[-1] == "parent@x.jp" and out[-2] == "m39@x.jp"
    hostile = ["a b@x.jp", "<c@x.jp>", "日本@x.jp", "no-at-sign", "ok@x.jp", "ok@x.jp"]
    assert thread_references(hostile, None) == ["ok@x.jp"]
