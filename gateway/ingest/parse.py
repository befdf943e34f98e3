"""Reading a raw message into the fields we file, whatever shape it arrives in.

Parsing uses the compat32 policy and decodes headers ourselves: the modern
policy raises IndexError on ``Message-Id: <>`` and LookupError on unknown
charsets.  Nothing here raises on any input; problems are kept as defects.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache

from gateway.addresses import normalise
from gateway.ingest.charsets import decode_bytes, decode_header_value

_MSGID = re.compile(r"<([^<>\s]+)>")
MAX_BODY_CHARS = 2_000_000
#: Longer is no address (RFC 5321: 64 + 1 + 255) and would not fit the columns that keep one.
MAX_ADDRESS = 320


@dataclass(slots=True)
class Address:
    name: str
    email: str  # normalised

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "email": self.email}


@dataclass(slots=True)
class ParsedMail:
    message_id: str | None
    content_hash: str
    subject: str
    sender: Address | None
    from_addresses: list[str]
    to: list[Address]
    cc: list[Address]
    date: datetime | None
    in_reply_to: str | None
    references: list[str]
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)


def content_hash(raw: bytes) -> str:
    """Same bytes whatever the line endings a hop rewrote."""
    return hashlib.sha256(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")).hexdigest()


def first_message_id(value: str | None) -> str | None:
    if not value:
        return None
    m = _MSGID.search(value)
    if m:
        return m.group(1)[:990]
    bare = value.strip()
    return bare[:990] if bare and " " not in bare and "@" in bare else None


def all_message_ids(value: str | None) -> list[str]:
    return [m[:990] for m in _MSGID.findall(value or "")][-50:]


def raw_values(msg: Message, name: str) -> list[str]:
    """Header values as received (compat32 would wrap 8-bit ones in lossy Header objects)."""
    key = name.lower()
    return [str(v) for k, v in msg.raw_items() if k.lower() == key]


def _headers(msg: Message) -> dict[str, list[str]]:
    """Lower-cased name → values as received, built once (each look-up used to walk them all)."""
    index: dict[str, list[str]] = {}
    for k, v in msg.raw_items():
        index.setdefault(k.lower(), []).append(str(v))
    return index


def _addresses(headers: dict[str, list[str]], name: str) -> list[Address]:
    values = headers.get(name.lower())
    if not values:
        return []
    return [Address(n, e) for n, e in _address_list(tuple(values))]


@lru_cache(maxsize=4096)
def _address_list(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(display name, normalised address) pairs of one header, cached.

    The same From/To/Cc values come back message after message (a rep's own
    address, their regular correspondents), and the stdlib address parser is
    the costliest part of reading the headers.  Pure, so caching is safe.
    """
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    try:
        pairs = getaddresses(list(values))
    except Exception:  # noqa: BLE001 - malformed address lists must not stop filing
        return ()
    for display, addr in pairs:
        norm = normalise(_address_text(addr))
        if norm is None or len(norm) > MAX_ADDRESS or norm in seen:
            continue
        seen.add(norm)
        out.append((decode_header_value(display)[:300], norm))
    return tuple(out)


def _address_text(addr: str) -> str | None:
    """The address as text, or None when its bytes are not text at all.

    Raw 8-bit bytes arrive as surrogate escapes: UTF-8 ones (an
    internationalised address sent without encoding) are decoded; anything
    else (Big5, Latin-1, stray surrogates) is no address, since no mailbox can
    be matched on bytes nobody can read, and the database refuses surrogates.
    """
    if addr.isascii():
        return addr
    try:
        return addr.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        return None


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


#: Transfer encodings ``get_payload(decode=True)`` decodes; any other leaves the bytes as sent.
_ENCODED = frozenset(("quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue"))


def _decoded_payload(part: Message, body: bytes | None) -> bytes | None:
    """``part.get_payload(decode=True)``, from the body bytes when :func:`_read` kept them."""
    if body is None:
        return part.get_payload(decode=True)
    if str(part.get("content-transfer-encoding", "")).lower() not in _ENCODED:
        return body  # what get_payload would rebuild from the surrogate-escaped text
    part.set_payload(body.decode("ascii", "surrogateescape"))
    return part.get_payload(decode=True)


