"""Mailbox passwords at rest: Fernet tokens under a key derived from the secret key.

The derived key is bound to its purpose, so a leaked tracking-link key and a
mailbox password key are never the same bytes.  Every grace key still
decrypts, so rotating ``MAILGATE_SECRET_KEY`` keeps mailboxes connected.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PURPOSE = b"mailgate/imap-password/v1\0"


class PasswordUnreadable(Exception):
    """The stored password was encrypted under a key this server no longer has."""


def _fernet(secret: str) -> Fernet:
    digest = hashlib.sha256(PURPOSE + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


class PasswordBox:
    def __init__(self, secret_keys: list[str]) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is needed")
        self._fernet = MultiFernet([_fernet(k) for k in secret_keys])

    def seal(self, password: str) -> str:
        return self._fernet.encrypt(password.encode()).decode("ascii")

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise PasswordUnreadable(
                "the stored mailbox password cannot be decrypted with the current secret key; "
                "connect the mailbox again"
            ) from exc
