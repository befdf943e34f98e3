"""Tokens a send carries: its VERP token and its unsubscribe token.

The VERP token is random (the ``sends.verp_token`` column maps it back), so
nobody can forge a bounce for another send.  The unsubscribe token is the
send id with an HMAC of it under the secret key: the ``/u/{token}`` page
verifies it without a lookup table.  The tracking work may replace
:func:`unsubscribe_token` / :func:`read_unsubscribe_token` with its own
signed tokens; the sending path only calls these two.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

_PURPOSE = b"mailgate-unsubscribe-v1:"


def new_verp_token() -> str:
    """128 random bits, lower-case base32: a plain address atom in any MTA."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def _mac(send_id: int, key: str) -> str:
    digest = hmac.new(key.encode(), _PURPOSE + str(send_id).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def unsubscribe_token(send_id: int, key: str) -> str:
    return f"{send_id}.{_mac(send_id, key)}"


def read_unsubscribe_token(token: str, keys: Sequence[str]) -> int | None:
    """The send id of a genuine token (any key of the grace list), else None."""
    sid, _, mac = token.partition(".")
    if not sid.isdigit() or len(sid) > 18 or not mac:
        return None
    send_id = int(sid)
    for key in keys:
        if hmac.compare_digest(mac, _mac(send_id, key)):
            return send_id
    return None
