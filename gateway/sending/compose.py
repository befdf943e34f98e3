"""Compose outbound mail as RFC 5322 bytes, directly and fast.

Building an :class:`email.message.EmailMessage` and serialising it costs about a
millisecond per message, more than rendering the template; a mass send of a
100,000 recipients would spend minutes on it.  Outbound mail here always has
the same shape (multipart/alternative of text and HTML, UTF-8), so we write
those bytes ourselves and let the email package only *parse* them in tests.

Two things the email package gets wrong for us and this module gets right:

* ``List-Unsubscribe`` is never turned into RFC 2047 encoded words (Python
  folds long URLs that way and mail clients then ignore the header); it is
  folded only at the comma between its ``<…>`` items.
* Japanese subjects and display names become UTF-8 ``B`` encoded words split
  on character boundaries, never through a multibyte character.

Any CR or LF in a header value raises :class:`ValueError`: a merge value must
never be able to add a header (``Bcc:``) to a message.

Attachments make the message ``multipart/mixed`` around the same body part
(the text part, or the alternative of text and HTML).  Each attachment part
is built once per request (:func:`attachment_part`) and reused for every
recipient's message; its file name is RFC 2231 encoded (``filename*=``, split
into continuations on long names) with an RFC 2047 ``name=`` beside it for
the mail clients that only read that.
"""

from __future__ import annotations

import binascii
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import quote

__all__ = ["attachment_part", "compose", "make_message_id"]

_MAX_LINE = 78  # RFC 5322 "SHOULD"; 998 is the hard limit
_ATEXT_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*")
_ADDR = re.compile(r"[^\s<>()\[\],;:\"\\@]+@[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?")
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_URI = re.compile(r"[!-~]+")
_B64_LINE = re.compile(rb".{1,76}")  # findall splits in C; slicing loops in Python
_RESERVED = frozenset(
    {
        "from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version",
        "content-type", "content-transfer-encoding", "list-unsubscribe",
        "list-unsubscribe-post", "in-reply-to", "references",
    }
)  # fmt: skip


_date_cache: tuple[int, str] = (0, "")


