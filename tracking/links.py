"""Rewrite outgoing HTML so opens and clicks come back to us — and nothing else.

Design choices, and why:

* **No open redirect by construction.**  A click token binds a send id and an
  index into the list of links we return; the lead stores that list with the
  send, and the click endpoint redirects only to ``links[index]`` of that
  send.  No URL ever travels inside a token, so nobody can aim our domain at
  a phishing page.  :func:`safe_redirect_target` re-checks the stored URL at
  redirect time anyway (belt and braces, e.g. against a row edited by hand).

* **Byte-for-byte preservation.**  Mail HTML is fragile (Outlook conditional
  comments, hand-tuned tables), so we do not parse and re-serialise it.  A
  linear regex finds ``<a …>`` start tags (atomic groups, so hostile input
  cannot make it backtrack), and only the value of their first ``href``
  attribute is replaced, in its original quoting.  Links inside Outlook
  conditional comments (``<!--[if mso]>``) are rewritten too: Outlook renders
  them.

* **What is tracked.**  Only absolute http(s) links that pass
  :func:`safe_redirect_target`.  Left alone: ``mailto:``, ``tel:`` and other
  schemes, ``#anchors``, relative links, our own unsubscribe and tracking
  URLs (a tracked unsubscribe link would make scanners unsubscribe people and
  breaks RFC 8058 expectations), and ``skip_domains`` with their subdomains.
  ``javascript:``, ``vbscript:`` and ``data:`` links are neutralised to ``#``:
  no mail client should run them, and we must not sign them into our redirect.

* **The stored link is the URL a browser would follow**: entities decoded
  (``&amp;`` → ``&``), leading/trailing whitespace and embedded tabs/newlines
  removed, as the WHATWG URL parser does.

* **Honeypot.**  An extra tracked link with no text and ``display:none`` is put
  first in the body.  People cannot see or click it; link-checking scanners
  follow every href, so a hit on it marks the whole burst as a machine (see
  :mod:`tracking.verdicts`).  It points at the public URL's root.
"""

from __future__ import annotations

import html as html_lib
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from tracking.tokens import TokenSigner

__all__ = [
    "RewriteResult",
    "rewrite_html",
    "safe_redirect_target",
    "unsubscribe_url",
    "list_unsubscribe_headers",
    "HONEYPOT_STYLE",
    "PIXEL_STYLE",
]

# An <a> start tag.  Attributes are consumed as name[=value] units so a '>'
# inside a quoted value does not end the tag; the atomic group and possessive
# star forbid backtracking, and a bare '<' outside quotes ends the attempt, so
# an unclosed tag cannot make every later '<a' rescan the rest of the input.
# (A bare '<' in an unquoted href is legal HTML but unheard of in mail; such a
# link is simply left untracked.)
_TAG_REST = r"""(?=[\s/>])(?>\s+|[^\s"'>/=<]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s><]*))?|[^><])*+>"""
_A_TAG = re.compile("<a" + _TAG_REST, re.IGNORECASE)
_ATTR = re.compile(
    r"""(?P<name>[^\s"'>/=]+)(?:\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<uq>[^\s>]*)))?"""
)
_BODY_OPEN = re.compile("<body" + _TAG_REST, re.IGNORECASE)
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_STRIP_CHARS = "".join(chr(c) for c in range(0x21))
_TAB_NEWLINE = re.compile(r"[\t\n\r]")
_NEUTRALISED = frozenset({"javascript", "vbscript", "data"})
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_HTTP_PREFIX = re.compile(r"https?://", re.IGNORECASE)
_HOSTNAME = re.compile(r"(?:[\w-]{1,63}\.)*[\w-]{1,63}\.?")
_MAX_URL = 8192

PIXEL_STYLE = (
    "display:block;width:1px;height:1px;border:0;margin:0;padding:0;"
    "max-height:1px;max-width:1px;overflow:hidden"
)
HONEYPOT_STYLE = (
    "display:none!important;mso-hide:all;font-size:0;line-height:0;"
    "max-height:0;max-width:0;overflow:hidden;opacity:0"
)


@dataclass(frozen=True, slots=True)
class RewriteResult:
    """The rewritten HTML and the links to store with the send.

    ``links[i]`` is where ``/t/c/<click token for (send, i)>`` redirects.
    ``links[honeypot_index]`` is the honeypot (never shown to a person).
    ``neutralised`` counts ``javascript:``/``data:`` links replaced by ``#``.
    """

    html: str
    links: list[str]
    honeypot_index: int
    neutralised: int = 0


def safe_redirect_target(url: object) -> bool:
    """True only for an absolute http(s) URL with a plain host.

    Refused: anything without ``http://``/``https://`` literally at the start
    (``//evil``, ``http:evil``, ``%2F%2Fevil``, ``javascript:``), any backslash
    (browsers read ``\\`` as ``/``), any whitespace or control character
    (browsers silently drop some of them, changing the URL), user info
    (``https://bank.example@evil.example`` is a phishing idiom), an empty or
    non-hostname host (``https:///evil``, percent-encoded or full-width
    tricks), and a malformed port.
    """
    return _redirect_host(url) is not None


