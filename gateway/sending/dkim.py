"""DKIM-sign composed outbound mail (relaxed/relaxed, rsa-sha256) with dkimpy.

Signed headers include ``List-Unsubscribe`` and ``List-Unsubscribe-Post``:
RFC 8058 one-click unsubscribe is only honoured by mailbox providers when both
are covered by a valid DKIM signature.
"""

from __future__ import annotations

from collections.abc import Sequence

import dkim

DEFAULT_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)


def sign(
    message: bytes,
    *,
    selector: str,
    domain: str,
    private_key_pem: bytes,
    headers: Sequence[str] = DEFAULT_HEADERS,
) -> bytes:
    """``message`` with a ``DKIM-Signature`` header prepended.

    Headers listed but absent from the message are signed as absent, so they
    cannot be added later without breaking the signature.  Raises
    :class:`ValueError` when dkimpy cannot sign (bad key, malformed message).
    """
    try:
        signature = dkim.sign(
            message,
            selector.encode("ascii"),
            domain.encode("ascii"),
            private_key_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"rsa-sha256",
            include_headers=[h.encode("ascii") for h in headers],
        )
    except dkim.DKIMException as exc:
        raise ValueError(f"DKIM signing failed: {exc}") from exc
    return signature + message
