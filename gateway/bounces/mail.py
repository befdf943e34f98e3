"""One parsed inbound message, with the views every detector needs.

Parsing and walking happen once per ``classify`` call; detectors only read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from functools import cached_property

from gateway.bounces import addresses, mime

# Headers of the returned original that tie a bounce back to our send.
INTERESTING_HEADERS = (
    "Message-ID",
    "X-Mailgate-Send",
    "From",
    "To",
    "Subject",
    "Date",
    "Return-Path",
)

_ORIGINAL_TYPES = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")
# Where an inline (non-MIME) copy of the original message starts.
_ORIGINAL_MARKER_RE = re.compile(
    r"^[ \t\-=*_>]*(?:"
    r"(?:the )?original message (?:follows|headers?|was received)|"
    r"below this line is a copy of the message|"
    r"(?:a )?copy of (?:the )?(?:original |returned )?message(?: follows)?|"
    r"(?:the )?(?:returned|undelivered|original) message(?: headers?)?(?: follows)?|"
    r"message headers? follows?|headers? of (?:the )?(?:original|returned) message(?: follows)?|"
    r"以下(?:は|に)?.{0,10}(?:元|オリジナル|送信).{0,10}メール.{0,10}"
    r")[ \t\-=*_:.]*$",
    re.I | re.M,
)
_HEADER_LINE_RE = re.compile(r"^(message-id|x-mailgate-send)[ \t]*:[ \t]*(.+)$", re.I | re.M)


@dataclass
class Mail:
    msg: Message
    parts: list[tuple[Message, str, int]] = field(default_factory=list)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Mail:
        msg = mime.parse(raw)
        parts = [(part, mime.content_type(part), depth) for part, depth in mime.walk(msg)]
        return cls(msg=msg, parts=parts)

    @cached_property
    def content_type(self) -> str:
        return mime.content_type(self.msg)

    @cached_property
    def subject(self) -> str:
        return mime.header(self.msg, "Subject")

    @cached_property
    def sender(self) -> str:
        return addresses.extract_address(mime.header(self.msg, "From"))

    @cached_property
    def own_addresses(self) -> set[str]:
        """Addresses of the report's own envelope: never the bounced recipient."""
        found: set[str] = set()
        for name in (
            "From",
            "To",
            "Cc",
            "Return-Path",
            "Reply-To",
            "Sender",
            "Delivered-To",
            "X-Original-To",
            "Envelope-To",
        ):
            found.update(addresses.find_all(mime.header(self.msg, name)))
        return found

    @cached_property
    def original(self) -> Message | None:
        """The returned original message (or its headers), if attached."""
        for part, ctype, depth in self.parts:
            if depth == 0 or ctype not in _ORIGINAL_TYPES:
                continue
            if ctype == "message/rfc822":
                try:
                    payload = part.get_payload()
                except Exception:  # noqa: S112 - a broken part is skipped, not fatal
                    continue
                if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                    return payload[0]
                continue
            return mime.parse(mime.raw_payload(part).lstrip())
        return None

    @cached_property
    def notification_parts(self) -> list[tuple[Message, str]]:
        """Text parts written by the reporting system (outside the attached original)."""
        out: list[tuple[Message, str]] = []
        inside_original = False
        original_depth = 0
        for part, ctype, depth in self.parts:
            if ctype in _ORIGINAL_TYPES and depth > 0:
                inside_original = True
                original_depth = depth
                continue
            if inside_original and depth > original_depth:
                continue
            inside_original = False
            if ctype.startswith("text/") or ctype in (
                "message/delivery-status",
                "message/feedback-report",
            ):
                out.append((part, ctype))
            elif (
                not ctype.startswith(("multipart/", "message/", "image/", "audio/", "video/"))
                and depth == 0
            ):
                out.append((part, ctype))
        return out

    @cached_property
    def notification_text(self) -> str:
        """The human-readable notification, cut where an inline original starts."""
        chunks = []
        for part, ctype in self.notification_parts:
            if ctype in ("message/delivery-status", "message/feedback-report"):
                continue
            body = mime.text(part)
            if ctype == "text/html":
                body = _strip_html(body)
            chunks.append(body)
        text = "\n".join(chunks)
        return text

    @cached_property
    def notification_head(self) -> str:
        """``notification_text`` before any inline copy of the original message."""
        text = self.notification_text
        match = _ORIGINAL_MARKER_RE.search(text)
        if match and match.start() > 0:
            return text[: match.start()]
        return text

    @cached_property
    def original_headers(self) -> dict[str, str]:
        found: dict[str, str] = {}
        original = self.original
        if original is not None:
            for name in INTERESTING_HEADERS:
                value = mime.header(original, name).strip()
                if value:
                    found[name] = value
        if "Message-ID" not in found or "X-Mailgate-Send" not in found:
            # Non-MIME bounces paste the original inline: read its header lines.
            for match in _HEADER_LINE_RE.finditer(self.notification_text):
                name = "Message-ID" if match.group(1).lower() == "message-id" else "X-Mailgate-Send"
                found.setdefault(name, match.group(2).strip())
        return found


def _strip_html(text: str) -> str:
    text = re.sub(r"(?is)<(script|style).*?</\1>", " ", text)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", text)
    text = re.sub(r"<[^>]+>", " ", text)
    return (
        text.replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", " ").replace("&amp;", "&")
    )
