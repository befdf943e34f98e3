"""Real bounces and complaints through the VERP path of a running receiver, measured.

Each of the 629 corpus messages is sent over SMTP to the VERP address of a
send we create for the recipient the independent reference (sisimai) found.
The bounce worker then classifies, attributes and records; the suppression
consumer suppresses.  We measure, end to
end: recipients recognised as bounced, hard/soft agreement, complaints.
"""

from __future__ import annotations

import json
import re
import smtplib
import uuid

import pytest
from sqlalchemy import insert, select

from gateway.bounces import verp_address
from gateway.bounces.process import MAX_ATTEMPTS
from storage.schema import inbound
from storage.schema_bounces import bounces
from storage.schema_sending import sends, suppressions
from tests.support.sends import make_bare_send as make_send


def _deliver(mailgate, raw: bytes, rcpt: str) -> tuple[int, bytes]:
    """Send as an MTA would: CRLF line ends (the corpus files are stored with LF)."""
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=60) as s:
        try:
            s.sendmail("", [rcpt], raw)
            return 250, b""
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code, exc.smtp_error
        except smtplib.SMTPRecipientsRefused as exc:
            return next(iter(exc.recipients.values()))


def settle(mailgate) -> None:
    """Drain the bounce queue, wait until the background worker has committed too, then
    let the suppression consumer apply the events recorded."""
    from tests.support.server import wait_until

    mailgate.drain("bounces")
    wait_until(
        lambda: not _rows(mailgate, select(inbound.c.id).where(inbound.c.state == "pending"))
    )
    mailgate.drain_consumers()


def _rows(mailgate, query):
    async def go():
        async with mailgate.db.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    return mailgate.call(go())


def test_corpus_bounces_are_recognised_attributed_and_acted_on(mailgate, corpora, capsys):
    expected = json.loads((corpora / "bounces" / "expected.json").read_text())
    disagreements = json.loads(
        (
            __import__("pathlib").Path(__file__).parent / "data" / "bounce_disagreements.json"
        ).read_text()
    )
    excluded_hard_soft = set(disagreements["hard_soft"])
    excluded_recipients = set(disagreements["recipients"])
    excluded = excluded_hard_soft | excluded_recipients
    org = mailgate.org(f"Bounce {uuid.uuid4().hex[:6]}")
    files = sorted((corpora / "bounces").glob("*.eml"))
    assert len(files) == 629
    # One send per recipient the reference found (a multi-recipient report is delivered
    # once to each send's VERP address, as each send would have bounced on its own).
    sent_for: dict[tuple[str, str], dict] = {}
    for path in files:
        ref = expected.get(path.name) or []
        targets = list(dict.fromkeys(e["recipient"].lower() for e in ref)) or [
            f"unknown-{path.stem}@nowhere.example"
        ]
        for to in targets:
            send = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email=to))
            sent_for[(path.name, to)] = send
            rcpt = verp_address(send["verp_token"], "mailgate.test")
            code, text = _deliver(mailgate, path.read_bytes(), rcpt)
            assert code == 250, (path.name, code, text)

    settle(mailgate)
    assert _rows(mailgate, select(inbound.c.id).where(inbound.c.state == "pending")) == []
    errors = _rows(
        mailgate, select(inbound.c.last_error).where(inbound.c.last_error.like("error:%"))
    )
    assert errors == []  # no message crashed the worker

    recorded = {
        r["send_id"]: r
        for r in _rows(mailgate, select(bounces).where(bounces.c.org_id == org["id"]))
    }
    found = agree = graded = complaints_ok = complaints = 0
    considered = 0
    misses = []
    for path in files:
        if path.name in excluded_recipients:
            continue
        for entry in {e["recipient"].lower(): e for e in expected.get(path.name) or []}.values():
            considered += 1
            row = recorded.get(sent_for[(path.name, entry["recipient"].lower())]["id"])
            if path.name.startswith("arf-"):
                complaints += 1
                complaints_ok += bool(row and row["kind"] == "complaint")
                continue
            # found = recorded for this send AND the report itself named this recipient
            if row is None or row["reported_email"] != entry["recipient"].lower():
                misses.append(path.name)
                continue
            found += 1
            soft = entry["softbounce"]
            if soft not in (0, 1) or row["kind"] not in ("hard", "soft"):
                continue
            if path.name in excluded_hard_soft:
                continue
            graded += 1
            agree += (row["kind"] == "hard") == (soft == 0)
    bounces_considered = considered - complaints
    with capsys.disabled():
        print(
            f"\nbounce corpus via VERP: recipients recognised "
            f"{found}/{bounces_considered} = {found / bounces_considered:.2%}; hard/soft agreement "
            f"{agree}/{graded} = {agree / graded:.2%}; complaints {complaints_ok}/{complaints}; "
            f"excluded (listed disagreements) {len(excluded)}"
        )
    assert found / bounces_considered >= 0.95, misses[:20]
    assert agree / graded >= 0.95, [m for m in misses if m[0] == "hard/soft"]
    assert complaints_ok == complaints

    # Hard bounces and complaints suppressed their address; attributed sends carry the status.
    supp = {
        r["email_norm"]: r["reason"]
        for r in _rows(mailgate, select(suppressions).where(suppressions.c.org_id == org["id"]))
    }
    hard = [r for r in recorded.values() if r["kind"] == "hard"]
    # (many corpus files share an address: it stays suppressed under its first reason)
    assert hard and all(r["email_norm"] in supp for r in hard)
    assert "hard_bounce" in supp.values()
    complained = [r for r in recorded.values() if r["kind"] == "complaint"]
    assert complained and all(r["email_norm"] in supp for r in complained)
    assert "complaint" in supp.values()
    statuses = {
        r["status"]
        for r in _rows(mailgate, select(sends.c.status).where(sends.c.org_id == org["id"]))
    }
    assert {"bounced", "complained"} <= statuses


