"""Defensive reading of hostile mail.

Bounces come from every broken MTA on the internet, so nothing here may
raise.  We parse with ``compat32`` (``policy.default`` raises ``IndexError``
on ``Message-Id: <>`` and friends), walk parts iteratively with a budget
(deep nesting must not blow the stack), and decode text with a charset
fallback chain that knows Japanese mail (unlabelled ISO-2022-JP, Shift_JIS
labelled as anything).
"""

from __future__ import annotations

import email
import email.header
from collections.abc import Iterator
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser

from gateway.ingest.charsets import decode_bytes as decode_text

MAX_PARTS = 200
MAX_DEPTH = 20
MAX_TEXT = 256 * 1024


def parse(raw: bytes) -> Message:
    """Parse ``raw`` without ever raising; a hopeless body degrades to headers only."""
    try:
        return email.message_from_bytes(raw, policy=policy.compat32)
    except Exception:  # noqa: S110 - RecursionError on absurd nesting etc.: headers only
        pass
    try:
        return BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    except Exception:
        return Message()


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Bytes to text, never raising: the ingest path's decoding (cp932 for JIS/SJIS)."""
    return decode_text(data, charset)


def header(msg: Message, name: str) -> str:
    """One header as readable text (RFC 2047 decoded); ``""`` if absent or broken."""
    try:
        value = msg.get(name)
    except Exception:
        return ""
    if value is None:
        return ""
    return decode_header_value(value)


def decode_header_value(value: object) -> str:
    if isinstance(value, email.header.Header):
        value = str(value)
    text = str(value)
    if "=?" not in text:
        return text
    try:
        chunks = email.header.decode_header(text)
    except Exception:
        return text
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            out.append(decode_bytes(chunk, charset))
        else:
            out.append(chunk)
    return "".join(out)


def content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "text/plain"


def param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
    except Exception:
        return ""
    if isinstance(value, tuple):  # RFC 2231 encoded
        value = value[2]
    return str(value or "").strip().lower()


def walk(msg: Message) -> Iterator[tuple[Message, int]]:
    """Yield ``(part, depth)`` depth-first, iteratively, within a part budget."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        yield part, depth
        if depth >= MAX_DEPTH:
            continue
        try:
            payload = part.get_payload()
        except Exception:  # noqa: S112 - a broken part has no children to walk
            continue
        if isinstance(payload, list):
            children = [p for p in payload if isinstance(p, Message)]
            stack.extend((child, depth + 1) for child in reversed(children))


def raw_payload(part: Message) -> bytes:
    """The transfer-decoded body bytes of a non-multipart part."""
    try:
        payload = part.get_payload()
        if isinstance(payload, list):
            # message/* parsed into sub-messages: serialise them back.
            return "\n".join(_as_string(p) for p in payload if isinstance(p, Message)).encode(
                "utf-8", errors="replace"
            )
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if data is None:
        try:
            text = part.get_payload()
        except Exception:
            return b""
        if isinstance(text, str):
            return text.encode("utf-8", errors="surrogateescape")
        return b""
    return data[:MAX_TEXT] if isinstance(data, bytes) else b""


def _as_string(msg: Message) -> str:
    try:
        return msg.as_string()
    except Exception:
        try:
            return "\n".join(f"{k}: {v}" for k, v in msg.items())
        except Exception:
            return ""


def text(part: Message) -> str:
    """The decoded text of a non-multipart part."""
    data = raw_payload(part)
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return decode_bytes(data[:MAX_TEXT], charset)
