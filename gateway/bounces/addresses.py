"""Finding email addresses in bounce text (comparison form: :mod:`gateway.addresses`)."""

from __future__ import annotations

import re

from gateway.addresses import normalise

ADDRESS_RE = re.compile(
    r"(?<![\w.+=/-])([\w.!#$%&'*+/=?^`{|}~-]+@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"[a-z0-9][a-z0-9-]*[a-z0-9])(?![\w-])",
    re.I,
)

# Addresses that name a mail system, not a person we mailed.
_SYSTEM_LOCALPARTS = frozenset(
    {
        "mailer-daemon",
        "postmaster",
        "mail-daemon",
        "maildaemon",
        "mailerdaemon",
        "daemon",
        "root",
        "abuse",
        "noreply",
        "no-reply",
        "mail",
        "mailadmin",
        "smtp",
        "bounce",
        "bounces",
    }
)


def comparable(address: str) -> str:
    """The one comparison form (:func:`gateway.addresses.normalise`), as suppressions and
    the send API look addresses up: ``Taro@Client.Example`` → ``taro@client.example``."""
    return normalise(address) or address.strip().lower()


def extract_address(value: str) -> str:
    """``rfc822; <Foo@Example.COM>`` → ``foo@example.com``; ``""`` if no address."""
    if not value:
        return ""
    text = value.strip()
    if ";" in text:
        text = text.split(";", 1)[1]
    text = text.strip().strip("<>\"' \t\r\n").strip()
    match = ADDRESS_RE.search(text)
    if not match:
        return ""
    return match.group(1).strip(".").lower()


def find_all(text: str) -> list[str]:
    """Every address in ``text``, lowercased, in order of first appearance."""
    seen: dict[str, None] = {}
    for match in ADDRESS_RE.finditer(text or ""):
        seen.setdefault(match.group(1).strip(".").lower(), None)
    return list(seen)


def is_system(address: str) -> bool:
    local = address.split("@", 1)[0].lower()
    # ``bounces+…`` is a VERP return path: ours, or another sender's, never a recipient.
    return local in _SYSTEM_LOCALPARTS or local.startswith(
        ("mailer-daemon", "postmaster", "bounces+")
    )


def lines_about(text: str, email: str) -> str:
    """The lines of ``text`` mentioning ``email`` and the few after each: where MTAs put
    the reason for that address.  Follow-on lines stop at the next address or a blank."""
    lines = text.splitlines()
    picked: list[str] = []
    for i, line in enumerate(lines):
        if email in line.lower():
            picked.append(line)
            for follow in lines[i + 1 : i + 4]:
                if "@" in follow or not follow.strip():
                    break
                picked.append(follow)
    return "\n".join(picked)
