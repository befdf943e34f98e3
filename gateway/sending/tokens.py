"""The VERP token a send carries.

It is random (the ``sends.verp_token`` column maps it back), so nobody can
forge a bounce for another send.  Unsubscribe links use the signed tracking
tokens (:mod:`tracking.tokens`), which the ``/u/{token}`` endpoint verifies.
"""

from __future__ import annotations

import base64
import secrets


def new_verp_token() -> str:
    """128 random bits, lower-case base32: a plain address atom in any MTA."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