def test_unattributable_and_unrecognised_mail_is_kept_for_an_operator(mailgate):
    not_a_bounce = (
        b"From: someone@example.com\r\nTo: x@y\r\nSubject: hello\r\n\r\njust chatting\r\n"
    )
    code, _ = _deliver(mailgate, not_a_bounce, "bounces+nosuchtoken@mailgate.test")
    assert code == 250
    settle(mailgate)
    held = _rows(mailgate, select(inbound).where(inbound.c.state == "held"))
    assert any(r["raw"] == not_a_bounce for r in held)


def _dsn(recipient: str, status: str, diag: str, original_id: str = "") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example\r\nTo: bounces@mailgate.test\r\nSubject: Undelivered\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diag}\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{original_id}>\r\nSubject: hi\r\n"
        "--B--\r\n"
    ).encode()


def test_soft_bounces_suppress_only_after_three_within_the_window(mailgate):
    org = mailgate.org(f"Soft {uuid.uuid4().hex[:6]}")
    email = "full@mailbox.example"
    for i in range(3):
        send = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email=email))
        _deliver(
            mailgate,
            _dsn(email, "4.2.2", "452 4.2.2 Mailbox full"),
            verp_address(send["verp_token"], "mailgate.test"),
        )
        settle(mailgate)
        supp = _rows(mailgate, select(suppressions).where(suppressions.c.org_id == org["id"]))
        assert len(supp) == (1 if i == 2 else 0), i
    assert supp[0]["reason"] == "soft_bounce"


def test_a_bounce_without_a_valid_verp_token_is_held_whatever_it_names(mailgate):
    """The returned original's Message-ID, our send header and the addresses a report
    names are anyone's to write: without the VERP token they are hints for a human."""
    org = mailgate.org(f"MsgId {uuid.uuid4().hex[:6]}")
    send = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email="gone@nowhere.example"))
    raw = _dsn("gone@nowhere.example", "5.1.1", "550 5.1.1 User unknown", send["message_id"])
    assert _deliver(mailgate, raw, "bounces+not-a-real-token@mailgate.test")[0] == 250
    settle(mailgate)
    assert _rows(mailgate, select(bounces).where(bounces.c.send_id == send["id"])) == []
    assert _rows(mailgate, select(suppressions).where(suppressions.c.org_id == org["id"])) == []
    assert mailgate.call(_events(mailgate, org["id"])) == []
    (held,) = _rows(mailgate, select(inbound).where(inbound.c.raw == _crlf(raw)))
    assert held["state"] == "held"
    assert "without a valid VERP token" in held["last_error"]
    assert send["message_id"] in held["last_error"]  # the hint, for the human


def _crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", raw)


def _forged_dsn(named: list[str], send_header: str) -> bytes:
    blocks = "".join(
        f"Final-Recipient: rfc822; {e}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
        for e in named
    )
    return (
        "From: MAILER-DAEMON@evil.example\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; evil\r\n\r\n"
        f"{blocks}--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"X-Mailgate-Send: {send_header}\r\nSubject: hi\r\n--B--\r\n"
    ).encode()


def _forged_complaint(named: list[str]) -> bytes:
    fields = "".join(f"Original-Rcpt-To: <{e}>\r\n" for e in named)
    return (
        "From: fbl@evil.example\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=feedback-report; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: abuse\r\nVersion: 1\r\n{fields}\r\n--B--\r\n"
    ).encode()


