"""The MIME walk for display: the text part, the HTML part and the attachments.

Filed mail is read with the compat32 parser (:func:`gateway.ingest.parse.message_of`),
the one that does not raise on ``Message-Id: <>`` and keeps undecodable bytes
as surrogate escapes; every decoded string goes through
:mod:`gateway.ingest.charsets` so Japanese mail reads right and nothing
carries a lone surrogate out of here.  A part that cannot be decoded becomes
an attachment of unknown type (its bytes as stored) rather than an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message

from gateway.ingest.charsets import decode_bytes, decode_header_value
from gateway.ingest.parse import message_of, raw_values

UNKNOWN_TYPE = "application/octet-stream"
#: Nesting deeper than this is an attack or a loop, not mail.
MAX_DEPTH = 50
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(slots=True)
class Attachment:
    index: int
    filename: str
    content_type: str
    data: bytes
    content_id: str = ""

    def listing(self) -> dict[str, object]:
        return {
            "index": self.index,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": len(self.data),
        }


@dataclass(slots=True)
class MailView:
    text: str = ""
    html: str = ""
    attachments: list[Attachment] = field(default_factory=list)


def clean_text(value: str) -> str:
    """No lone surrogates (they crash any encoder downstream): U+FFFD instead."""
    return _SURROGATE.sub("\ufffd", value)


def _content_type(part: Message) -> str:
    try:
        return clean_text(part.get_content_type())
    except Exception:  # noqa: BLE001 - a broken Content-Type header
        return UNKNOWN_TYPE


def _latin1_headers(part: Message) -> Message:
    """Content-Disposition and Content-Type as latin-1 text, one character per byte.

    compat32 hands 8-bit header values out as lossy ``Header`` objects (every
    byte a U+FFFD), so the parameters are read from the raw bytes instead and
    decoded after, by :mod:`gateway.ingest.charsets`.
    """
    view = Message()
    for name in ("Content-Disposition", "Content-Type"):
        for value in raw_values(part, name)[:1]:
            view[name] = value.encode("utf-8", "surrogateescape").decode("latin-1")
    return view


def filename_of(part: Message) -> str:
    """RFC 2231 (``filename*=``) or RFC 2047 (``=?…?=``) or raw 8-bit: decoded, never raises."""
    try:
        headers = _latin1_headers(part)
        value = headers.get_param("filename", header="content-disposition")
        if value is None:
            value = headers.get_param("name")
        if value is None:
            return ""
        if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded latin-1 text)
            charset, _, text = value
            name = decode_bytes(text.encode("latin-1", "replace"), charset or None)
        else:
            raw = str(value).strip('"').encode("latin-1", "replace")
            name = decode_header_value(raw.decode("ascii", "surrogateescape"))
    except Exception:  # noqa: BLE001 - the parser is not total on hostile parameters
        return ""
    return clean_text(_CONTROL.sub("", name)).strip()[:255]


def _payload(part: Message) -> bytes | None:
    """The transfer-decoded bytes, or None when the part cannot be decoded."""
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        return None
    return data if isinstance(data, bytes) else None


def _raw_payload(part: Message) -> bytes:
    payload = part.get_payload()
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return b""


def _charset(part: Message) -> str | None:
    try:
        charset = part.get_param("charset")
    except Exception:  # noqa: BLE001
        return None
    return charset if isinstance(charset, str) else None


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("Content-Disposition") or "").strip().lower()
    return disposition.startswith("attachment")


def _leaves(msg: Message, depth: int = 0):
    if depth > MAX_DEPTH:
        return
    payload = msg.get_payload()
    if msg.is_multipart() and isinstance(payload, list):
        if _content_type(msg).startswith("message/"):
            yield msg  # an attached message is shown as an attachment, not inlined
            return
        for sub in payload:
            if isinstance(sub, Message):
                yield from _leaves(sub, depth + 1)
        return
    yield msg


def _message_bytes(part: Message) -> bytes:
    try:
        inner = part.get_payload(0)
        return inner.as_bytes() if isinstance(inner, Message) else b""
    except Exception:  # noqa: BLE001
        return b""


def view(raw: bytes) -> MailView:
    """The first text part, the first HTML part, and every other leaf as an attachment."""
    out = MailView()
    try:
        msg = message_of(raw)
        leaves = list(_leaves(msg))
    except Exception:  # noqa: BLE001 - unreadable as MIME: the whole thing is one attachment
        out.attachments.append(Attachment(0, "", UNKNOWN_TYPE, raw))
        return out
    for part in leaves:
        ctype = _content_type(part)
        if ctype.startswith("message/") and part.is_multipart():
            data: bytes | None = _message_bytes(part)
        else:
            data = _payload(part)
        if ctype in ("text/plain", "text/html") and not _is_attachment(part):
            slot = "html" if ctype == "text/html" else "text"
            if not getattr(out, slot) and data is not None:
                setattr(
                    out, slot, clean_text(decode_bytes(data, _charset(part)).replace("\x00", ""))
                )
                continue
        if data is None:
            data, ctype = _raw_payload(part), UNKNOWN_TYPE
        content_id = clean_text(decode_header_value(str(part.get("Content-ID") or "")))
        out.attachments.append(
            Attachment(
                index=len(out.attachments),
                filename=filename_of(part),
                content_type=ctype,
                data=data,
                content_id=content_id.strip().strip("<>").strip(),
            )
        )
    return out
