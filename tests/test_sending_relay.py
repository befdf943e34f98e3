"""Outbound mail through a real relay (Postfix's smtp-sink) over a socket.

What arrives at the relay is checked where it matters: the VERP envelope
sender, the Japanese subject as UTF-8 encoded words, an unfolded
List-Unsubscribe with one-click, our send header, and a DKIM signature that
dkimpy verifies.  Relay refusals: 4xx is retried and delivered; a 5xx about
the recipient fails the send as a bounce, hard (suppressed) or soft by the
bounce policy; a 5xx about us (greeting, AUTH, MAIL FROM) suppresses nobody,
raises ``relay.refused`` and waits for the operator; a relay that is down gets
the mail once it is up — also across a restart of mailgate.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import smtplib
import uuid
from email.header import decode_header, make_header
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from gateway.bounces.verp import verp_token
from gateway.sending.outcomes import Delivery, Stage, Verdict
from storage import sends as send_store
from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.scripted_relay import RefusingGreeting, Script, ScriptedRelay
from tests.support.server import MAIL_DOMAIN, MailgateServer, wait_until

pytestmark = pytest.mark.skipif(
    not smtp_sink.available(), reason="Postfix smtp-sink not installed (apt-get install postfix)"
)

PUBLIC_URL = "https://mail.example.test"


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory) -> tuple[Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path = tmp_path_factory.mktemp("dkim") / "key.pem"
    path.write_bytes(pem)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@pytest.fixture(scope="module")
def relay_port() -> int:
    return smtp_sink.free_port()


def make_server(database_url: str, data_dir: Path, relay_port: int, key: Path) -> MailgateServer:
    return MailgateServer(
        database_url,
        data_dir,
        relay_url=f"smtp://127.0.0.1:{relay_port}",
        public_url=PUBLIC_URL,
        relay_retry_base=0.2,
        relay_retry_cap=0.5,
        relay_poll_interval=0.1,
        relay_timeout=5,
        relay_pool_size=2,
        dkim_selector="mg1",
        dkim_domain="example.co.jp",
        dkim_key_file=key,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def server(database_url, data_dir, relay_port, dkim_key):
    srv = make_server(database_url, data_dir, relay_port, dkim_key[0]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def people(server):
    org = server.org("送信テスト株式会社", plan="professional")
    user = server.user(org, "sender@example.co.jp", name="佐藤 花子")
    api = server.api(user)
    return org, user, api


def sink(port: int, *flags: str) -> smtp_sink.SmtpSink:
    return smtp_sink.SmtpSink(port, flags=flags).start()


def new_lead(api, email_addr: str, last="山田", first="太郎") -> int:
    r = api.post(
        "/api/v1/leads",
        json={"last_name": last, "first_name": first, "email": email_addr, "company": "山田商事"},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def send_state(api, send_id: int) -> dict:
    r = api.get(f"/api/v1/sends/{send_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_state(api, send_id: int, state: str, timeout: float = 20) -> dict:
    return wait_until(
        lambda: (s := send_state(api, send_id))["state"] == state and s, timeout=timeout
    )


def events_of(api, *types: str) -> list[dict]:
    items = api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
    return [e for e in items if e["type"] in types]


def test_mass_mail_arrives_with_verp_sender_encoded_subject_one_click_and_valid_dkim(
    server, people, relay_port, tmp_path, dkim_key
):
    org, user, api = people
    lead = new_lead(api, "taro@client.example.jp")
    tpl = api.post(
        "/api/v1/templates",
        json={
            "name": "ご案内",
            "module": "leads",
            "subject": "${Leads.Last Name}様 新製品のご案内（2026年冬）",
            "html": "<p>{{ lead.full_name }} 様</p><p>いつもお世話になっております。</p>",
        },
    )
    assert tpl.status_code == 201, tpl.text
    relay = sink(relay_port)
    try:
        r = api.post(
            "/api/v1/emails/bulk",
            json={"to": [{"module": "leads", "id": lead}], "template_id": tpl.json()["id"]},
        )
        assert r.status_code == 202, r.text
        send = r.json()["sends"][0]
        assert send["status"] == "queued"
        done = wait_state(api, send["id"], "sent")
        assert done["status"] == "sent" and done["last_reply"].startswith("250")
        raw = wait_until(lambda: relay.messages(), timeout=5)[-1]
    finally:
        relay.stop()

    head, _, _ = raw.partition(b"\n\n")
    mail_from = re.search(rb"^X-Mail-Args: <([^>]+)>", head, re.M).group(1).decode()
    token = verp_token(mail_from, MAIL_DOMAIN)
    assert token and len(token) >= 20  # unguessable, and it names this send
    assert server.call(server.db.run_read(send_store.by_verp_token, token))["id"] == send["id"]

    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert str(make_header(decode_header(msg["Subject"]))) == "山田様 新製品のご案内（2026年冬）"
    assert "=?utf-8?b?" in msg["Subject"].lower()
    assert msg["X-Mailgate-Send"] == str(send["id"])
    assert msg["Message-ID"] == send["message_id"]
    unsub = " ".join(msg["List-Unsubscribe"].split())
    assert "=?" not in unsub
    assert re.fullmatch(
        rf"<mailto:bounces\+{token}@{MAIL_DOMAIN}\?subject=unsubscribe>, "
        rf"<{PUBLIC_URL}/u/[A-Za-z0-9_-]+>",
        unsub,
    ), unsub
    # the https link is a signed tracking token naming this very send
    from tracking.tokens import TokenSigner, keys_from_secrets

    unsub_token = unsub.rsplit("/u/", 1)[1].rstrip(">")
    signer = TokenSigner(keys_from_secrets(["test-secret-key"]))
    assert signer.verify(unsub_token, "unsubscribe").send_id == send["id"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = next(p for p in msg.walk() if p.get_content_type() == "text/html")
    sent_html = html.get_payload(decode=True).decode("utf-8")
    assert "山田 太郎 様" in sent_html
    assert f"{PUBLIC_URL}/t/o/" in sent_html  # the open pixel is in the recipient's copy

    # DKIM: verify the bytes as they arrived (smtp-sink writes LF line ends).
    public = dkim_key[1]
    wire = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert dkim.verify(
        wire,
        dnsfunc=lambda name, timeout=5: (
            public if name == b"mg1._domainkey.example.co.jp." else None
        ),
    )

    # Filed against the lead like dropbox mail, and announced.
    filed = api.get(f"/api/v1/leads/{lead}/emails").json()["items"]
    assert [(m["direction"], m["source"], m["send_id"]) for m in filed] == [
        ("outgoing", "api", send["id"])
    ]
    sent = [e for e in events_of(api, "email.sent") if e["data"]["send_id"] == send["id"]]
    assert len(sent) == 1 and sent[0]["data"]["to"] == "taro@client.example.jp"


def test_temporary_refusal_is_retried_then_delivered(server, people, relay_port, tmp_path):
    _, _, api = people
    lead = new_lead(api, "retry@client.example.jp")
    relay = sink(relay_port, "-r", "RCPT")
    try:
        r = api.post(
            "/api/v1/emails",
            json={"to": [{"module": "leads", "id": lead}], "subject": "再送", "text": "本文"},
        )
        assert r.status_code == 202, r.text
        sid = r.json()["sends"][0]["id"]
        deferred = wait_until(
            lambda: (
                (s := send_state(api, sid))["state"] == "deferred"
                and s["last_reply"].startswith("4")
                and s
            ),
        )
        assert deferred["attempts"] >= 1
    finally:
        relay.stop()
    relay = sink(relay_port)
    try:
        done = wait_state(api, sid, "sent")
        assert done["attempts"] >= 2
    finally:
        relay.stop()
    kinds = [
        e["type"]
        for e in events_of(api, "email.deferred", "email.sent")
        if e["data"]["send_id"] == sid
    ]
    assert "email.deferred" in kinds and kinds[-1] == "email.sent"


def test_permanent_refusal_fails_bounces_and_suppresses_the_address(
    server, people, relay_port, tmp_path
):
    _, _, api = people
    lead = new_lead(api, "gone@client.example.jp")
    unknown = "550 5.1.1 <gone@client.example.jp>: Recipient address rejected: User unknown"
    with ScriptedRelay(relay_port, Script(rcpt={"gone@client.example.jp": unknown})):
        r = api.post(
            "/api/v1/emails",
            json={"to": [{"module": "leads", "id": lead}], "subject": "hello", "text": "x"},
        )
        sid = r.json()["sends"][0]["id"]
        failed = wait_state(api, sid, "failed")
    assert failed["status"] == "bounced" and failed["bounce_type"] == "hard"
    assert failed["last_reply"].startswith("5")
    server.drain_consumers()  # the suppression consumer acts on the recorded bounce
    sup = api.get("/api/v1/suppressions").json()["items"]
    assert {"email": "gone@client.example.jp", "reason": "hard_bounce"}.items() <= next(
        s for s in sup if s["email"] == "gone@client.example.jp"
    ).items()
    bounced = [e for e in events_of(api, "email.bounced") if e["data"]["send_id"] == sid]
    assert bounced and bounced[0]["data"]["type"] == "hard"
    assert [e for e in events_of(api, "email.failed") if e["data"]["send_id"] == sid]

    again = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead}], "subject": "hello", "text": "x"},
    )
    assert again.status_code == 202
    assert again.json() == {
        "sends": [],
        "skipped": [
            {
                "to": {"module": "leads", "id": lead, "email": "gone@client.example.jp"},
                "reason": "suppressed:hard_bounce",
            }
        ],
    }
    # Lifting the suppression makes the address mailable again.
    assert api.delete("/api/v1/suppressions/gone@client.example.jp").status_code == 204
    assert api.delete("/api/v1/suppressions/gone@client.example.jp").status_code == 404


def test_relay_url_forms_parse():
    from gateway.sending.relay import RelayConfig

    c = RelayConfig.parse("smtp://relay.example.com")
    assert (c.host, c.port, c.implicit_tls, c.starttls, c.username) == (
        "relay.example.com", 25, False, False, None
    )  # fmt: skip
    c = RelayConfig.parse("smtp://u%40x:p%3Ass@relay.example.com:587?starttls=1")
    assert (c.port, c.starttls, c.username, c.password) == (587, True, "u@x", "p:ss")
    c = RelayConfig.parse("smtps://relay.example.com")
    assert (c.port, c.implicit_tls) == (465, True)
    for bad in ("http://relay", "smtp://", "smtps://h?starttls=1", "smtp://h:99999"):
        with pytest.raises(ValueError):
            RelayConfig.parse(bad)


def _send_to(api, *emails: str) -> list[int]:
    leads = [new_lead(api, e) for e in emails]
    r = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": i} for i in leads], "subject": "件名", "text": "x"},
    )
    assert r.status_code == 202, r.text
    return [s["id"] for s in r.json()["sends"]]


def _verp_token(server, send_id: int) -> str:
    async def go() -> str:
        async with server.db.connect() as conn:
            q = select(sends.c.verp_token).where(sends.c.id == send_id)
            return (await conn.execute(q)).scalar_one()

    return server.call(go())


def _suppressed(api) -> dict[str, str]:
    return {s["email"]: s["reason"] for s in api.get("/api/v1/suppressions").json()["items"]}


def test_full_mailbox_and_policy_refusals_at_rcpt_are_soft_bounces(server, people, relay_port):
    _, _, api = people
    script = Script(
        rcpt={
            "full@client.example.jp": "552 5.2.2 <full@client.example.jp>: Mailbox full",
            "policy@client.example.jp": "554 5.7.1 <policy@client.example.jp>: Relay access "
            "denied by policy",
        }
    )
    with ScriptedRelay(relay_port, script):
        ids = _send_to(api, "full@client.example.jp", "policy@client.example.jp")
        done = [wait_state(api, sid, "failed") for sid in ids]
    assert [(d["status"], d["bounce_type"]) for d in done] == [("bounced", "soft")] * 2
    server.drain_consumers()
    assert not {"full@client.example.jp", "policy@client.example.jp"} & set(_suppressed(api))
    bounced = {e["data"]["send_id"]: e["data"] for e in events_of(api, "email.bounced")}
    assert [bounced[sid]["type"] for sid in ids] == ["soft", "soft"]
    assert bounced[ids[0]]["reason"] == "mailbox_full"


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(Script(mail="530 5.7.0 Authentication required"), id="530-auth-required"),
        pytest.param(Script(mail="553 5.7.1 Sender address rejected: not owned"), id="553-mail"),
        pytest.param(None, id="554-greeting"),
    ],
)
def test_a_relay_refusing_us_suppresses_nobody_raises_an_alert_and_the_mail_waits(
    server, people, relay_port, refusal
):
    """A relay with wrong credentials must not wipe the list: no bounce, no suppression."""
    _, _, api = people
    tag = uuid.uuid4().hex[:6]
    emails = [f"a-{tag}@client.example.jp", f"b-{tag}@client.example.jp"]
    relay = RefusingGreeting(relay_port) if refusal is None else ScriptedRelay(relay_port, refusal)
    with relay:
        ids = _send_to(api, *emails)
        alerts = wait_until(
            lambda: [
                e for e in events_of(api, "relay.refused") if set(ids) & set(e["data"]["send_ids"])
            ]
        )
        states = [send_state(api, sid) for sid in ids]
    assert alerts[0]["data"]["stage"] == ("session" if refusal is None else "sender")
    assert alerts[0]["data"]["code"] == int(alerts[0]["data"]["reply"][:3]) >= 500
    assert alerts[0]["data"]["action"] == "deferred"
    assert all(s["state"] in ("deferred", "sending", "queued") for s in states), states
    assert all(s["status"] != "bounced" for s in states)
    server.drain_consumers()
    assert not set(emails) & set(_suppressed(api))
    assert not [e for e in events_of(api, "email.bounced") if e["data"]["send_id"] in ids]
    # The operator fixes the relay: the mail that waited goes out.
    relay = sink(relay_port)
    try:
        assert all(wait_state(api, sid, "sent")["status"] == "sent" for sid in ids)
    finally:
        relay.stop()


def test_a_refusal_after_data_is_a_bounce_only_when_it_names_the_recipient(
    server, people, relay_port
):
    _, _, api = people
    with ScriptedRelay(relay_port, Script(data="550 5.1.1 <{rcpt}>: mailbox unavailable")):
        (named,) = _send_to(api, "named@client.example.jp")
        assert wait_state(api, named, "failed")["bounce_type"] == "hard"
    with ScriptedRelay(relay_port, Script(data="554 5.6.0 Message content rejected")):
        (content,) = _send_to(api, "content@client.example.jp")
        failed = wait_state(api, content, "failed")
    assert failed["status"] == "failed" and failed["bounce_type"] is None
    server.drain_consumers()
    suppressed = _suppressed(api)
    assert suppressed.get("named@client.example.jp") == "hard_bounce"
    assert "content@client.example.jp" not in suppressed
    (alert,) = [e for e in events_of(api, "relay.refused") if content in e["data"]["send_ids"]]
    assert (alert["data"]["stage"], alert["data"]["action"]) == ("data", "failed")


def test_a_send_whose_address_was_suppressed_after_it_was_queued_is_not_delivered(
    server, people, relay_port
):
    """Deferred while the relay was down; meanwhile a bounce for ``Taro@…`` (stored with
    upper case) suppressed the address; once the relay is back the send must not go out."""
    _, _, api = people
    address = f"Taro{uuid.uuid4().hex[:6]}@Client.Example"
    relay = sink(relay_port)
    try:
        (first,) = _send_to(api, address)
        wait_state(api, first, "sent")
    finally:
        relay.stop()
    (second,) = _send_to(api, address)  # the relay is down: it waits
    wait_until(lambda: send_state(api, second)["state"] == "deferred")
    token = _verp_token(server, first)
    dsn = (
        "From: MAILER-DAEMON@mx.client.example\r\nSubject: Undelivered Mail\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
        " boundary=B\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.client.example\r\n\r\n"
        f"Final-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n--B--\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as s:
        s.sendmail("", [f"bounces+{token}@{MAIL_DOMAIN}"], dsn)
    server.drain("bounces")
    wait_until(lambda: send_state(api, first)["status"] == "bounced")
    server.drain_consumers()
    assert _suppressed(api).get(address.lower()) == "hard_bounce"
    relay = sink(relay_port)
    try:
        stopped = wait_state(api, second, "failed")
        assert all(f"X-Mailgate-Send: {second}".encode() not in m for m in relay.messages())
    finally:
        relay.stop()
    assert stopped["status"] == "suppressed"
    assert "suppressed (hard_bounce)" in stopped["last_reply"]
    failed = [e for e in events_of(api, "email.failed") if e["data"]["send_id"] == second]
    assert failed and "suppressed" in failed[0]["data"]["reply"]


@pytest.mark.parametrize(
    ("stage", "code", "reply", "about_recipient", "refused_us"),
    [
        (Stage.RECIPIENT, 550, "550 5.1.1 user unknown", True, False),
        (Stage.DATA, 550, "550 5.1.1 <Gone@Client.example.jp>: unknown", True, False),
        (Stage.DATA, 554, "554 5.6.0 content rejected", False, True),
        (Stage.SENDER, 553, "553 5.7.1 sender not owned", False, True),
        (Stage.SESSION, 530, "530 5.7.0 Authentication required", False, True),
        (Stage.SESSION, 421, "421 4.3.2 shutting down", False, False),
    ],
)
def test_which_refusals_are_about_the_recipient(stage, code, reply, about_recipient, refused_us):
    send = {"to_email": "gone@client.example.jp"}
    d = Delivery(send, Verdict.FAILED if code >= 500 else Verdict.DEFERRED, reply, code, stage)
    assert (d.about_recipient, d.refused_us) == (about_recipient, refused_us)


def test_an_idn_recipient_goes_out_in_ascii_and_the_next_send_on_the_connection_is_unharmed(
    server, people, relay_port
):
    """``user@пример.рф`` once raised inside the pooled transaction and the next send on
    that connection got ``503 nested MAIL command``: now the domain travels as IDNA."""
    _, _, api = people
    relay = sink(relay_port)
    try:
        idn, plain = _send_to(api, "user@пример.рф", "after-idn@client.example.jp")
        wait_state(api, idn, "sent")
        wait_state(api, plain, "sent")
        dumped = b"\n".join(relay.messages())
    finally:
        relay.stop()
    assert b"user@xn--e1afmkfd.xn--p1ai" in dumped
    assert b"after-idn@client.example.jp" in dumped
    assert not {"user@пример.рф", "after-idn@client.example.jp"} & set(_suppressed(api))


def test_addresses_are_carried_with_ascii_domains():
    from gateway.sending.relay import carried_address

    assert carried_address("user@пример.рф") == "user@xn--e1afmkfd.xn--p1ai"
    assert carried_address("Taro@Client.Example") == "Taro@Client.Example"
    assert carried_address("山田@例え.jp") == "山田@xn--r8jz45g.jp"  # local part needs SMTPUTF8
    assert carried_address("no-at-sign") is None
    assert carried_address("user@" + "ü" * 300 + ".jp") is None  # no valid IDNA form
