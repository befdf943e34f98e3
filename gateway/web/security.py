"""Passwords, session and CSRF tokens, and the headers every dashboard page carries (pure).

Passwords are hashed with Argon2id (``argon2-cffi``, its default parameters);
a login for an unknown address still verifies against a dummy hash, so the
answer takes as long whether or not the address exists.
"""

from __future__ import annotations

import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))

#: Passwords shorter than this are refused when set (NIST SP 800-63B: at least 8).
MIN_PASSWORD = 10
#: Longer ones are refused too: hashing megabytes is a denial of service.
MAX_PASSWORD = 256

SESSION_COOKIE = "mg_session"
LOGIN_CSRF_COOKIE = "mg_login_csrf"
LANG_COOKIE = "mg_lang"

#: No inline script or style anywhere; forms post only to us; no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "report-uri /csp-report"
)

PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class WeakPassword(ValueError):
    """A password outside the accepted length."""


def hash_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise WeakPassword(f"a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Does ``password`` match ``stored``?  Costs the same when there is no user."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))
