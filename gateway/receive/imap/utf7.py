"""Modified UTF-7 (RFC 3501 5.1.3): how IMAP spells non-ASCII folder names."""

from __future__ import annotations

import base64
import re


def decode_modified_utf7(name: str) -> str:
    """RFC 3501 mailbox-name encoding (``&ZeVnLIqe-`` → 日本語); plain names pass through."""
    if "&" not in name:
        return name
    out: list[str] = []
    for part in re.split(r"(&[^-]*-)", name):
        if part == "&-":
            out.append("&")
        elif part.startswith("&") and part.endswith("-"):
            b64 = part[1:-1].replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                out.append(base64.b64decode(b64).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                return name  # not valid modified UTF-7: show it as the server sent it
        else:
            out.append(part)
    return "".join(out)


def encode_modified_utf7(name: str) -> str:
    """Inverse of :func:`decode_modified_utf7`, for sending non-ASCII folder names."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            b64 = base64.b64encode("".join(pending).encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)
