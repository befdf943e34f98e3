"""The dashboard's languages: one catalogue per language, negotiation, dates and numbers (pure).

Every string a page shows comes from :data:`CATALOGUE` through ``t(key)``;
templates hold no prose of their own.  A key missing from a language falls
back to English and then to the key itself, and ``tests/test_web_i18n.py``
fails when the two catalogues do not have the same keys.

The language is the ``?lang=`` the user chose (remembered in a cookie), else
the browser's ``Accept-Language``, else the org's locale, else Japanese (our
first users).  Times are shown in the org's time zone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

LANGS = ("ja", "en")
DEFAULT_LANG = "ja"

CATALOGUE: dict[str, dict[str, str]] = {
    "en": {
        "app.name": "mailgate",
        "nav.quotas": "Quotas",
        "nav.logout": "Log out",
        "nav.language": "Language",
        "lang.ja": "日本語",
        "lang.en": "English",
        "login.title": "Log in",
        "login.email": "Email",
        "login.password": "Password",
        "login.submit": "Log in",
        "login.failed": "That email and password do not match.",
        "login.throttled": "Too many failed attempts. Try again in {minutes} minutes.",
        "error.csrf": "This form has expired or did not come from this site. Reload and try again.",
        "error.not_found": "There is no such page, or you may not see it.",
        "error.forbidden": "Only administrators may open this page.",
        "error.unavailable": "The database cannot be reached. Try again shortly.",
        "error.title": "Something is wrong",
        "quotas.title": "Send quotas",
        "quotas.kind.individual": "Individual mail",
        "quotas.kind.mass": "Mass mail",
        "quotas.used": "Used",
        "quotas.limit": "Limit",
        "quotas.remaining": "Remaining",
        "quotas.resets_at": "Resets at",
        "quotas.warn80": "{kind}: 80% of today's quota is used.",
        "quotas.warn100": "{kind}: today's quota is used up; sends wait for the reset.",
    },
    "ja": {
        "app.name": "mailgate",
        "nav.quotas": "送信上限",
        "nav.logout": "ログアウト",
        "nav.language": "言語",
        "lang.ja": "日本語",
        "lang.en": "English",
        "login.title": "ログイン",
        "login.email": "メールアドレス",
        "login.password": "パスワード",
        "login.submit": "ログイン",
        "login.failed": "メールアドレスまたはパスワードが正しくありません。",
        "login.throttled": "失敗が続いたため、{minutes}分後にもう一度お試しください。",
        "error.csrf": (
            "このフォームは期限切れか、このサイトから送信されたものではありません。"
            "再読み込みしてからお試しください。"
        ),
        "error.not_found": "ページが存在しないか、閲覧する権限がありません。",
        "error.forbidden": "このページは管理者のみが開けます。",
        "error.unavailable": "データベースに接続できません。しばらくしてからお試しください。",
        "error.title": "エラー",
        "quotas.title": "送信上限",
        "quotas.kind.individual": "個別メール",
        "quotas.kind.mass": "一括メール",
        "quotas.used": "送信済み",
        "quotas.limit": "上限",
        "quotas.remaining": "残り",
        "quotas.resets_at": "リセット日時",
        "quotas.warn80": "{kind}：本日の上限の80%に達しました。",
        "quotas.warn100": "{kind}：本日の上限に達しました。リセットまで送信は待機します。",
    },
}


def translate(lang: str, key: str, **values: object) -> str:
    text = CATALOGUE.get(lang, {}).get(key) or CATALOGUE["en"].get(key) or key
    return text.format(**values) if values else text


def from_accept_language(header: str) -> str | None:
    """The first of our languages in an ``Accept-Language`` header, by its q weight."""
    best: tuple[float, int, str] | None = None
    for pos, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        lang = tag.strip().lower().split("-")[0]
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if lang in LANGS and q > 0 and (best is None or (q, -pos) > (best[0], best[1])):
            best = (q, -pos, lang)
    return best[2] if best else None


def negotiate(
    chosen: str | None, cookie: str | None, accept: str, org_locale: str | None = None
) -> str:
    for candidate in (chosen, cookie):
        if candidate in LANGS:
            return candidate  # type: ignore[return-value]
    return from_accept_language(accept) or (org_locale if org_locale in LANGS else DEFAULT_LANG)


def format_number(value: int | float, lang: str) -> str:
    """Thousands separated (both languages use a comma)."""
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def format_datetime(at: datetime | str | None, tz: str, lang: str) -> str:
    """A time in the org's zone: ``2026年11月26日 09:00`` or ``2026-11-26 09:00 JST``."""
    if at is None:
        return ""
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    local = at.astimezone(ZoneInfo(tz))
    if lang == "ja":
        return f"{local.year}年{local.month}月{local.day}日 {local:%H:%M}"
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def person_name(record: Mapping[str, object], locale: str) -> str:
    """姓 名 where the org's locale says so (ja), First Last otherwise."""
    last = str(record.get("last_name") or "").strip()
    first = str(record.get("first_name") or "").strip()
    parts = (last, first) if locale == "ja" else (first, last)
    return " ".join(p for p in parts if p)
