"""The bounce classifier against real mail from 75 mail systems.

Agreement with an independent reference parser (sisimai's answers in
``corpora/bounces/expected.json``) is measured and printed; the suite fails
below the thresholds.  Files where we disagree with the reference on
purpose are listed, with reasons, in ``tests/data/bounce_disagreements.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.bounces import BounceKind, BounceReport, classify, reasons

DISAGREEMENTS = json.loads(
    (Path(__file__).parent / "data" / "bounce_disagreements.json").read_text("utf-8")
)
NOT_A_BOUNCE = (BounceKind.AUTOREPLY, BounceKind.UNRECOGNISED, BounceKind.COMPLAINT)


@pytest.fixture(scope="module")
def bounce_corpus(corpora: Path) -> tuple[dict, dict[str, BounceReport]]:
    folder = corpora / "bounces"
    expected = json.loads((folder / "expected.json").read_text("utf-8"))
    reports = {path.name: classify(path.read_bytes()) for path in sorted(folder.glob("*.eml"))}
    return expected, reports


def _excluded(section: str, name: str, email: str) -> bool:
    return email in DISAGREEMENTS[section].get(name, {})


def test_every_corpus_bounce_is_classified_without_raising(bounce_corpus):
    _, reports = bounce_corpus
    assert len(reports) >= 600
    crashed = [n for n, r in reports.items() if r.reason.startswith("classifier failed")]
    assert crashed == []


def test_recipients_found_agree_with_reference(bounce_corpus, capsys):
    expected, reports = bounce_corpus
    total = found = excluded = 0
    missed = []
    for name, refs in expected.items():
        ours = {r.email.lower() for r in reports[name].recipients}
        for ref in refs:
            email = ref["recipient"].lower()
            if _excluded("recipients", name, email):
                excluded += 1
                continue
            total += 1
            if email in ours:
                found += 1
            else:
                missed.append(f"{name}:{email}")
    share = found / total
    line = f"recipients found: {found}/{total} = {share:.2%} ({excluded} excluded as disagreements)"
    with capsys.disabled():
        print("\n" + line)
    assert share >= 0.95, f"{line}; missed: {missed}"


def test_hard_soft_agrees_with_reference(bounce_corpus, capsys):
    expected, reports = bounce_corpus
    total = agree = excluded = 0
    differ = []
    for name, refs in expected.items():
        ours = {r.email.lower(): r for r in reports[name].recipients}
        for ref in refs:
            email = ref["recipient"].lower()
            if ref["softbounce"] not in (0, 1) or email not in ours:
                continue
            if _excluded("hard_soft", name, email):
                excluded += 1
                continue
            total += 1
            want = "hard" if ref["softbounce"] == 0 else "soft"
            if ours[email].severity == want:
                agree += 1
            else:
                differ.append(f"{name}:{email} ref={ref['reason']} ours={ours[email].reason}")
    share = agree / total
    line = f"hard/soft agreement: {agree}/{total} = {share:.2%} ({excluded} excluded)"
    with capsys.disabled():
        print("\n" + line)
    assert share >= 0.95, f"{line}; differing: {differ}"


def test_feedback_reports_are_complaints(bounce_corpus):
    expected, reports = bounce_corpus
    arf = [n for n, refs in expected.items() if n.startswith("arf-") and refs]
    assert len(arf) >= 15
    wrong = {n: reports[n].kind for n in arf if reports[n].kind is not BounceKind.COMPLAINT}
    assert wrong == {}


def test_complaint_carries_feedback_type_and_original():
    raw = (
        b"From: fbl@isp.example\r\nTo: bounces+s1@mailgate.localhost\r\n"
        b"Subject: complaint\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n"
        b"--b\r\nContent-Type: message/feedback-report\r\n\r\n"
        b"Feedback-Type: abuse\r\nUser-Agent: x/1\r\nVersion: 1\r\n"
        b"Original-Rcpt-To: <Lead@Customer.example>\r\n\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: rep@ours.example\r\nTo: lead@customer.example\r\n"
        b"Message-ID: <send-42@ours.example>\r\nX-Mailgate-Send: s-42\r\n\r\nHello\r\n"
        b"--b--\r\n"
    )
    report = classify(raw)
    assert report.kind is BounceKind.COMPLAINT
    assert report.feedback_type == "abuse"
    assert [r.email for r in report.recipients] == ["lead@customer.example"]
    assert report.original_message_id == "<send-42@ours.example>"
    assert report.original_headers["X-Mailgate-Send"] == "s-42"


def test_dsn_ties_back_to_send_and_reads_codes():
    raw = (
        b"From: MAILER-DAEMON@mx.example\r\nTo: bounces+s7@mailgate.localhost\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example\r\n\r\n"
        b"Final-Recipient: rfc822; Nobody@Customer.example\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <nobody@customer.example>: "
        b"Recipient address rejected: User unknown\r\n\r\n"
        b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"Message-ID: <send-7@ours.example>\r\nX-Mailgate-Send: s-7\r\n"
        b"--b--\r\n"
    )
    report = classify(raw)
    assert report.kind is BounceKind.HARD
    (recipient,) = report.recipients
    assert (recipient.email, recipient.status, recipient.reply_code, recipient.reason) == (
        "nobody@customer.example",
        "5.1.1",
        "550",
        "user_unknown",
    )
    assert report.original_headers["X-Mailgate-Send"] == "s-7"


def test_full_mailbox_under_5xx_is_a_soft_bounce():
    raw = (
        b"From: MAILER-DAEMON@mx.example\r\nSubject: Delivery Status Notification\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; full@customer.example\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        b"Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\r\n--b--\r\n"
    )
    report = classify(raw)
    assert report.kind is BounceKind.SOFT
    assert report.recipients[0].reason == "mailbox_full"


def test_japanese_out_of_office_is_an_autoreply_not_a_bounce():
    raw = (
        b"From: tanaka@customer.example\r\nTo: rep@ours.example\r\n"
        b"Subject: =?iso-2022-jp?b?GyRCSVQ6XyROJCpDTiRpJDsbKEI=?=\r\n\r\n"
        + "本日不在です。".encode("iso2022_jp")
    )
    report = classify(raw)
    assert report.kind is BounceKind.AUTOREPLY
    assert report.recipients[0].email == "tanaka@customer.example"


def test_iso_2022_jp_carrier_bounce_is_recognised():
    body = "送信先のメールボックスが一杯のため、送信できませんでした。\r\n".encode("iso2022_jp")
    raw = (
        b"From: no-reply@auone-net.example\r\nTo: rep@ours.example\r\n"
        b"Subject: =?ISO-2022-JP?B?GyRCJWEhPCVrJSglaSE8RExDThsoQg==?=\r\n"
        b"Content-Type: text/plain; charset=ISO-2022-JP\r\n\r\n"
        + body
        + b"Could not be delivered to: <kijitora@ezweb.example>\r\n"
    )
    report = classify(raw)
    assert report.kind is BounceKind.SOFT
    assert report.recipients[0].email == "kijitora@ezweb.example"
    assert report.recipients[0].reason == "mailbox_full"


@pytest.mark.parametrize("folder", ["malformed/malformed", "malformed/thirdparty", "japanese"])
def test_ordinary_and_malformed_mail_is_not_a_bounce(corpora, folder):
    # japanese/bounce_with_utf8_part.eml is, despite its name, a forwarded
    # iPhone mail from au with no delivery failure in it: not a bounce either.
    called_bounce = {}
    for path in sorted((corpora / folder).glob("*.eml")):
        report = classify(path.read_bytes())
        if report.kind not in NOT_A_BOUNCE:
            called_bounce[path.name] = report.kind
    assert called_bounce == {}


HOSTILE = {
    "empty": b"",
    "whitespace": b" \r\n\r\n",
    "nul bytes": b"From: a@b\x00\r\nSubject: \x00\x00\r\n\r\n\x00body\x00",
    "bare cr lf": b"From: MAILER-DAEMON@x\rSubject: Undeliverable\n\r\n\rx@y.example\r\r\n",
    "empty message-id": b"Message-Id: <>\r\nFrom: MAILER-DAEMON@x\r\nSubject: failure\r\n\r\n550 5.1.1 a@b.example\r\n",
    "unknown charset": (
        b"From: MAILER-DAEMON@x\r\nSubject: =?x-nonsense?B?AAAA?=\r\n"
        b"Content-Type: text/plain; charset=x-nonsense-9\r\n\r\n\xff\xfe user unknown a@b.example\r\n"
    ),
    "2 MB header": b"Subject: " + b"A" * (2 * 1024 * 1024) + b"\r\n\r\nbody\r\n",
    "binary garbage": bytes(range(256)) * 64,
    "bad base64 dsn": (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"!!!not base64!!!\r\n--b--\r\n"
    ),
}


def _nested(depth: int) -> bytes:
    head = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(depth)
    )
    return (
        b"From: MAILER-DAEMON@x\r\nSubject: Undeliverable\r\n"
        + head
        + b"Content-Type: text/plain\r\n\r\nx\r\n"
    )


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_never_raises(name):
    report = classify(HOSTILE[name])
    assert isinstance(report.kind, BounceKind)


def test_deeply_nested_multipart_never_raises():
    report = classify(_nested(5000))
    assert isinstance(report.kind, BounceKind)


def test_empty_input_says_why_it_is_unrecognised():
    report = classify(b"")
    assert report.kind is BounceKind.UNRECOGNISED
    assert report.reason


# -- constructed examples of each MTA family's documented format ------------------------

FAMILIES = Path(__file__).parent / "data" / "bounces"
FAMILY_EXPECTED = json.loads((FAMILIES / "expected.json").read_text("utf-8"))


@pytest.mark.parametrize("name", sorted(FAMILY_EXPECTED))
def test_each_mta_family_is_attributed_and_classified(name):
    """sendmail, qmail, Exim, Postfix, MDaemon, Yahoo, AOL, Lotus, Exchange: the failed
    recipient, hard or soft, and why -- never ``soft/undefined`` by default."""
    want = FAMILY_EXPECTED[name]
    report = classify((FAMILIES / name).read_bytes())
    assert report.is_bounce, report
    found = {r.email: (r.severity, r.reason) for r in report.recipients}
    assert found == {want["recipient"]: (want["severity"], want["reason"])}


def test_the_families_cover_the_mtas_the_issue_names():
    families = {name.split("-", 1)[0] for name in FAMILY_EXPECTED}
    assert {"sendmail", "qmail", "exim", "postfix", "mdaemon", "yahoo", "aol", "lotus"} <= families


@pytest.mark.parametrize(
    ("status", "reply", "text", "permanent", "want"),
    [
        # A permanent failure nothing explains is hard, whether a code or the words say so.
        ("", "550", "Requested action not taken", False, ("undefined", "hard")),
        ("", "", "Requested action not taken", True, ("undefined", "hard")),
        ("", "", "Requested action not taken", False, ("undefined", "soft")),
        # ... unless its reason is transient by nature.
        ("", "", "mailbox full", True, ("mailbox_full", "soft")),
        ("", "", "user is over quota", True, ("mailbox_full", "soft")),
        ("", "", "account has been suspended", True, ("suspended", "soft")),
        ("", "", "message expired in the queue", True, ("expired", "soft")),
        ("5.7.1", "554", "rejected for policy reasons", True, ("policy", "soft")),
        # The reply the remote server gave decides over an odd Status.
        ("4.0.0", "550", "5.1.1 user unknown", False, ("user_unknown", "hard")),
        ("5.1.1", "450", "user unknown, try later", False, ("user_unknown", "soft")),
        # A refusal of our MAIL FROM is about us, not the recipient.
        (
            "",
            "550",
            "after MAIL FROM:<x@ours.example>: 550 no such user",
            True,
            ("rejected", "soft"),
        ),
    ],
)
def test_severity_rules(status, reply, text, permanent, want):
    assert reasons.decide(status, reply, text, permanent=permanent) == want


@pytest.mark.parametrize(
    ("text", "permanent"),
    [
        ("----- The following addresses had permanent fatal errors -----", True),
        ("This is a permanent error; I've given up.", True),
        ("The attached message had PERMANENT fatal delivery errors!", True),
        ("Delivery to the following recipient failed permanently:", True),
        ("Your message could not be delivered.\n<<< 550 5.1.1 unknown", True),
        ("Your message could not be delivered.\n<<< 451 try later", False),
        ("THIS IS A WARNING MESSAGE ONLY", False),
    ],
)
def test_what_says_a_failure_is_permanent(text, permanent):
    assert reasons.says_permanent(text) is permanent