def _bodies(msg: Message, defects: list[str], body: bytes | None = None) -> tuple[str, str]:
    """Text and HTML bodies; ``body``: the raw body of a single-part ``msg`` (see _read)."""
    text_parts: list[str] = []
    html_parts: list[str] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        disposition = (part.get("Content-Disposition") or "").lower()
        if disposition.startswith("attachment"):
            continue
        try:
            payload = _decoded_payload(part, body if part is msg else None)
        except Exception as exc:  # noqa: BLE001
            defects.append(f"body: {type(exc).__name__}")
            continue
        if not isinstance(payload, bytes):
            continue
        text = decode_bytes(payload, part.get_param("charset")).replace("\x00", "")
        (html_parts if ctype == "text/html" else text_parts).append(text)
    return "\n".join(text_parts)[:MAX_BODY_CHARS], "\n".join(html_parts)[:MAX_BODY_CHARS]


def _split_head(raw: bytes) -> tuple[bytes, bytes] | None:
    """(header block with its blank line, body), or None when there is no blank line."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    if not ends:
        return None
    end = min(ends)
    cut = end + (4 if raw.startswith(b"\r\n\r\n", end) else 2)
    return raw[:cut], raw[cut:]


def _read(raw: bytes) -> tuple[Message, bytes | None]:
    """``message_from_bytes`` (compat32), without feeding a single-part body line by line.

    The feed parser splits and re-joins every body line of a single-part
    message only to store them back as one string; for a typical message that
    is most of the parse.  So the header block is parsed alone and, when it
    ends cleanly in a blank line and announces neither multipart nor message
    content, the body bytes are returned beside the headers (payload unset:
    :func:`_bodies` takes them as they are, skipping a surrogate-escape round
    trip).  Anything else (multipart, no blank line, a header block that does
    not end where we cut) is parsed in full and comes back with ``None``.
    """
    split = _split_head(raw)
    if split is not None:
        head, body = split
        msg = message_from_bytes(head, policy=email_policy.compat32)
        if (
            msg.get_content_maintype() not in ("multipart", "message")
            and msg.get_payload() == ""
            and not msg.is_multipart()
        ):
            return msg, body
    return message_from_bytes(raw, policy=email_policy.compat32), None


def message_of(raw: bytes) -> Message:
    """What ``message_from_bytes(raw, policy=compat32)`` returns, faster for single-part mail."""
    msg, body = _read(raw)
    if body is not None:
        msg.set_payload(body.decode("ascii", "surrogateescape"))
    return msg


def from_addresses(raw: bytes) -> list[str]:
    """The normalised From addresses, reading the header block only (the SMTP DATA check)."""
    split = _split_head(raw)
    try:
        msg = message_from_bytes(split[0] if split else raw, policy=email_policy.compat32)
    except Exception:  # noqa: BLE001 - the stdlib parser is not total
        return []
    return [a.email for a in _addresses(_headers(msg), "From")]


def parse(raw: bytes) -> ParsedMail:
    defects: list[str] = []
    try:
        msg, body = _read(raw)
    except Exception as exc:  # noqa: BLE001 - the stdlib parser is not total
        defects.append(f"parse: {type(exc).__name__}")
        msg, body = Message(), None
    defects.extend(type(d).__name__ for d in msg.defects[:20])
    headers = _headers(msg)

    def first(name: str) -> str | None:
        values = headers.get(name)
        return values[0] if values else None

    senders = _addresses(headers, "From")
    text, html = _bodies(msg, defects, body)
    return ParsedMail(
        message_id=first_message_id(first("message-id")),
        content_hash=content_hash(raw),
        subject=decode_header_value(first("subject")).replace("\x00", "")[:2000],
        sender=senders[0] if senders else None,
        from_addresses=[a.email for a in senders],
        to=_addresses(headers, "To"),
        cc=_addresses(headers, "Cc"),
        date=_date(first("date")),
        in_reply_to=first_message_id(first("in-reply-to")),
        references=all_message_ids(first("references")),
        text=text,
        html=html,
        headers={
            k: str(v)[:2000]
            for k, v in msg.raw_items()
            if k.lower() in ("auto-submitted", "x-mailgate-send", "list-id", "precedence")
        },
        defects=defects,
    )
