"""What the send composer calls to make one recipient's HTML trackable.

The composer stores the returned ``links`` as ``sends.links`` of that send;
the click endpoint redirects only to those, by index.  The honeypot is always
the last link (``honeypot_index == len(links) - 1``): the recorder relies on
that to recognise it without a column of its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from tracking.links import list_unsubscribe_headers, rewrite_html, unsubscribe_url
from tracking.tokens import TokenSigner

__all__ = ["prepare_html", "unsubscribe_link", "unsubscribe_headers", "is_honeypot"]


def prepare_html(
    html: str,
    *,
    send_id: int,
    signer: TokenSigner,
    public_url: str,
    skip_domains: Iterable[str] = (),
) -> tuple[str, list[str], int]:
    """(tracked html, links to store with the send, honeypot index).

    The send's own unsubscribe URL is left untracked, so a ``{{unsubscribe_url}}``
    merged into the body before this call keeps working as RFC 8058 expects.
    """
    result = rewrite_html(
        html,
        send_id=send_id,
        signer=signer,
        public_url=public_url,
        skip_domains=frozenset(skip_domains),
        unsubscribe_url=unsubscribe_link(public_url, signer, send_id),
    )
    assert result.honeypot_index == len(result.links) - 1
    return result.html, result.links, result.honeypot_index


def unsubscribe_link(public_url: str, signer: TokenSigner, send_id: int) -> str:
    """``{public_url}/u/{token}``: the page (GET) and the one-click target (POST)."""
    return unsubscribe_url(public_url, signer, send_id)


def unsubscribe_headers(
    public_url: str, signer: TokenSigner, send_id: int, mailto: str | None = None
) -> dict[str, str]:
    """``List-Unsubscribe`` and ``List-Unsubscribe-Post`` for the composed message."""
    return list_unsubscribe_headers(unsubscribe_link(public_url, signer, send_id), mailto)


def is_honeypot(links: list[str], index: int | None, public_url: str) -> bool:
    """True when ``index`` is the hidden link :func:`prepare_html` planted."""
    if index is None or not links or index != len(links) - 1:
        return False
    return links[-1] == public_url.rstrip("/") + "/"
