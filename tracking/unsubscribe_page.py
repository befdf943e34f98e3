"""The pages a recipient sees at ``/u/{token}``, in Japanese or English.

``GET`` shows :func:`render_confirm_page`, whose form ``POST``\\s back to the
same URL; only a ``POST`` unsubscribes.  That split matters: security
scanners and link previewers fetch every URL in a message with ``GET``, and
an unsubscribe on ``GET`` would silently remove people who never asked.  The
form posts ``List-Unsubscribe=One-Click``, the same body RFC 8058 mailbox
providers send, so the endpoint handles both with one code path.

The pages are self-contained (inline CSS, no images, fonts or scripts):
nothing is loaded from a third party, which would leak the recipient's visit,
and :data:`PAGE_HEADERS` forbids it and forbids framing (a framed unsubscribe
button could be clickjacked).  Every value is HTML-escaped by Jinja2's
autoescape; the address is shown masked so a forwarded link does not reveal
it in full.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from jinja2 import Environment, FileSystemLoader, select_autoescape

__all__ = [
    "Lang",
    "pick_lang",
    "mask_email",
    "render_confirm_page",
    "render_done_page",
    "render_invalid_page",
    "PAGE_HEADERS",
]

Lang = Literal["ja", "en"]
DEFAULT_LANG: Lang = "ja"

PAGE_HEADERS: dict[str, str] = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
}

_TEXT: dict[str, dict[str, dict[str, str]]] = {
    "confirm": {
        "ja": {
            "title": "配信停止の確認",
            "heading": "メール配信の停止",
            "lead_before": "",
            "lead_after": " 宛てのメール配信を停止しますか？",
            "lead_no_email": "このアドレス宛てのメール配信を停止しますか？",
            "button": "配信を停止する",
            "note": "このページを開いただけでは配信は停止されません。",
        },
        "en": {
            "title": "Confirm unsubscribe",
            "heading": "Unsubscribe",
            "lead_before": "Stop sending email to ",
            "lead_after": "?",
            "lead_no_email": "Stop sending email to this address?",
            "button": "Unsubscribe",
            "note": "Opening this page alone does not unsubscribe you.",
        },
    },
    "done": {
        "ja": {
            "title": "配信を停止しました",
            "heading": "配信を停止しました",
            "lead_before": "",
            "lead_after": " 宛てには今後メールをお送りしません。",
            "lead_no_email": "このアドレス宛てには今後メールをお送りしません。",
            "note": "お手数をおかけしました。",
        },
        "en": {
            "title": "You are unsubscribed",
            "heading": "You are unsubscribed",
            "lead_before": "We will not send email to ",
            "lead_after": " again.",
            "lead_no_email": "We will not send email to this address again.",
            "note": "Sorry for the trouble.",
        },
    },
    "invalid": {
        "ja": {
            "title": "無効なリンク",
            "heading": "このリンクは無効です",
            "lead_no_email": "リンクが途中で切れているか、古くなっている可能性があります。"
            "メール内のリンクをもう一度お試しください。",
        },
        "en": {
            "title": "Invalid link",
            "heading": "This link is not valid",
            "lead_no_email": "The link may be cut short or out of date. "
            "Please try the link in the email again.",
        },
    },
}


@cache
def _template():
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=select_autoescape(["html"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("unsubscribe_page.html")


def _lang(lang: str) -> Lang:
    return "en" if lang == "en" else DEFAULT_LANG


def pick_lang(accept_language: str | None) -> Lang:
    """Japanese or English from an ``Accept-Language`` header; Japanese by default.

    Our recipients are mostly Japanese, so anything we cannot read, ``*``,
    or a language we have no page for falls back to Japanese.  Ties keep the
    header's order.
    """
    if not accept_language:
        return DEFAULT_LANG
    best: tuple[float, Lang] | None = None
    for item in accept_language[:1000].split(","):
        tag, _, params = item.partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        if primary not in ("ja", "en"):
            continue
        quality = 1.0
        params = params.strip().lower()
        if params:
            name, _, value = params.partition("=")
            if name.strip() != "q":
                continue
            try:
                quality = float(value)
            except ValueError:
                continue
            if not 0.0 <= quality <= 1.0:
                continue
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, primary)  # type: ignore[assignment]
    return best[1] if best else DEFAULT_LANG


def mask_email(email: str) -> str:
    """``taro.yamada@example.co.jp`` → ``ta***@example.co.jp``.

    Enough for the recipient to recognise their address; not enough for a
    stranger holding a forwarded link to harvest it.
    """
    local, at, domain = email.rpartition("@")
    if not at:
        return email[:2] + "***"
    return f"{local[:2] if len(local) > 2 else local[:1]}***@{domain}"


def _render(page: str, lang: str, email_masked: str | None, action_url: str | None) -> str:
    chosen = _lang(lang)
    return _template().render(
        lang=chosen,
        t=_TEXT[page][chosen],
        email_masked=email_masked,
        action_url=action_url,
    )


def render_confirm_page(lang: str, email_masked: str | None, action_url: str) -> str:
    """The ``GET /u/{token}`` page: a question and a button that POSTs."""
    return _render("confirm", lang, email_masked, action_url)


def render_done_page(lang: str, email_masked: str | None = None) -> str:
    """The answer to a browser's ``POST /u/{token}``."""
    return _render("done", lang, email_masked, None)


def render_invalid_page(lang: str) -> str:
    """Body for the 404 of a bad or tampered token: says so, records nothing."""
    return _render("invalid", lang, None, None)