def test_forged_reports_suppress_nobody_but_the_address_of_the_send_they_came_back_for(mailgate):
    """Anyone can reach our SMTP port.  Guessed tokens and send ids attribute nothing,
    and a report with a real token acts on that send's address only, whoever it names."""
    victims = mailgate.org(f"Victim {uuid.uuid4().hex[:6]}")
    target = mailgate.call(
        make_send(mailgate.db, org_id=victims["id"], to_email="ceo@customer.example")
    )
    others = ["buyer@customer.example", "cfo@customer.example"]
    for rcpt in ("bounces+guessed@mailgate.test", f"bounces+{target['id']}@mailgate.test"):
        named = ["ceo@customer.example", *others]
        assert _deliver(mailgate, _forged_dsn(named, str(target["id"])), rcpt)[0] == 250
        assert _deliver(mailgate, _forged_complaint(named), rcpt)[0] == 250
    # The attacker is a recipient of another org's send and complains with its real token.
    attacker_org = mailgate.org(f"Attacker {uuid.uuid4().hex[:6]}")
    own = mailgate.call(
        make_send(mailgate.db, org_id=attacker_org["id"], to_email="me@attacker.example")
    )
    own_rcpt = verp_address(own["verp_token"], "mailgate.test")
    assert (
        _deliver(mailgate, _forged_complaint(others + ["ceo@customer.example"]), own_rcpt)[0] == 250
    )
    settle(mailgate)

    assert _rows(mailgate, select(suppressions).where(suppressions.c.org_id == victims["id"])) == []
    assert _rows(mailgate, select(bounces).where(bounces.c.org_id == victims["id"])) == []
    attacker_supp = _rows(
        mailgate, select(suppressions).where(suppressions.c.org_id == attacker_org["id"])
    )
    assert [(r["email_norm"], r["reason"]) for r in attacker_supp] == [
        ("me@attacker.example", "complaint")
    ]
    held = _rows(mailgate, select(inbound.c.last_error).where(inbound.c.state == "held"))
    assert sum("without a valid VERP token" in r["last_error"] for r in held) >= 4


def test_a_bounce_for_an_address_stored_with_upper_case_suppresses_it(mailgate):
    org = mailgate.org(f"Case {uuid.uuid4().hex[:6]}")
    send = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email="Taro@Client.Example"))
    raw = _dsn("taro@client.example", "5.1.1", "550 5.1.1 User unknown")
    assert _deliver(mailgate, raw, verp_address(send["verp_token"], "mailgate.test"))[0] == 250
    settle(mailgate)
    supp = _rows(mailgate, select(suppressions).where(suppressions.c.org_id == org["id"]))
    assert [(r["email_norm"], r["reason"]) for r in supp] == [
        ("taro@client.example", "hard_bounce")
    ]


def test_a_report_that_breaks_is_held_and_its_batch_still_goes_through(mailgate):
    """A NUL byte PostgreSQL refuses, and a report that has used up its attempts (it broke
    its transaction or killed its worker before): neither stops its neighbours."""
    org = mailgate.org(f"Bad {uuid.uuid4().hex[:6]}")
    nul = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email="nul@client.example"))
    good = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email="ok@client.example"))
    spent = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email="spent@client.example"))
    nul_raw = _dsn("nul@client.example", "5.1.1", "550 5.1.1 User\x00 unknown\x00")
    rows = [
        (nul, nul_raw, 0),
        (spent, _dsn("spent@client.example", "5.1.1", "550 5.1.1 User unknown"), MAX_ATTEMPTS),
        (good, _dsn("ok@client.example", "5.1.1", "550 5.1.1 User unknown"), 0),
    ]

    async def keep():
        async with mailgate.db.begin() as conn:
            for send, raw, attempts in rows:
                rcpt = verp_address(send["verp_token"], "mailgate.test")
                await conn.execute(
                    insert(inbound).values(
                        channel="bounce", rcpt_to=[rcpt], raw=raw, attempts=attempts
                    )
                )

    mailgate.call(keep())
    settle(mailgate)
    recorded = {
        r["send_id"]: r["kind"]
        for r in _rows(mailgate, select(bounces).where(bounces.c.org_id == org["id"]))
    }
    assert recorded == {nul["id"]: "hard", good["id"]: "hard"}
    (held,) = _rows(mailgate, select(inbound).where(inbound.c.raw == rows[1][1]))
    assert held["state"] == "held"
    assert held["last_error"].startswith(f"gave up after {MAX_ATTEMPTS} attempts")


