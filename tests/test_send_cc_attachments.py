"""CC and attachments on individual mail, through the running server to a real relay socket.

What the relay gets is what matters: one message with RCPT TO for the To and
every CC, the Cc header, attachments whose Japanese file names (RFC 2231) and
bytes Python's email package reads back, a DKIM signature that still
verifies.  CC recipients count against the individual quota as To recipients
do; over the quota nothing is kept.  Hostile input is a clear 4xx.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from gateway.sending import quota as rules
from gateway.sending.extras import MAX_ATTACHMENT_BYTES
from storage import quotas, suppressions
from storage.schema import messages
from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.send_peer import (
    delivered,
    filed_copy,
    parsed,
    record,
    relayed,
    send_state,
    team,
)

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
PDF_NAME = "御見積書_2026年11月分_株式会社サンプル商事様（最終版）.pdf"


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory):
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
def relay():
    port = smtp_sink.free_port()
    with ScriptedRelay(port, Script()) as script:
        script.port = port
        yield script


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay, dkim_key):
    srv = relayed(
        database_url,
        tmp_path_factory.mktemp("data"),
        relay.port,
        dkim_selector="mg1",
        dkim_domain="sender.example.jp",
        dkim_key_file=dkim_key[0],
    ).start()
    yield srv
    srv.stop()


def count(server, query) -> int:
    async def go():
        async with server.db.connect() as conn:
            return (await conn.execute(query)).scalar()

    return server.call(go())


def used(api) -> int:
    return api.get("/api/v1/quota").json()["individual"]["used"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_cc_goes_in_one_message_to_to_and_cc_and_books_one_per_recipient(server, relay):
    org, user, api = team(server)
    lead = record(api, "leads", last_name="山田", email="yamada@client.example.jp")
    before = used(api)
    r = api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": lead}],
            "cc": [
                "Boss@Client.example.jp",
                {"email": "kacho@client.example.jp", "name": "課長 次郎"},
            ],
            "subject": "お見積りの件",
            "text": "山田様\nお見積りをお送りします。",
        },
    )
    assert r.status_code == 202, r.text
    [send] = r.json()["sends"]
    assert send["cc"] == ["Boss@Client.example.jp", "kacho@client.example.jp"]
    assert r.json()["cc_skipped"] == []
    assert used(api) == before + 3

    rcpts, raw = delivered(relay, send)
    assert rcpts == [
        "yamada@client.example.jp",
        "Boss@Client.example.jp",
        "kacho@client.example.jp",
    ]
    msg = parsed(raw)
    assert msg["To"].addresses[0].addr_spec == "yamada@client.example.jp"
    cc = [(a.display_name, a.addr_spec) for a in msg["Cc"].addresses]
    assert cc == [("", "Boss@Client.example.jp"), ("課長 次郎", "kacho@client.example.jp")]

    state = send_state(api, send["id"])
    assert state["cc"] == ["Boss@Client.example.jp", "kacho@client.example.jp"]
    copy = filed_copy(api, "leads", lead, send["id"])
    assert copy["cc"] == ["boss@client.example.jp", "kacho@client.example.jp"]
    sent = [
        e
        for e in api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
        if e["type"] == "email.sent" and e["data"]["send_id"] == send["id"]
    ]
    assert sent[0]["data"]["cc"] == ["Boss@Client.example.jp", "kacho@client.example.jp"]


def test_a_suppressed_or_duplicate_cc_is_dropped_with_its_reason_and_not_booked(server, relay):
    org, user, api = team(server)
    lead = record(api, "leads", last_name="鈴木", email="suzuki@client.example.jp")
    server.call(
        server.db.run_write(
            lambda conn: suppressions.suppress(
                conn, org["id"], "gone@client.example.jp", "hard_bounce"
            )
        )
    )
    before = used(api)
    r = api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": lead}],
            "cc": ["gone@client.example.jp", "SUZUKI@client.example.jp", "ok@client.example.jp"],
            "subject": "ご連絡",
            "text": "本文",
        },
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["sends"][0]["cc"] == ["ok@client.example.jp"]
    assert body["cc_skipped"] == [
        {"cc": {"email": "gone@client.example.jp"}, "reason": "suppressed:hard_bounce"},
        {"cc": {"email": "SUZUKI@client.example.jp"}, "reason": "duplicate"},
    ]
    assert used(api) == before + 2
    rcpts, _ = delivered(relay, body["sends"][0])
    assert rcpts == ["suzuki@client.example.jp", "ok@client.example.jp"]


def test_cc_over_the_quota_is_refused_whole_and_nothing_is_kept(server):
    org, user, api = team(server, plan="free")
    lead = record(api, "leads", last_name="高橋", email="takahashi@client.example.jp")
    day = rules.quota_day(datetime.now(UTC), "Asia/Tokyo")  # the org's time zone
    # 48 of the free plan's 50 already used today: 1 To + 2 CC (3) does not fit, 1 + 1 does.
    server.call(
        server.db.run_write(
            lambda conn: quotas.reserve(conn, org["id"], "individual", day.day, 48, 50)
        )
    )
    assert used(api) == 48
    body = {
        "to": [{"module": "leads", "id": lead}],
        "cc": ["a@client.example.jp", "b@client.example.jp"],
        "subject": "上限",
        "text": "x",
    }
    r = api.post("/api/v1/emails", json=body)
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and err["requested"] == 3 and err["resets_at"]
    assert used(api) == 48
    assert (
        count(server, select(func.count()).select_from(sends).where(sends.c.org_id == org["id"]))
        == 0
    )
    assert (
        count(
            server, select(func.count()).select_from(messages).where(messages.c.org_id == org["id"])
        )
        == 0
    )
    r = api.post("/api/v1/emails", json={**body, "cc": ["a@client.example.jp"]})
    assert r.status_code == 202, r.text
    assert used(api) == 50


def test_a_japanese_named_attachment_round_trips_through_the_relay_and_the_filed_copy(
    server, relay, dkim_key
):
    org, user, api = team(server)
    contact = record(api, "contacts", last_name="田中", email="tanaka@client.example.jp")
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\xff" * 500
    r = api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "contacts", "id": contact}],
            "subject": "御見積書送付のご案内",
            "html": '<p>田中様</p><p><a href="https://example.co.jp/quote">見積書</a></p>',
            "attachments": [
                {
                    "filename": PDF_NAME,
                    "content_type": "application/pdf",
                    "content_base64": b64(PDF),
                },
                {"filename": "logo.png", "content_type": "image/png", "content_base64": b64(png)},
            ],
        },
    )
    assert r.status_code == 202, r.text
    sid = r.json()["sends"][0]["id"]
    _, raw = delivered(relay, r.json()["sends"][0])
    msg = parsed(raw)
    assert msg.get_content_type() == "multipart/mixed"
    got = [
        (p.get_filename(), p.get_content_type(), p.get_content()) for p in msg.iter_attachments()
    ]
    assert got == [(PDF_NAME, "application/pdf", PDF), ("logo.png", "image/png", png)]
    assert "filename*" in raw.decode("ascii")  # RFC 2231, not raw UTF-8 in the header
    html = msg.get_body(("html",)).get_content()
    assert f"{server.settings.public_url}/t/o/" in html  # tracking still in the recipient's copy
    wire = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert dkim.verify(
        wire,
        dnsfunc=lambda name, timeout=5: (
            dkim_key[1] if name == b"mg1._domainkey.sender.example.jp." else None
        ),
    )

    copy = filed_copy(api, "contacts", contact, sid)
    shown = api.get(f"/api/v1/emails/{copy['id']}")
    assert shown.status_code == 200, shown.text
    listed = [(a["filename"], a["content_type"], a["size"]) for a in shown.json()["attachments"]]
    assert listed == [(PDF_NAME, "application/pdf", len(PDF)), ("logo.png", "image/png", len(png))]
    download = api.get(f"/api/v1/emails/{copy['id']}/attachments/0")
    assert download.status_code == 200 and download.content == PDF


def test_oversized_attachments_are_refused_and_nothing_is_sent(server):
    org, user, api = team(server)
    lead = record(api, "leads", last_name="伊藤", email="ito@client.example.jp")
    base = {"to": [{"module": "leads", "id": lead}], "subject": "大きい", "text": "x"}
    half = b"\0" * (MAX_ATTACHMENT_BYTES // 2 + 256 * 1024)  # two of them: 10.5 MiB
    over_total = [
        {
            "filename": f"{i}.bin",
            "content_type": "application/octet-stream",
            "content_base64": b64(half),
        }
        for i in range(2)
    ]
    r = api.post("/api/v1/emails", json={**base, "attachments": over_total})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "attachments_too_large"
    assert "10 MiB" in r.json()["error"]["message"]
    # Far over: the request body itself is refused before it is read whole.
    r = api.post("/api/v1/emails", json={**base, "attachments": over_total * 2})
    assert r.status_code == 413, r.text
    # Within the attachment limit but over the deployment's message size (2 MiB in tests).
    big = [
        {
            "filename": "scan.pdf",
            "content_type": "application/pdf",
            "content_base64": b64(b"%" * 3_000_000),
        }
    ]
    r = api.post("/api/v1/emails", json={**base, "attachments": big})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "message_too_large"
    assert "maximum message size" in r.json()["error"]["message"]
    assert (
        count(server, select(func.count()).select_from(sends).where(sends.c.org_id == org["id"]))
        == 0
    )
    assert used(api) == 0


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [
        ({"cc": "boss@client.example.jp"}, 422, "cc must be a list"),
        ({"cc": ["not an address"]}, 422, "cc[0]"),
        ({"cc": [{"email": "x@client.example.jp\r\nBcc: evil@x.jp"}]}, 422, "cc[0].email"),
        ({"cc": [{"email": "x@client.example.jp", "name": "課長\r\nBcc: evil@x.jp"}]}, 422, "cc[0].name"),
        ({"cc": [{"module": "accounts", "id": 1}]}, 422, "cc[0]"),
        ({"cc": [f"c{i}@client.example.jp" for i in range(21)]}, 422, "at most 20"),
        ({"attachments": {"filename": "a"}}, 422, "attachments must be a list"),
        ({"attachments": [{"filename": "a\r\nX-Evil: 1.pdf", "content_type": "application/pdf",
                           "content_base64": "QQ=="}]}, 422, "filename"),
        ({"attachments": [{"filename": "a.pdf", "content_type": "application/pdf\r\nX-Evil: 1",
                           "content_base64": "QQ=="}]}, 422, "content_type"),
        ({"attachments": [{"filename": "a.pdf", "content_type": 'text/plain; name="x"',
                           "content_base64": "QQ=="}]}, 422, "content_type"),
        ({"attachments": [{"filename": "a.eml", "content_type": "message/rfc822",
                           "content_base64": "QQ=="}]}, 422, "cannot be attached"),
        ({"attachments": [{"filename": "a.pdf", "content_type": "application/pdf",
                           "content_base64": "%%% not base64 %%%"}]}, 422, "not valid base64"),
        ({"attachments": [{"filename": "a.pdf", "content_type": "application/pdf",
                           "content_base64": "QQ="}]}, 422, "not valid base64"),
        ({"attachments": [{"filename": "", "content_base64": "QQ=="}]}, 422, "filename is required"),
        ({"attachments": [{"filename": f"{i}.txt", "content_base64": "QQ=="} for i in range(11)]},
         422, "at most 10"),
        ({"in_reply_to": "12"}, 422, "in_reply_to"),
        ({"in_reply_to": 10**12}, 404, "no such email"),
    ],
)  # fmt: skip
def test_hostile_cc_and_attachments_get_a_clear_4xx(server, extra, status, needle):
    org, user, api = team(server)
    lead = record(api, "leads", last_name="x", email=f"x{org['id']}@client.example.jp")
    body = {"to": [{"module": "leads", "id": lead}], "subject": "件名", "text": "x", **extra}
    r = api.post("/api/v1/emails", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"], r.text
    assert (
        count(server, select(func.count()).select_from(sends).where(sends.c.org_id == org["id"]))
        == 0
    )


def test_cc_and_attachments_are_for_individual_mail_only(server):
    org, user, api = team(server)
    lead = record(api, "leads", last_name="x", email="bulk@client.example.jp")
    r = api.post(
        "/api/v1/emails/bulk",
        json={
            "to": [{"module": "leads", "id": lead}],
            "subject": "s",
            "text": "x",
            "cc": ["a@b.jp"],
        },
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "not_for_mass"


def test_a_bounce_naming_only_a_cc_never_bounces_the_to():
    from gateway.bounces import BouncedRecipient, BounceKind, BounceReport
    from gateway.bounces.process import cc_bounce

    send = {"to_email": "yamada@client.example.jp", "cc_emails": ["Typo@Client.example.jp"]}
    typo = BounceReport(BounceKind.HARD, [BouncedRecipient("typo@client.example.jp", "hard")])
    assert cc_bounce(typo, send) == "typo@client.example.jp"
    to = BounceReport(BounceKind.HARD, [BouncedRecipient("yamada@client.example.jp", "hard")])
    assert cc_bounce(to, send) is None
    nobody = BounceReport(BounceKind.HARD, [])
    assert cc_bounce(nobody, send) is None  # falls back to the To, as before
    assert cc_bounce(typo, {**send, "cc_emails": []}) is None


def test_a_cc_the_relay_refuses_is_left_out_and_named_while_the_to_gets_the_mail(server, relay):
    org, user, api = team(server)
    lead = record(api, "leads", last_name="中村", email="nakamura@client.example.jp")
    gone = f"gone{org['id']}@client.example.jp"
    relay.rcpt[gone] = f"550 5.1.1 <{gone}>: Recipient address rejected: User unknown"
    try:
        r = api.post(
            "/api/v1/emails",
            json={
                "to": [{"module": "leads", "id": lead}],
                "cc": [gone, "ok@client.example.jp"],
                "subject": "ご確認",
                "text": "x",
            },
        )
        assert r.status_code == 202, r.text
        send = r.json()["sends"][0]
        rcpts, _ = delivered(relay, send)
    finally:
        del relay.rcpt[gone]
    assert rcpts == ["nakamura@client.example.jp", "ok@client.example.jp"]
    state = send_state(api, send["id"])
    assert state["status"] == "sent"  # the To got it: no failure, no bounce
    assert f"cc refused: {gone} (550" in state["last_reply"]
    sent = [
        e
        for e in api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
        if e["type"] == "email.sent" and e["data"]["send_id"] == send["id"]
    ]
    assert sent[0]["data"]["cc"] == ["ok@client.example.jp"]
    assert api.get("/api/v1/suppressions").json()["items"] == []


@pytest.mark.parametrize(
    "filename",
    [
        "a" * 120 + ".pdf",  # long ASCII: RFC 2231 continuations
        'q"uote\\back.txt',
        "見積" * 100 + ".pdf",  # 600 bytes of UTF-8, split between escapes
        "=?utf-8?B?abc?=.txt",  # looks encoded: must not be decoded by readers
        "100%_sure;name=x.txt",
        "スペース 入り ファイル.xlsx",
    ],
)
def test_attachment_file_names_read_back_exactly_in_short_lines(filename):
    from gateway.mailview.parts import view
    from gateway.sending.compose import attachment_part, compose

    raw = compose(
        from_addr="a@sender.example.jp",
        from_name=None,
        to_addr="c@client.example.jp",
        to_name=None,
        subject="s",
        html=None,
        text="t",
        message_id="<1@sender.example.jp>",
        attachments=[attachment_part(filename, "application/octet-stream", b"x")],
    )
    [part] = parsed(raw).iter_attachments()
    assert part.get_filename() == filename
    assert [a.filename for a in view(raw).attachments] == [filename]
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