def _redirect_host(url: object) -> str | None:
    """The lower-cased host of a safe redirect target, None if unsafe."""
    if not isinstance(url, str) or not url or len(url) > _MAX_URL:
        return None
    if _UNSAFE_CHARS.search(url) or not _HTTP_PREFIX.match(url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    if "@" in parts.netloc:
        return None
    host = parts.hostname
    if not host:
        return None
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return host
    return host if _HOSTNAME.fullmatch(host) else None


def _browser_url(raw_value: str) -> str:
    """The URL a browser follows for this attribute value."""
    url = html_lib.unescape(raw_value) if "&" in raw_value else raw_value
    url = url.strip(_STRIP_CHARS)
    if "\t" in url or "\n" in url or "\r" in url:
        url = _TAB_NEWLINE.sub("", url)
    return url.replace(" ", "%20") if " " in url else url


def _host_in(host: str, domains: frozenset[str]) -> bool:
    host = host.lower().rstrip(".")
    while True:
        if host in domains:
            return True
        dot = host.find(".")
        if dot < 0:
            return False
        host = host[dot + 1 :]


def rewrite_html(
    html: str,
    *,
    send_id: int,
    signer: TokenSigner,
    public_url: str,
    skip_domains: set[str] | frozenset[str] = frozenset(),
    unsubscribe_url: str | None = None,
) -> RewriteResult:
    """Track the links and opens of one send's HTML body.

    Returns the new HTML and the ordered link list the click endpoint will
    redirect to.  The HTML is otherwise unchanged, byte for byte.
    """
    base = public_url.rstrip("/")
    click_base = html_lib.escape(base, quote=True) + "/t/c/"  # tokens need no escaping
    own_prefixes = (base + "/t/", base + "/u/")
    skip = frozenset(d.lower().strip().rstrip(".") for d in skip_domains if d.strip())
    links: list[str] = []
    neutralised = 0

    def track(url: str) -> str:
        """Store ``url``; the HTML-escaped tracked URL that replaces it."""
        links.append(url)
        return click_base + signer.click_token(send_id, len(links) - 1)

    def on_tag(match: re.Match[str]) -> str:
        nonlocal neutralised
        tag = match.group(0)
        for attr in _ATTR.finditer(tag, 2, len(tag) - 1):
            if attr.group("name").lower() != "href":
                continue
            for group in ("dq", "sq", "uq"):
                value = attr.group(group)
                if value is not None:
                    break
            else:
                return tag
            url = _browser_url(value)
            scheme = _SCHEME.match(url)
            scheme_name = scheme.group(1).lower() if scheme else ""
            if scheme_name in _NEUTRALISED:
                neutralised += 1
                new_value = "#"
            elif scheme_name in ("http", "https"):
                host = _redirect_host(url)
                if (
                    host is None
                    or url == unsubscribe_url
                    or url.startswith(own_prefixes)
                    or (skip and _host_in(host, skip))
                ):
                    return tag
                new_value = track(url)
            else:
                return tag
            start, end = attr.span(group)
            return tag[:start] + new_value + tag[end:]
        return tag

    body = _A_TAG.sub(on_tag, html)

    honeypot_index = len(links)
    honeypot_href = track(base + "/")
    honeypot = (
        f'<a href="{honeypot_href}" style="{HONEYPOT_STYLE}" aria-hidden="true" tabindex="-1"></a>'
    )
    pixel_src = html_lib.escape(f"{base}/t/o/{signer.open_token(send_id)}", quote=True)
    pixel = f'<img src="{pixel_src}" width="1" height="1" alt="" style="{PIXEL_STYLE}">'

    opening = _BODY_OPEN.search(body)
    if opening:
        body = body[: opening.end()] + honeypot + body[opening.end() :]
        pixel_block = pixel
    else:
        pixel_block = honeypot + pixel
    closing = None
    for closing in _BODY_CLOSE.finditer(body):  # noqa: B007 - we want the last one
        pass
    if closing is not None and (opening is None or closing.start() >= opening.end()):
        body = body[: closing.start()] + pixel_block + body[closing.start() :]
    else:
        body = body + pixel_block
    return RewriteResult(body, links, honeypot_index, neutralised)


def unsubscribe_url(public_url: str, signer: TokenSigner, send_id: int) -> str:
    """The per-send unsubscribe page (``GET``) and one-click target (``POST``)."""
    return f"{public_url.rstrip('/')}/u/{signer.unsubscribe_token(send_id)}"


def list_unsubscribe_headers(url: str, mailto: str | None = None) -> dict[str, str]:
    """RFC 2369 + RFC 8058 headers so Gmail/Yahoo show a one-click button.

    ``List-Unsubscribe-Post`` tells the mailbox provider it may POST
    ``List-Unsubscribe=One-Click`` to the https URL without showing our page.
    """
    targets = [f"<{url}>"]
    if mailto:
        targets.append(f"<mailto:{mailto}>")
    return {
        "List-Unsubscribe": ", ".join(targets),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
