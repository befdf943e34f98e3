"""VERP return paths: ``bounces+<token>@<mail domain>``.

The token names the send, so a bounce is tied back to it by its envelope
recipient alone -- no parsing of the bounce body needed (Mailman's first
and most reliable step).
"""

from __future__ import annotations

import re

LOCAL_PREFIX = "bounces+"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._=-]+$")


def verp_address(token: str, domain: str) -> str:
    """The return path for one send; ``token`` must be a plain address atom."""
    if not token or not _TOKEN_RE.match(token):
        raise ValueError(f"VERP token must be non-empty [A-Za-z0-9._=-]: {token!r}")
    if not domain or "@" in domain:
        raise ValueError(f"not a mail domain: {domain!r}")
    return f"{LOCAL_PREFIX}{token}@{domain.lower()}"


def verp_token(address: str, domain: str) -> str | None:
    """The token of a VERP address for ``domain``, or None for any other address.

    Accepts what MTAs hand us: angle brackets, a quoted local part, any case
    in the domain and the ``bounces`` prefix.  The token keeps its case.
    """
    if not isinstance(address, str) or not domain:
        return None
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    local, sep, host = text.rpartition("@")
    if not sep or host.strip().rstrip(".").lower() != domain.strip().rstrip(".").lower():
        return None
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = local[1:-1]
    if local[: len(LOCAL_PREFIX)].lower() != LOCAL_PREFIX:
        return None
    token = local[len(LOCAL_PREFIX) :]
    return token if token and _TOKEN_RE.match(token) else None