def _now() -> str:
    """The current Date header value, formatted once per second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return _date_cache[1]


def make_message_id(domain: str) -> str:
    """A new globally unique ``<…@domain>`` Message-ID."""
    _no_newline("message-id domain", domain)
    stamp = format(time.time_ns() // 1_000_000, "x")
    return f"<{stamp}.{secrets.token_hex(8)}@{domain}>"


def compose(
    *,
    from_addr: str,
    from_name: str | None,
    to_addr: str,
    to_name: str | None,
    subject: str,
    html: str | None,
    text: str,
    message_id: str,
    headers: Mapping[str, str] | None = None,
    list_unsubscribe: tuple[str | None, str | None] | None = None,
    one_click: bool = False,
    date: datetime | None = None,
    cc: Sequence[tuple[str, str | None]] = (),
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    attachments: Sequence[bytes] = (),
) -> bytes:
    """The complete message as CRLF-terminated bytes, ready for SMTP DATA.

    ``list_unsubscribe`` is ``(mailto_uri, https_uri)``, either may be None;
    ``one_click`` adds ``List-Unsubscribe-Post`` (RFC 8058) and needs the
    https URI.  ``headers`` adds extra headers (e.g. ``X-Mailgate-Send``);
    they may not replace the ones this function writes.  ``cc`` is
    ``(address, name)`` pairs; ``in_reply_to`` and ``references`` are
    Message-IDs (bare or bracketed); ``attachments`` are parts made by
    :func:`attachment_part`.
    """
    _no_newline("subject", subject)
    lines = [
        "Date: " + (format_datetime(date) if date is not None else _now()),
        _header("From", _mailbox(from_addr, from_name, len("From: "))),
        _header("To", _mailbox(to_addr, to_name, len("To: "))),
    ]
    if cc:
        lines.append("Cc: " + ",\r\n ".join(_mailbox(a, n, 1) for a, n in cc))
    lines += [
        "Subject: " + _unstructured(subject, len("Subject: ")),
        "Message-ID: " + _message_id(message_id),
    ]
    if in_reply_to:
        lines.append("In-Reply-To: " + _message_id(in_reply_to))
    if references:
        lines.append("References: " + "\r\n ".join(_message_id(r) for r in references))
    lines.append("MIME-Version: 1.0")
    for name, value in (headers or {}).items():
        if not _FIELD_NAME.fullmatch(name) or name.lower() in _RESERVED:
            raise ValueError(f"header name {name!r} is not allowed here")
        _no_newline(name, value)
        lines.append(f"{name}: " + _unstructured(value, len(name) + 2))
    if list_unsubscribe is not None:
        lines.append(_list_unsubscribe(list_unsubscribe, one_click))
        if one_click:
            lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    elif one_click:
        raise ValueError("one-click unsubscribe needs a List-Unsubscribe https URI")

    head = "\r\n".join(lines).encode("ascii")
    text_part = _part("text/plain", text)
    entity = (
        text_part
        if html is None
        else _multipart("alternative", [text_part, _part("text/html", html)])
    )
    if attachments:
        entity = _multipart("mixed", [entity, *attachments])
    return head + b"\r\n" + entity


_PREAMBLE = b"\r\nThis is a multi-part message in MIME format.\r\n"


def _multipart(subtype: str, parts: Sequence[bytes]) -> bytes:
    """A ``multipart/<subtype>`` entity (its Content-Type header, a blank line, the parts)."""
    boundary = "=_mg" + secrets.token_hex(12)  # "=_" never occurs in QP or base64
    delimiter = b"\r\n--" + boundary.encode("ascii")
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n'.encode("ascii")]
    out.append(_PREAMBLE)
    for i, part in enumerate(parts):
        out += [delimiter[2:] if i == 0 else delimiter, b"\r\n", part]
    out += [delimiter, b"--\r\n"]
    return b"".join(out)


# --------------------------------------------------------------------------- attachments

#: RFC 2231 attribute-char: what may stand unencoded in ``filename*=``.
_ATTR_SAFE = "!#$&+-.^_`|~"
_PARAM_CHUNK = 56


def attachment_part(filename: str, content_type: str, data: bytes) -> bytes:
    """One ``Content-Disposition: attachment`` part, base64; the file name RFC 2231 encoded.

    ``content_type`` must already be a bare, validated media type
    (:func:`gateway.sending.extras.parse_attachments`); a line break in it
    or in the name raises :class:`ValueError` all the same.
    """
    _no_newline("attachment file name", filename)
    _no_newline("attachment content type", content_type)
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise ValueError(f"attachment content type {content_type!r} is not a media type")
    b64 = binascii.b2a_base64(data, newline=False)
    body = b"\r\n".join(_B64_LINE.findall(b64)) + b"\r\n" if data else b""
    head = (
        f"Content-Type: {content_type};\r\n name={_name_param(filename)}\r\n"
        f"Content-Disposition: attachment;\r\n {_filename_param(filename)}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode("ascii") + body


_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_QUOTABLE = re.compile(r"[ -~]{1,60}")


def _name_param(filename: str) -> str:
    """``name=`` of Content-Type: quoted ASCII, else RFC 2047 words (what Outlook reads)."""
    if _QUOTABLE.fullmatch(filename) and "=?" not in filename:
        return '"' + filename.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '"' + "\r\n ".join(_encoded_words(filename, 56)) + '"'


def _filename_param(filename: str) -> str:
    """``filename=`` as a quoted string when short ASCII, else RFC 2231 ``filename*``."""
    if _QUOTABLE.fullmatch(filename) and "=?" not in filename:
        return 'filename="' + filename.replace("\\", "\\\\").replace('"', '\\"') + '"'
    encoded = quote(filename.encode("utf-8"), safe=_ATTR_SAFE)
    if len(encoded) <= _PARAM_CHUNK:
        return f"filename*=utf-8''{encoded}"
    chunks: list[str] = []
    i = 0
    while i < len(encoded):  # never split a %XX escape between continuations
        end = min(i + _PARAM_CHUNK, len(encoded))
        while end < len(encoded) and "%" in encoded[end - 2 : end]:
            end -= 1
        chunks.append(encoded[i:end])
        i = end
    return ";\r\n ".join(
        f"filename*{n}*=" + ("utf-8''" if n == 0 else "") + chunk for n, chunk in enumerate(chunks)
    )


# --------------------------------------------------------------------------- headers


def _no_newline(what: str, value: str) -> None:
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError(f"{what} contains a line break (header injection refused)")


def _header(name: str, value: str) -> str:
    return f"{name}: {value}"


def _mailbox(addr: str, name: str | None, used: int) -> str:
    """``Display Name <local@domain>`` with the name quoted or encoded."""
    _no_newline("address", addr)
    spec = _addr_spec(addr)
    if not name:
        return spec
    _no_newline("display name", name)
    name = " ".join(name.split())
    if name.isascii() and "=?" not in name:  # "=?" would be decoded by readers
        if _ATEXT_PHRASE.fullmatch(name):
            phrase = name
        else:
            phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if used + len(phrase) + len(spec) + 3 <= _MAX_LINE:
            return f"{phrase} <{spec}>"
        return f"{phrase}\r\n <{spec}>"
    words = _encoded_words(name, _MAX_LINE - used)
    tail = words[-1]
    last_room = (_MAX_LINE - used if len(words) == 1 else _MAX_LINE - 1) - len(tail)
    sep = " " if len(spec) + 3 <= last_room else "\r\n "
    return "\r\n ".join(words) + f"{sep}<{spec}>"


def _addr_spec(addr: str) -> str:
    addr = addr.strip()
    local, at, domain = addr.rpartition("@")
    if at and not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"invalid domain in address {addr!r}") from exc
        addr = f"{local}@{domain}"
    if not addr.isascii() or not _ADDR.fullmatch(addr):
        raise ValueError(f"not a deliverable ASCII address: {addr!r}")
    return addr


def _message_id(message_id: str) -> str:
    _no_newline("message-id", message_id)
    mid = message_id.strip()
    if not mid.startswith("<"):
        mid = f"<{mid}>"
    if not mid.isascii() or " " in mid or "@" not in mid or not mid.endswith(">"):
        raise ValueError(f"malformed Message-ID {message_id!r}")
    return mid


def _unstructured(value: str, used: int) -> str:
    """An unstructured header body: plain when ASCII, else encoded words."""
    if value.isascii() and "=?" not in value:
        if used + len(value) <= _MAX_LINE:
            return value
        folded = _fold_ascii(value, used)
        if folded is not None:
            return folded
    if not value:
        return value
    return "\r\n ".join(_encoded_words(value, _MAX_LINE - used))


def _fold_ascii(value: str, used: int) -> str | None:
    """Fold at spaces; None when a word would still exceed 998 octets."""
    lines: list[str] = []
    current = ""
    room = _MAX_LINE - used
    for word in value.split(" "):
        candidate = f"{current} {word}" if current else word
        if len(candidate) <= room or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
            room = _MAX_LINE - 1
    lines.append(current)
    if any(len(line) > 990 for line in lines):
        return None
    return "\r\n ".join(lines)


def _encoded_words(value: str, first_room: int) -> list[str]:
    """RFC 2047 ``=?utf-8?B?…?=`` words of at most 75 characters each, split
    between characters so no word holds a partial UTF-8 sequence."""
    words: list[str] = []
    room = max(first_room, 16)
    # Base64 packs 3 bytes in 4 chars; 12 chars go to "=?utf-8?B?" and "?=".
    limit = (min(room, 75) - 12) // 4 * 3
    whole = value.encode("utf-8")
    if len(whole) <= limit:  # the common case: a name or short subject
        return [_b_word(whole)]
    chunk = bytearray()
    for char in value:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > limit and chunk:
            words.append(_b_word(chunk))
            chunk = bytearray()
            limit = (75 - 12) // 4 * 3
        chunk += encoded
    if chunk or not words:
        words.append(_b_word(chunk))
    return words


def _b_word(data: bytes | bytearray) -> str:
    return "=?utf-8?B?" + binascii.b2a_base64(bytes(data), newline=False).decode("ascii") + "?="


def _list_unsubscribe(uris: tuple[str | None, str | None], one_click: bool) -> str:
    mailto, https = uris
    items: list[str] = []
    if mailto:
        _check_uri(mailto, ("mailto:",))
        items.append(f"<{mailto}>")
    if https:
        _check_uri(https, ("https://", "http://"))
        items.append(f"<{https}>")
    if not items:
        raise ValueError("List-Unsubscribe needs a mailto or https URI")
    if one_click and not (https and https.startswith("https://")):
        raise ValueError("one-click unsubscribe needs an https URI")
    line = "List-Unsubscribe: " + ", ".join(items)
    if len(line) <= _MAX_LINE:
        return line
    # Fold only between items, never inside a URI and never as encoded words.
    return "List-Unsubscribe: " + ",\r\n ".join(items)


def _check_uri(uri: str, schemes: Iterable[str]) -> None:
    _no_newline("List-Unsubscribe URI", uri)
    if not uri.lower().startswith(tuple(schemes)):
        raise ValueError(f"List-Unsubscribe URI must start with {' or '.join(schemes)}: {uri!r}")
    if not _URI.fullmatch(uri) or "<" in uri or ">" in uri or "," in uri or len(uri) > 900:
        raise ValueError(f"List-Unsubscribe URI must be ASCII without spaces, <, >, ',': {uri!r}")


# --------------------------------------------------------------------------- bodies


def _part(content_type: str, body: str) -> bytes:
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    data = body.replace("\n", "\r\n").encode("utf-8")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    # Bytes beyond one per character, x1.5: exact for Japanese (3-byte
    # characters), close enough elsewhere to choose an encoding, and O(1).
    non_ascii = (len(data) - len(body) - data.count(b"\r")) * 3 // 2
    if non_ascii == 0 and _short_lines(data):
        cte, encoded = "7bit", data
    elif non_ascii * 6 < len(data):  # mostly ASCII (markup): QP stays readable and small
        cte, encoded = "quoted-printable", binascii.b2a_qp(data, istext=True)
    else:  # Japanese prose: base64 is ~1.33x, QP would be ~3x
        b64 = binascii.b2a_base64(data, newline=False)
        encoded = b"\r\n".join(_B64_LINE.findall(b64)) + b"\r\n"
        cte = "base64"
    header = (
        f'Content-Type: {content_type}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    ).encode("ascii")
    return header + encoded


def _short_lines(data: bytes) -> bool:
    if len(data) <= 998:
        return True
    return all(len(line) <= 998 for line in data.split(b"\r\n"))
