"""The dashboard's languages: one catalogue per language, negotiation, dates and numbers (pure).

Every string a page shows comes from :data:`CATALOGUE` through ``t(key)``
(one module per area in ``gateway/web/texts/``);
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

#: Each area of the dashboard keeps its strings in its own module of ``gateway.web.texts``
#: (``EN`` and ``JA`` dicts); add a new area's module here.
AREAS = (
    "core",
    "analytics",
    "dropbox",
    "campaigns",
    "mail",
)


def _load() -> dict[str, dict[str, str]]:
    import importlib

    out: dict[str, dict[str, str]] = {"en": {}, "ja": {}}
    for area in AREAS:
        module = importlib.import_module(f"gateway.web.texts.{area}")
        for lang, table in (("en", module.EN), ("ja", module.JA)):
            clash = set(out[lang]) & set(table)
            if clash:
                raise ValueError(f"catalogue keys defined twice: {sorted(clash)}")
            out[lang].update(table)
    return out


CATALOGUE: dict[str, dict[str, str]] = _load()


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
