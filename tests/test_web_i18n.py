"""The dashboard's catalogue: both languages say everything, and templates hold no prose."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gateway.web import i18n
from gateway.web.base import TEMPLATES


def test_japanese_and_english_have_the_same_keys():
    assert set(i18n.CATALOGUE["ja"]) == set(i18n.CATALOGUE["en"])
    assert all(i18n.CATALOGUE["ja"].values()) and all(i18n.CATALOGUE["en"].values())


def test_every_key_a_template_asks_for_exists():
    asked = set()
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        asked |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_.]+)["']\s*[,)]""", text))
    assert asked and not (asked - set(i18n.CATALOGUE["en"])), asked - set(i18n.CATALOGUE["en"])


def test_templates_hold_no_prose_of_their_own():
    """Text between tags is an expression or punctuation, never words in either language."""
    for path in TEMPLATES.rglob("*.html"):
        body = re.sub(r"{[{%#].*?[}%#]}", "", path.read_text(), flags=re.S)
        body = re.sub(r"<[^>]*>", "\n", body)
        words = [w for w in re.findall(r"[A-Za-z]{3,}|[\u3040-\u30ff\u4e00-\u9fff]+", body)]
        assert not words, f"{path.name}: {words[:5]}"


def test_the_language_is_chosen_then_remembered_then_the_browsers_then_the_orgs():
    assert i18n.negotiate("en", "ja", "ja") == "en"
    assert i18n.negotiate(None, "en", "ja") == "en"
    assert i18n.negotiate("xx", None, "fr-FR,en;q=0.5,ja;q=0.8") == "ja"
    assert i18n.negotiate(None, None, "fr", "en") == "en"
    assert i18n.negotiate(None, None, "", None) == "ja"


def test_times_are_in_the_orgs_zone_and_names_in_its_order():
    at = datetime(2026, 11, 26, 15, 30, tzinfo=UTC)
    assert i18n.format_datetime(at, "Asia/Tokyo", "ja") == "2026年11月27日 00:30"
    assert i18n.format_datetime(at, "Asia/Tokyo", "en") == "2026-11-27 00:30 JST"
    record = {"last_name": "山田", "first_name": "太郎"}
    assert i18n.person_name(record, "ja") == "山田 太郎"
    assert i18n.person_name({"last_name": "Smith", "first_name": "Ann"}, "en") == "Ann Smith"
