"""Every real Japanese and malformed message of the shared corpora through a running dropbox."""

from __future__ import annotations

import re
import smtplib
import uuid

from gateway.ingest.parse import first_message_id, from_addresses
from gateway.receive.smtp import from_fields

JAPANESE_SUBJECTS = {
    "au-email.eml": "※本文はこのままで送信してね",
    "docomo-jis.eml": "テスト",
    "docomo-decomail.eml": "テスト",
    "iphone-circled-numbers-in-jis.eml": "テスト①",
    "iphone-cp932.eml": "Re: 【NKSC】test",
    "iphone-unicode-emoji.eml": "絵文字🎅",
    "pc-mail-single.eml": "タイトルの長いメールの場合の対処を実装するためのテストケースとしてのメールに含まれている件名であるサブジェクト部分",
    "au-decomail2.eml": "Fwd: 【NurseryMail】日日",
    "softbank-gmail-utf8.eml": "テストです\ue221",
    "docomo-emoji.eml": "題名\ue676",
    "softbank-emoji.eml": "題名\ue6d8",
    "au-emoji.eml": "題名\ue09b",
}

_FROM = re.compile(rb"^From:.*(?:\r?\n[ \t].*)*(?:\r?\n)?", re.IGNORECASE | re.MULTILINE)


def as_user(raw: bytes, address: str) -> bytes:
    """The corpus keeps its own senders; put ours in the header block so the dropbox accepts it."""
    if raw.startswith(b"From "):  # an mbox separator line, not a header
        raw = raw.split(b"\n", 1)[1]
    head, sep, body = (
        raw.partition(b"\n\n") if b"\r\n\r\n" not in raw else raw.partition(b"\r\n\r\n")
    )
    head = _FROM.sub(b"", head).strip(b"\r\n")
    return b"From: " + address.encode() + b"\r\n" + head + (sep or b"\r\n\r\n") + body


def test_every_japanese_and_malformed_message_is_accepted_and_japanese_subjects_decode(
    mailgate, corpora
):
    org = mailgate.org(f"Corpus {uuid.uuid4().hex[:6]}")
    user = mailgate.user(org, "rep@corpus.example", "担当 者")
    api = mailgate.api(user)
    files = sorted((corpora / "japanese").glob("*.eml")) + sorted(
        p
        for p in (corpora / "malformed").rglob("*")
        if p.is_file() and not p.parent.name == "LICENSES" and p.suffix in (".eml", ".txt", "")
    )
    assert len(files) > 50
    codes = {}
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=60) as s:
        for path in files:
            raw = as_user(path.read_bytes(), user["email"])
            s.ehlo_or_helo_if_needed()
            s.mail(user["email"])
            s.rcpt(user["dropbox_address"])
            s.putcmd("data")
            assert s.getreply()[0] == 354
            body = re.sub(rb"(?m)^\.", b"..", raw.replace(b"\r\n", b"\n")).replace(b"\n", b"\r\n")
            s.send(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
            codes[path.name] = s.getreply()
    refused = {k: v for k, v in codes.items() if v[0] != 250}
    assert refused == {}, refused
    filed = {}
    by_header = {}
    after = 0
    while True:
        page = api.get("/api/v1/events", params={"after": after, "limit": 1000}).json()["items"]
        if not page:
            break
        for e in page:
            if e["type"] == "email.filed":
                filed[e["data"]["message_id"]] = e["data"]
                by_header[e["data"]["header_message_id"]] = e["data"]["subject"]
        after = page[-1]["id"]
    assert len(filed) >= len(files) - 10  # a few corpus files share a Message-ID: filed once
    # Several corpus files share a Message-ID: only the first sent of each is filed.
    first_with_id: dict[str, str] = {}
    for path in files:
        mid = first_message_id(
            re.search(rb"(?im)^message-id:(.*)$", path.read_bytes() + b"\nmessage-id:")
            .group(1)
            .decode("ascii", "replace")
        )
        first_with_id.setdefault(mid, path.name)
    checked = 0
    for name, subject in JAPANESE_SUBJECTS.items():
        raw = (corpora / "japanese" / name).read_bytes()
        mid = first_message_id(
            re.search(rb"(?im)^message-id:(.*)$", raw).group(1).decode("ascii", "replace")
        )
        if first_with_id[mid] != name:
            continue
        assert by_header[mid] == subject, name
        checked += 1
    assert checked >= 8
    # the receiver is still healthy
    assert api.get("/healthz").status_code == 200


FROM_EDGE_CASES = [
    b"From: a@x.test\r\nTo: b@y.test\r\n\r\nbody\r\n",
    b'To: b@y.test\nFROM: "Name, Last" <a@x.test>\n\nbody\n',
    b"From: a@x.test,\r\n b@x.test\r\nSubject: s\r\n\r\n",
    b"From sender Mon Jan  1 00:00:00 2026\nFrom: a@x.test\n\nbody",
    b"Subject: s\nnot a header line\nFrom: a@x.test\n\n",
    b"Subject: s\n\nFrom: a@x.test\n",
    b"From : a@x.test\nFrom: b@x.test\nFrom: c@x.test\n\n",
    b" continued\nFrom: a@x.test\n",
    b"From: a@x.test",
    b"From: =?utf-8?b?5bGx55Sw?= <a@x.test>\rTo: b@y.test\r\rbody",
    b"X: 1\nFrom x\n c@x.test\nFrom: a@x.test\n\n",
    b"",
]


def test_the_data_check_reads_the_same_from_addresses_from_the_from_fields_alone(corpora):
    """The SMTP DATA check parses only the From fields: it must find what a full parse finds."""
    files = sorted(
        p
        for p in corpora.rglob("*")
        if p.is_file() and p.parent.name != "LICENSES" and p.suffix in (".eml", ".txt", "")
    )
    assert len(files) > 50
    for raw in FROM_EDGE_CASES + [p.read_bytes() for p in files]:
        assert from_addresses(from_fields(raw)) == from_addresses(raw), raw[:300]
