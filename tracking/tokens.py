"""Signed, compact, URL-safe tokens for tracking and unsubscribe links.

A token is what a recipient's mail client carries back to us in ``/t/o/…``,
``/t/c/…`` and ``/u/…``.  It must be short (some clients and scanners mangle
long URLs), impossible to forge or to re-aim at another send, and cheap to
check, because every open pixel of a mass mailing lands on it.

Layout (before base64url without padding)::

    byte 0     version (high nibble) | kind (low nibble)
    byte 1     key id: a one-byte fingerprint of the signing key
    varint     send_id
    varint     link_index               (click tokens only)
    12 bytes   HMAC-SHA256(key, all bytes above), truncated

The kind and the key id are inside the signed bytes, so a click token can
never pass as an unsubscribe token and the key id cannot be swapped.

Why a 96-bit tag: forging a token is an online attack — each guess costs an
HTTP request that we answer with 404.  At a (generous) billion guesses per
second for a year an attacker gets ~2^55 tries, leaving a 2^-41 chance per
year against a 96-bit tag; 80 bits would already be comfortable, and 96 bits
fill whole base64 quartets (12 bytes = 16 characters) so we pay nothing for
the margin.  A click token for a send id below 2^21 is 18 bytes, 24
characters; the longest possible token (two 63-bit ids) is 43 characters.

Why a key id and a key list: ``MAILGATE_SECRET_KEY`` may be rotated.  The
first key signs; every key in the list verifies, so links in mail already
delivered keep working for as long as the old secret stays in the grace
list.  The id is a hint only (one byte, collisions are possible), so every
key with a matching id is tried.

Why per-purpose keys: the secret key also signs other things in mailgate;
:func:`keys_from_secrets` derives a tracking-only key with HKDF so a
signature made for one purpose can never be replayed for another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable
from enum import IntEnum
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "TAG_BYTES",
    "MAX_TOKEN_CHARS",
    "TokenKind",
    "Parsed",
    "TokenSigner",
    "keys_from_secrets",
]

VERSION = 1
TAG_BYTES = 12
#: Longest token we are willing to decode; anything longer is garbage.  Two
#: 9-byte varints (63-bit ids) + header + tag = 32 bytes = 43 characters.
MAX_TOKEN_CHARS = 43
_MAX_ID = (1 << 63) - 1
_HKDF_INFO = b"mailgate/tracking-token/v1"
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SIXBITS = {char: value for value, char in enumerate(_ALPHABET)}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")  # bytes.translate: ~10x str.translate
# Bits of the last character that carry no data, by len(token) % 4.
_UNUSED_BITS = {0: 0, 2: 0x0F, 3: 0x03}


class TokenKind(IntEnum):
    """What a token lets its bearer do; the value is signed into the token."""

    OPEN = 1
    CLICK = 2
    UNSUBSCRIBE = 3


class Parsed(NamedTuple):
    """A verified token.  ``key_index`` tells which key of the list verified
    it (0 is the current key), so the caller can count old-key traffic
    before retiring a secret.  (A NamedTuple: built on every request, and
    four times cheaper to create than a frozen dataclass.)"""

    kind: TokenKind
    send_id: int
    link_index: int | None
    key_index: int


def keys_from_secrets(secrets: Iterable[str]) -> list[bytes]:
    """Derive one 32-byte tracking key per secret, newest secret first.

    HKDF-SHA256 with a purpose label gives domain separation: the same
    ``MAILGATE_SECRET_KEY`` can feed other derivations without any of their
    outputs being usable as a tracking key.  Empty secrets are refused, since
    a token signed with an empty key is a token anybody can mint.
    """
    keys = []
    for secret in secrets:
        if not secret:
            raise ValueError("empty secret key")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
        keys.append(hkdf.derive(secret.encode("utf-8")))
    return keys


def _key_id(key: bytes) -> int:
    return hashlib.sha256(b"mailgate/key-id\x00" + key).digest()[0]


def _put_varint(out: bytearray, value: int) -> None:
    if not 0 <= value <= _MAX_ID:
        raise ValueError(f"id out of range: {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get_varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """Read a canonical LEB128 varint; None if truncated, overlong or too big."""
    value = 0
    shift = 0
    while pos < end and shift <= 63:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:  # overlong: a trailing zero group
                return None
            return (value, pos) if value <= _MAX_ID else None
        shift += 7
    return None


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(token: str) -> bytes | None:
    """Strict base64url: alphabet only, no padding, canonical trailing bits.

    The canonical check matters: without it two tokens differing only in the
    unused low bits of the last character would decode to the same bytes and
    both verify, so a flipped bit would go unnoticed.
    """
    unused = _UNUSED_BITS.get(len(token) % 4)
    if unused is None or not _TOKEN_CHARS.fullmatch(token):
        return None
    if _SIXBITS[token[-1]] & unused:
        return None
    try:
        padded = (token + "=" * (-len(token) % 4)).encode("ascii")
        return binascii.a2b_base64(padded.translate(_TO_STANDARD), strict_mode=True)
    except (binascii.Error, ValueError):
        return None


class TokenSigner:
    """Mint and check tracking tokens with a list of keys (newest first)."""

    __slots__ = ("_macs", "_ids", "_headers", "_first_byte")

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("TokenSigner needs at least one key")
        if any(len(k) < 16 for k in keys):
            raise ValueError("tracking keys must be at least 16 bytes")
        # Keyed HMAC states, copied per use: saves the key schedule on every
        # request (measured 1.4 µs instead of 2.4 µs for hmac.digest).
        self._macs = [hmac.new(k, digestmod=hashlib.sha256) for k in keys]
        self._ids = [_key_id(k) for k in keys]
        self._headers = {kind: bytes((VERSION << 4 | kind, self._ids[0])) for kind in TokenKind}
        self._first_byte = {kind: VERSION << 4 | kind.value for kind in TokenKind}

    def open_token(self, send_id: int) -> str:
        return self._sign(TokenKind.OPEN, send_id, None)

    def click_token(self, send_id: int, link_index: int) -> str:
        return self._sign(TokenKind.CLICK, send_id, link_index)

    def unsubscribe_token(self, send_id: int) -> str:
        return self._sign(TokenKind.UNSUBSCRIBE, send_id, None)

    def _sign(self, kind: TokenKind, send_id: int, link_index: int | None) -> str:
        payload = bytearray(self._headers[kind])
        _put_varint(payload, send_id)
        if kind is TokenKind.CLICK:
            _put_varint(payload, link_index if link_index is not None else -1)
        tag = self._tag(0, bytes(payload))
        return _b64encode(bytes(payload) + tag)

    def _tag(self, key_index: int, body: bytes) -> bytes:
        mac = self._macs[key_index].copy()
        mac.update(body)
        return mac.digest()[:TAG_BYTES]

    def verify(self, token: object, kind: TokenKind | int | str) -> Parsed | None:
        """The parsed token if it is genuine and of ``kind``; else None.

        Never raises: a token comes straight from a URL anybody can type, and
        every failure (garbage, truncation, tampering, wrong kind, retired key)
        must look the same to the caller — a 404 that records nothing.
        """
        if kind.__class__ is TokenKind:
            want = kind
        else:
            try:
                want = _as_kind(kind)
            except (KeyError, ValueError, TypeError):
                return None
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            return None
        raw = _b64decode(token)
        if raw is None or len(raw) < 3 + TAG_BYTES:
            return None
        body_end = len(raw) - TAG_BYTES
        if raw[0] != self._first_byte[want]:
            return None
        got = _get_varint(raw, 2, body_end)
        if got is None:
            return None
        send_id, pos = got
        link_index = None
        if want is TokenKind.CLICK:
            got = _get_varint(raw, pos, body_end)
            if got is None:
                return None
            link_index, pos = got
        if pos != body_end:
            return None
        body, tag = raw[:body_end], raw[body_end:]
        key_id = raw[1]
        for index, candidate_id in enumerate(self._ids):
            if candidate_id != key_id:
                continue
            if hmac.compare_digest(self._tag(index, body), tag):
                return Parsed(want, send_id, link_index, index)
        return None


def _as_kind(kind: TokenKind | int | str) -> TokenKind:
    if isinstance(kind, TokenKind):
        return kind
    if isinstance(kind, str):
        return TokenKind[kind.upper()]
    return TokenKind(kind)
