"""Tracking tokens: genuine tokens verify, everything else is None, never an error."""

from __future__ import annotations

import base64

import pytest

from tracking.tokens import (
    MAX_TOKEN_CHARS,
    Parsed,
    TokenKind,
    TokenSigner,
    keys_from_secrets,
)

SECRET = "s3cret-for-tests"


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(keys_from_secrets([SECRET]))


def all_tokens(signer: TokenSigner) -> list[tuple[str, TokenKind]]:
    return [
        (signer.open_token(4242), TokenKind.OPEN),
        (signer.click_token(4242, 3), TokenKind.CLICK),
        (signer.unsubscribe_token(4242), TokenKind.UNSUBSCRIBE),
    ]


def test_each_kind_round_trips_with_its_ids(signer):
    assert signer.verify(signer.open_token(7), TokenKind.OPEN) == Parsed(TokenKind.OPEN, 7, None, 0)
    assert signer.verify(signer.click_token(7, 0), "click") == Parsed(TokenKind.CLICK, 7, 0, 0)
    assert signer.verify(signer.unsubscribe_token(7), "unsubscribe") == Parsed(
        TokenKind.UNSUBSCRIBE, 7, None, 0
    )


@pytest.mark.parametrize("send_id", [0, 1, 127, 128, 2**21, 2**31 - 1, 2**63 - 1])
@pytest.mark.parametrize("link_index", [0, 1, 127, 128, 10_000])
def test_click_tokens_round_trip_across_varint_boundaries(signer, send_id, link_index):
    parsed = signer.verify(signer.click_token(send_id, link_index), TokenKind.CLICK)
    assert parsed is not None
    assert (parsed.send_id, parsed.link_index) == (send_id, link_index)


def test_tokens_for_typical_ids_are_short_and_url_safe(signer):
    for token in (signer.open_token(9_999_999), signer.click_token(9_999_999, 25)):
        assert len(token) <= 32
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(signer.click_token(2**63 - 1, 2**63 - 1)) <= MAX_TOKEN_CHARS


def test_tokens_for_different_sends_or_links_differ(signer):
    tokens = {signer.click_token(s, i) for s in range(50) for i in range(5)}
    assert len(tokens) == 250


def test_every_single_bit_flip_of_the_token_text_is_refused(signer):
    for token, kind in all_tokens(signer):
        for pos in range(len(token)):
            for bit in range(8):
                flipped = chr(ord(token[pos]) ^ (1 << bit))
                tampered = token[:pos] + flipped + token[pos + 1 :]
                assert signer.verify(tampered, kind) is None, (token, pos, bit)


def test_every_single_bit_flip_of_the_decoded_bytes_is_refused(signer):
    for token, kind in all_tokens(signer):
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for pos in range(len(raw)):
            for bit in range(8):
                tampered = bytearray(raw)
                tampered[pos] ^= 1 << bit
                text = base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
                assert signer.verify(text, kind) is None, (token, pos, bit)


def test_truncated_and_extended_tokens_are_refused(signer):
    for token, kind in all_tokens(signer):
        for cut in range(len(token)):
            assert signer.verify(token[:cut], kind) is None
        for extra in ("A", "AA", "AAAA", "=", "==", "%3D", " ", "\n", token):
            assert signer.verify(token + extra, kind) is None
            assert signer.verify(extra + token, kind) is None


def test_a_token_never_passes_as_another_kind(signer):
    for token, kind in all_tokens(signer):
        for other in TokenKind:
            if other is not kind:
                assert signer.verify(token, other) is None


def test_a_token_signed_with_another_key_is_refused(signer):
    stranger = TokenSigner(keys_from_secrets(["somebody-else"]))
    for token, kind in all_tokens(stranger):
        assert signer.verify(token, kind) is None


def test_rotated_keys_keep_old_links_working_and_new_links_use_the_new_key():
    old = TokenSigner(keys_from_secrets(["2025-secret"]))
    rotated = TokenSigner(keys_from_secrets(["2026-secret", "2025-secret"]))
    old_token = old.click_token(10, 2)
    assert rotated.verify(old_token, "click") == Parsed(TokenKind.CLICK, 10, 2, 1)
    new_token = rotated.click_token(10, 2)
    assert rotated.verify(new_token, "click").key_index == 0
    assert old.verify(new_token, "click") is None  # the old deployment cannot read new links
    retired = TokenSigner(keys_from_secrets(["2026-secret"]))
    assert retired.verify(old_token, "click") is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "=",
        "A",
        "AAAA",
        "!!!!!!!!!!!!!!!!!!!!!!!!",
        "EUDAxAf1B4GOk8+Aci8YHKE",  # standard alphabet instead of url-safe
        "EUDAxAf1B4GOk8-Aci8YHKE=",  # padding
        "EUDAxAf1 B4GOk8-Aci8YHKE",
        "../../etc/passwd",
        "%00",
        "\x00" * 24,
        "日本語のトークンです日本語のトークンです",
        "A" * 10_000,
        "A" * (MAX_TOKEN_CHARS + 1),
        base64.urlsafe_b64encode(b"\x11" + b"\xff" * 40).rstrip(b"=").decode(),
    ],
)
def test_garbage_is_refused_without_raising(signer, garbage):
    for kind in TokenKind:
        assert signer.verify(garbage, kind) is None


@pytest.mark.parametrize("not_a_token", [None, 123, b"bytes", ["list"]])
def test_non_string_input_is_refused_without_raising(signer, not_a_token):
    assert signer.verify(not_a_token, TokenKind.OPEN) is None


def test_an_unknown_kind_is_refused_without_raising(signer):
    token = signer.open_token(1)
    for kind in ("bogus", 0, 99, None):
        assert signer.verify(token, kind) is None


def test_overlong_varint_encodings_are_refused(signer):
    # Hand-craft a payload whose send id uses a redundant trailing zero group;
    # even correctly signed by us it must not parse (one send, one encoding).
    import hmac

    key = keys_from_secrets([SECRET])[0]
    header = base64.urlsafe_b64decode(signer.open_token(5) + "==")[:2]
    body = header + bytes([0x85, 0x00])
    tag = hmac.digest(key, body, "sha256")[:12]
    token = base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode()
    assert signer.verify(token, "open") is None


def test_keys_are_derived_per_purpose_and_refuse_empty_secrets():
    derived = keys_from_secrets(["abc", "def"])
    assert len(derived) == 2 and all(len(k) == 32 for k in derived)
    assert derived[0] != b"abc".ljust(32, b"\0") and derived[0] != derived[1]
    assert keys_from_secrets(["abc"]) == derived[:1]  # deterministic across restarts
    with pytest.raises(ValueError):
        keys_from_secrets([""])
    with pytest.raises(ValueError):
        TokenSigner([])
    with pytest.raises(ValueError):
        TokenSigner([b"short"])


def test_negative_ids_cannot_be_signed(signer):
    with pytest.raises(ValueError):
        signer.open_token(-1)
    with pytest.raises(ValueError):
        signer.click_token(1, -1)
