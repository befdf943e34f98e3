"""The MIME composer: bytes a real parser reads back; DKIM signatures that verify."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from datetime import UTC, datetime

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.sending.compose import compose, make_message_id
from gateway.sending.dkim import sign

UNSUB = (
    "mailto:unsubscribe+3f2a9c0d7e6b5a4c3f2a9c0d7e6b5a4c@bounce.zylker.jp",
    "https://mail.zylker.jp/unsubscribe/3f2a9c0d7e6b5a4c3f2a9c0d7e6b5a4c3f2a9c0d7e6b5a4c",
)


def make(**overrides) -> bytes:
    args = dict(
        from_addr="takizawa@zylker.jp",
        from_name="滝沢 健二",
        to_addr="yamada@example.jp",
        to_name="山田 太郎",
        subject="ご提案の件について",
        html="<p>山田 様</p>\n<p>いつもお世話になっております。</p>\n",
        text="山田 様\nいつもお世話になっております。\n",
        message_id=make_message_id("zylker.jp"),
        headers={"X-Mailgate-Send": "s-42"},
        list_unsubscribe=UNSUB,
        one_click=True,
        date=datetime(2026, 11, 23, 9, 30, tzinfo=UTC),
    )
    args.update(overrides)
    return compose(**args)


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def body(msg, kind: str) -> str:
    """Decoded body text; MIME's canonical CRLF line breaks read as newlines."""
    part = msg.get_body((kind,)) if msg.is_multipart() else msg
    return part.get_content().replace("\r\n", "\n")