async def _events(mailgate, org_id):
    from storage.events import read_after

    async with mailgate.db.connect() as conn:
        return await read_after(conn, after=0, limit=100, org_id=org_id)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x00\x00",
        b"Message-Id: <>\r\n\r\n",
        b"Content-Type: multipart/report; boundary=\r\n\r\n--\r\n",
    ],
)
def test_hostile_bounce_mail_never_crashes_the_worker(mailgate, raw):
    code, _ = _deliver(mailgate, raw + b"\r\n", "bounces+x@mailgate.test")
    assert code == 250
    settle(mailgate)
    assert _rows(mailgate, select(inbound.c.id).where(inbound.c.state == "pending")) == []


def test_list_unsubscribe_mailto_unsubscribes_the_recipient(mailgate):
    org = mailgate.org(f"Mailto {uuid.uuid4().hex[:6]}")
    send = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email="reader@client.example"))
    raw = b"From: reader@client.example\r\nTo: x\r\nSubject: unsubscribe\r\n\r\n\r\n"
    assert _deliver(mailgate, raw, verp_address(send["verp_token"], "mailgate.test"))[0] == 250
    settle(mailgate)
    supp = _rows(mailgate, select(suppressions).where(suppressions.c.org_id == org["id"]))
    assert [(r["email_norm"], r["reason"]) for r in supp] == [
        ("reader@client.example", "unsubscribe")
    ]
    status = _rows(mailgate, select(sends.c.status).where(sends.c.id == send["id"]))
    assert status == [{"status": "unsubscribed"}]
    assert [e["type"] for e in mailgate.call(_events(mailgate, org["id"]))] == [
        "email.unsubscribed"
    ]


def test_each_mta_family_bounce_is_recorded_through_verp_and_hard_ones_suppressed(mailgate):
    """Our constructed examples of each MTA family's format, over the real receiver."""
    from pathlib import Path

    folder = Path(__file__).parent / "data" / "bounces"
    expected = json.loads((folder / "expected.json").read_text("utf-8"))
    org = mailgate.org(f"Families {uuid.uuid4().hex[:6]}")
    sent = {}
    for name, want in sorted(expected.items()):
        send = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email=want["recipient"]))
        sent[name] = send
        rcpt = verp_address(send["verp_token"], "mailgate.test")
        assert _deliver(mailgate, (folder / name).read_bytes(), rcpt)[0] == 250
    settle(mailgate)
    recorded = {
        r["send_id"]: (r["kind"], r["reason"])
        for r in _rows(mailgate, select(bounces).where(bounces.c.org_id == org["id"]))
    }
    assert {n: recorded.get(s["id"]) for n, s in sent.items()} == {
        n: (w["severity"], w["reason"]) for n, w in expected.items()
    }
    supp = {
        r["email_norm"]
        for r in _rows(mailgate, select(suppressions).where(suppressions.c.org_id == org["id"]))
    }
    assert supp == {w["recipient"] for w in expected.values() if w["severity"] == "hard"}


def test_a_report_from_a_bounce_mailbox_is_attributed_by_its_own_delivery_header(mailgate):
    """Mail fetched over IMAP has no SMTP envelope of ours: the VERP address its mail system
    delivered it to (``Delivered-To``) counts; the returned original's headers never do."""
    org = mailgate.org(f"Mailbox {uuid.uuid4().hex[:6]}")
    delivered = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email="a@client.example"))
    inside = mailgate.call(make_send(mailgate.db, org_id=org["id"], to_email="b@client.example"))
    by_header = (
        b"Delivered-To: "
        + verp_address(delivered["verp_token"], "mailgate.test").encode()
        + b"\r\n"
        + _dsn("a@client.example", "5.1.1", "550 5.1.1 User unknown")
    )
    only_inside = _dsn("b@client.example", "5.1.1", "550 5.1.1 User unknown").replace(
        b"Subject: hi\r\n",
        b"Subject: hi\r\nReturn-Path: <"
        + verp_address(inside["verp_token"], "mailgate.test").encode()
        + b">\r\n",
    )

    async def keep():
        async with mailgate.db.begin() as conn:
            for raw in (by_header, only_inside):
                await conn.execute(insert(inbound).values(channel="bounce", rcpt_to=[], raw=raw))

    mailgate.call(keep())
    settle(mailgate)
    recorded = _rows(mailgate, select(bounces.c.send_id).where(bounces.c.org_id == org["id"]))
    assert recorded == [{"send_id": delivered["id"]}]
    (held,) = _rows(mailgate, select(inbound).where(inbound.c.raw == only_inside))
    assert held["state"] == "held"
