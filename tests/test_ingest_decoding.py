"""Unlabelled and mislabelled mail decodes to what its writer meant (pure, no sockets).

Japanese mail is read as cp932 only when it looks Japanese; Latin and Chinese
mail is not turned into katakana; an address whose bytes are not text is no
address rather than a crash at the database.
"""

from __future__ import annotations

import pytest

from gateway.ingest.charsets import decode_bytes, decode_header_value
from gateway.ingest.parse import parse


def test_pound_sign_in_an_unlabelled_latin_subject_stays_a_pound_sign():
    raw = b"From: a@example.com\r\nSubject: \xa35 off your order\r\n\r\nx\r\n"
    assert parse(raw).subject == "£5 off your order"


def test_an_irish_name_in_latin_1_is_not_read_as_a_kanji():
    assert decode_header_value("Re: P\udce1draig") == "Re: Pádraig"
    assert decode_bytes(b"P\xe1draig", None) == "Pádraig"


def test_big5_with_one_bad_byte_keeps_its_chinese_and_loses_one_character():
    data = "會議記錄 下週一".encode("big5")[:-1] + b"\xff"
    text = decode_bytes(data, "big5")
    assert text.startswith("會議記錄 下週")
    assert not any("\uff61" <= ch <= "\uff9f" for ch in text)  # no half-width katakana


def test_a_big5_encoded_word_with_a_bad_byte_is_not_katakana():
    subject = (
        "=?big5?B?"
        + __import__("base64").b64encode("報價單".encode("big5")[:-1] + b"\xff").decode()
        + "?="
    )
    text = decode_header_value(subject)
    assert text.startswith("報價")


def test_unlabelled_big5_and_gb18030_are_detected():
    assert decode_bytes("會議記錄 下週一".encode("big5"), None) == "會議記錄 下週一"
    assert decode_bytes("关于会议的安排".encode("gb18030"), None) == "关于会议的安排"


def test_unlabelled_western_text_is_read_as_windows_1252():
    assert decode_bytes("Grüße aus München".encode("cp1252"), None) == "Grüße aus München"
    assert decode_bytes("Café crème brûlée".encode("cp1252"), None) == "Café crème brûlée"


@pytest.mark.parametrize(
    ("data", "charset", "expected"),
    [
        ("こんにちは、会議の件".encode("cp932"), None, "こんにちは、会議の件"),
        ("①お打ち合わせ".encode("cp932"), "shift_jis", "①お打ち合わせ"),
        ("ご提案の件".encode("cp932"), "us-ascii", "ご提案の件"),  # mislabelled Shift_JIS
        ("ご提案の件".encode("iso-2022-jp"), None, "ご提案の件"),
        ("ご提案".encode(), "shift_jis", "ご提案"),  # mislabelled UTF-8
        (b"\xf8\x9f", "shift_jis", "\ue63e"),  # a carrier emoji (user-defined area)
    ],
)
def test_japanese_stays_japanese(data, charset, expected):
    assert decode_bytes(data, charset) == expected


def test_raw_shift_jis_subject_without_encoded_words_is_japanese():
    raw = b"From: a@example.jp\r\nSubject: " + "お見積りの件".encode("cp932") + b"\r\n\r\nx\r\n"
    assert parse(raw).subject == "お見積りの件"


def test_big5_display_names_decode_and_their_addresses_survive():
    raw = (
        b"From: " + "林大明".encode("big5") + b" <lin@example.tw>\r\n"
        b"To: " + "王小美".encode("big5") + b" <wang@example.tw>\r\n"
        b"Subject: hi\r\n\r\nx\r\n"
    )
    mail = parse(raw)
    assert (mail.sender.name, mail.sender.email) == ("林大明", "lin@example.tw")
    assert [(a.name, a.email) for a in mail.to] == [("王小美", "wang@example.tw")]


def test_an_address_whose_bytes_are_not_text_is_no_address():
    raw = (
        b"From: caf\xe9@example.com\r\n"
        b"To: \xa4\xa4 <\xb7|@example.com>, ok@example.com, "
        + "用户@例子.广告".encode()
        + b"\r\nSubject: hi\r\n\r\nx\r\n"
    )
    mail = parse(raw)
    assert mail.sender is None and mail.from_addresses == []
    assert [a.email for a in mail.to] == ["ok@example.com", "用户@xn--fsqu00a.xn--4rr70v"]
    for a in mail.to:
        a.email.encode("utf-8")  # what the database needs: no surrogate left


def test_a_lone_surrogate_in_a_header_never_raises():
    assert decode_header_value("a\ud800b") == "a?b"


def test_an_address_longer_than_any_mailbox_can_be_is_no_address():
    raw = b"From: " + b"a" * 400 + b"@example.com\r\nTo: ok@example.com\r\n\r\nx\r\n"
    mail = parse(raw)
    assert mail.sender is None and [a.email for a in mail.to] == ["ok@example.com"]