def header_lines(raw: bytes, name: str) -> list[bytes]:
    """The raw physical lines of one header, continuation lines included."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    match = re.search(rb"^" + name.encode() + rb":.*?(?=\r\n[^ \t]|\Z)", head, re.M | re.S | re.I)
    assert match, f"{name} missing"
    return match.group(0).split(b"\r\n")


def test_japanese_message_parses_back_to_the_same_content():
    raw = make()
    msg = parse(raw)
    assert msg["Subject"] == "ご提案の件について"
    assert msg["From"].addresses[0].display_name == "滝沢 健二"
    assert msg["From"].addresses[0].addr_spec == "takizawa@zylker.jp"
    assert msg["To"].addresses[0].display_name == "山田 太郎"
    assert msg.get_content_type() == "multipart/alternative"
    assert body(msg, "plain") == "山田 様\nいつもお世話になっております。\n"
    assert body(msg, "html") == ("<p>山田 様</p>\n<p>いつもお世話になっております。</p>\n")
    assert msg["Date"].datetime == datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    assert msg["MIME-Version"] == "1.0"
    assert msg["X-Mailgate-Send"] == "s-42"
    assert not msg.defects and all(not p.defects for p in msg.walk())


def test_lines_are_crlf_and_short():
    raw = make(html="<p>" + "長い本文" * 400 + "</p>" + "x" * 3000, text="y" * 5000)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    lines = raw.split(b"\r\n")
    unsubscribe = header_lines(raw, "List-Unsubscribe")  # URIs cannot be folded
    assert max(len(line) for line in lines if line not in unsubscribe) <= 78
    assert max(len(line) for line in lines) <= 998


def test_long_japanese_subject_is_split_on_character_boundaries():
    subject = (
        "【重要】ご提案の件について：新製品のご案内と今月のセミナー日程のお知らせ（𠮷野家様向け）"
        * 2
    )
    raw = make(subject=subject)
    lines = header_lines(raw, "Subject")
    assert len(lines) > 2
    for line in lines:
        assert len(line) <= 78
        word = re.search(rb"=\?utf-8\?B\?([A-Za-z0-9+/=]+)\?=", line).group(1)
        base64.b64decode(word).decode("utf-8")  # each word is whole characters
    assert parse(raw)["Subject"] == subject


def test_ascii_subject_stays_readable():
    raw = make(subject="Your proposal")
    assert b"\r\nSubject: Your proposal\r\n" in raw


def test_list_unsubscribe_is_never_encoded_and_folds_only_at_the_comma():
    raw = make(subject="ご案内 " * 30, to_name="山田 太郎" * 10)
    lines = header_lines(raw, "List-Unsubscribe")
    assert all(b"=?" not in line for line in lines)
    assert lines == [
        b"List-Unsubscribe: <" + UNSUB[0].encode() + b">,",
        b" <" + UNSUB[1].encode() + b">",
    ]
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    assert str(parse(raw)["List-Unsubscribe"]) == f"<{UNSUB[0]}>, <{UNSUB[1]}>"


def test_short_list_unsubscribe_stays_on_one_line():
    raw = make(list_unsubscribe=("mailto:u@z.jp", "https://z.jp/u/1"))
    assert header_lines(raw, "List-Unsubscribe") == [
        b"List-Unsubscribe: <mailto:u@z.jp>, <https://z.jp/u/1>"
    ]


def test_one_click_needs_an_https_uri():
    with pytest.raises(ValueError):
        make(list_unsubscribe=("mailto:u@z.jp", None), one_click=True)
    raw = make(list_unsubscribe=("mailto:u@z.jp", None), one_click=False)
    assert b"List-Unsubscribe-Post" not in raw


@pytest.mark.parametrize(
    "field", ["subject", "from_name", "to_name", "to_addr", "from_addr", "message_id"]
)
@pytest.mark.parametrize("payload", ["x\r\nBcc: victim@example.com", "x\nBcc: v@e.com", "x\rB: y"])
def test_header_injection_is_refused(field, payload):
    with pytest.raises(ValueError):
        make(**{field: payload})


def test_header_injection_in_extra_headers_and_unsubscribe_is_refused():
    with pytest.raises(ValueError):
        make(headers={"X-Campaign": "a\r\nBcc: v@e.com"})
    with pytest.raises(ValueError):
        make(headers={"X-Bad\r\nBcc": "v"})
    with pytest.raises(ValueError):
        make(headers={"Bcc": "v@e.com"})
    with pytest.raises(ValueError):
        make(list_unsubscribe=("mailto:u@z.jp", "https://z.jp/u\r\nBcc: v@e.com"))
    with pytest.raises(ValueError):
        make(list_unsubscribe=("mailto:u@z.jp", "https://z.jp/u 1"))


def test_ascii_display_name_with_specials_is_quoted():
    raw = make(to_name='Sato, "Hanako" (Sales)')
    assert parse(raw)["To"].addresses[0].display_name == 'Sato, "Hanako" (Sales)'
    assert b'To: "Sato, \\"Hanako\\" (Sales)" <yamada@example.jp>' in raw


def test_display_name_that_looks_encoded_is_not_decoded_by_the_reader():
    raw = make(to_name="=?utf-8?B?5bGx55Sw?=")
    assert parse(raw)["To"].addresses[0].display_name == "=?utf-8?B?5bGx55Sw?="


def test_bad_addresses_are_refused():
    for addr in ["no-at-sign", "a b@example.jp", "<x@example.jp>", "山田@example.jp"]:
        with pytest.raises(ValueError):
            make(to_addr=addr)


def test_idn_domain_is_punycoded():
    raw = make(to_addr="info@日本語.jp")
    assert parse(raw)["To"].addresses[0].domain == "xn--wgv71a119e.jp"


def test_text_only_message():
    msg = parse(make(html=None, text="本文のみ"))
    assert msg.get_content_type() == "text/plain"
    assert body(msg, "plain") == "本文のみ\n"


def test_message_ids_are_unique_and_bracketed():
    ids = {make_message_id("zylker.jp") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("<") and i.endswith("@zylker.jp>") for i in ids)
    assert parse(make(message_id="abc@zylker.jp"))["Message-ID"] == "<abc@zylker.jp>"


def test_ascii_bodies_with_trailing_spaces_and_dots_survive():
    text = "line with trailing space \nfrom here\n.\n" + "z" * 1200 + "\n"
    msg = parse(make(text=text, html="<p>a</p>"))
    assert body(msg, "plain") == text


def test_japanese_corpus_subjects_and_bodies_round_trip(corpora):
    """Corpus round-trip: every Japanese sample body composes and parses back."""
    samples = sorted((corpora / "japanese").glob("*.eml"))[:10]
    if not samples:
        pytest.skip("no Japanese samples in corpora")
    for path in samples:
        original = parse(path.read_bytes())
        source = original.get_body(("plain", "html"))
        if source is None:
            continue
        try:
            content = source.get_content()
        except (LookupError, UnicodeError):
            continue
        subject = str(original.get("Subject") or "件名なし")
        subject = " ".join(subject.split())
        msg = parse(make(subject=subject, text=content, html=None))
        assert msg["Subject"] == subject
        assert body(msg, "plain").rstrip("\n") == content.replace("\r\n", "\n").replace(
            "\r", "\n"
        ).rstrip("\n")


# ----------------------------------------------------------------- DKIM


@pytest.fixture(scope="module")
def rsa_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    return pem, txt


def dns_for(txt: bytes):
    def dnsfunc(name, timeout=5):
        return txt if name == b"mg2026._domainkey.zylker.jp." else None

    return dnsfunc


def test_dkim_signed_message_verifies(rsa_key):
    pem, txt = rsa_key
    signed = sign(make(), selector="mg2026", domain="zylker.jp", private_key_pem=pem)
    assert signed.startswith(b"DKIM-Signature: ")
    sig = parse(signed)["DKIM-Signature"]
    assert "c=relaxed/relaxed" in sig and "a=rsa-sha256" in sig
    assert "list-unsubscribe-post" in sig.lower()
    assert dkim.verify(signed, dnsfunc=dns_for(txt))


def test_dkim_fails_on_tampered_body_or_unsubscribe(rsa_key):
    pem, txt = rsa_key
    signed = sign(make(), selector="mg2026", domain="zylker.jp", private_key_pem=pem)
    tampered = signed.replace(b"--\r\n", b"--\r\nextra\r\n")
    assert tampered != signed
    assert not dkim.verify(tampered, dnsfunc=dns_for(txt))
    swapped = signed.replace(b"https://mail.zylker.jp/", b"https://evil.example/")
    assert not dkim.verify(swapped, dnsfunc=dns_for(txt))


def test_dkim_with_a_bad_key_raises_value_error():
    with pytest.raises(ValueError):
        sign(make(), selector="s", domain="zylker.jp", private_key_pem=b"not a key")
