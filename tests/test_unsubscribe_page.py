"""Unsubscribe pages: bilingual, self-contained, and safe with hostile input."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from tests.support.browser import chromium_browser
from tracking.unsubscribe_page import (
    PAGE_HEADERS,
    mask_email,
    pick_lang,
    render_confirm_page,
    render_done_page,
    render_invalid_page,
)

HOSTILE = "\"><script>alert('x')</script><img src=x onerror=alert(1)>&amp;@example.jp"
ACTION = "https://mg.example.jp/u/EkDAxAcHfFL0YH2kkFnlkgn7"


class Page(HTMLParser):
    """Collects what a browser would see: tags with attributes, and text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text = ""
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data

    def forms(self):
        return [attrs for tag, attrs in self.tags if tag == "form"]


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_confirm_page_asks_and_posts_back_to_the_same_url(lang):
    page = Page(render_confirm_page(lang, "ta***@example.co.jp", ACTION))
    assert page.forms() == [{"method": "post", "action": ACTION}]
    assert (
        "input",
        {"type": "hidden", "name": "List-Unsubscribe", "value": "One-Click"},
    ) in page.tags
    assert any(tag == "button" for tag, _ in page.tags)
    assert "ta***@example.co.jp" in page.text
    assert ("html", {"lang": lang}) in page.tags


def test_pages_speak_the_chosen_language():
    assert "配信を停止する" in render_confirm_page("ja", "a***@b.jp", ACTION)
    assert "Unsubscribe" in render_confirm_page("en", "a***@b.jp", ACTION)
    assert "配信を停止しました" in render_done_page("ja", "a***@b.jp")
    assert "You are unsubscribed" in render_done_page("en", "a***@b.jp")
    assert "無効" in render_invalid_page("ja")
    assert "not valid" in render_invalid_page("en")
    assert 'lang="ja"' in render_done_page("xx")  # unknown language falls back to Japanese


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_a_hostile_email_is_shown_as_text_never_as_markup(lang):
    for html in (
        render_confirm_page(lang, HOSTILE, ACTION),
        render_done_page(lang, HOSTILE),
    ):
        page = Page(html)
        assert HOSTILE in page.text
        assert "<script" not in html and "onerror" not in [k for _, a in page.tags for k in a]
        assert {tag for tag, _ in page.tags} <= {
            "html",
            "head",
            "meta",
            "title",
            "style",
            "body",
            "main",
            "h1",
            "p",
            "span",
            "form",
            "input",
            "button",
        }


def test_a_hostile_action_url_cannot_break_out_of_its_attribute():
    evil = 'https://mg.example.jp/u/x" onsubmit="alert(1)'
    page = Page(render_confirm_page("en", "a***@b.jp", evil))
    assert page.forms() == [{"method": "post", "action": evil}]


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_pages_load_nothing_from_anywhere(lang):
    for html in (
        render_confirm_page(lang, "a***@b.jp", ACTION),
        render_done_page(lang),
        render_invalid_page(lang),
    ):
        page = Page(html)
        for tag, attrs in page.tags:
            assert "src" not in attrs and not (tag == "link")
            assert tag != "script"
        assert "url(" not in html and "@import" not in html
    assert "default-src 'none'" in PAGE_HEADERS["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in PAGE_HEADERS["Content-Security-Policy"]


def test_done_and_invalid_pages_offer_no_form():
    assert Page(render_done_page("ja", "a***@b.jp")).forms() == []
    assert Page(render_invalid_page("en")).forms() == []


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, "ja"),
        ("", "ja"),
        ("en", "en"),
        ("en-US,en;q=0.9", "en"),
        ("ja,en-US;q=0.9,en;q=0.8", "ja"),
        ("en-US,en;q=0.9,ja;q=0.8", "en"),
        ("fr-FR,fr;q=0.9,en;q=0.5", "en"),
        ("fr-FR,de", "ja"),
        ("*", "ja"),
        ("en;q=0.2,ja;q=0.7", "ja"),
        ("en;q=0", "ja"),
        ("EN-gb", "en"),
        ("en;q=abc", "ja"),
        ("en;q=5", "ja"),
        (";;;,,,==", "ja"),
        ("en;q=0.5,ja;q=0.5", "en"),
        ("x" * 100_000, "ja"),
    ],
)
def test_pick_lang_follows_accept_language_with_japanese_by_default(header, lang):
    assert pick_lang(header) == lang


@pytest.mark.parametrize(
    ("email", "masked"),
    [
        ("taro.yamada@example.co.jp", "ta***@example.co.jp"),
        ("ab@example.jp", "a***@example.jp"),
        ("a@example.jp", "a***@example.jp"),
        ("山田@例え.jp", "山***@例え.jp"),
        ("no-at-sign", "no***"),
    ],
)
def test_mask_email_keeps_the_domain_and_hides_the_mailbox(email, masked):
    assert mask_email(email) == masked


# --- in a real browser ------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    with chromium_browser() as browser:
        yield browser


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_in_a_browser_the_button_posts_one_click_and_hostile_input_stays_text(chromium, lang):
    page = chromium.new_page()
    requests = []
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.route(
            "https://mg.example.jp/**",
            lambda route: (
                requests.append((route.request.method, route.request.url, route.request.post_data)),
                route.fulfill(status=200, content_type="text/html", body=render_done_page(lang)),
            ),
        )
        page.goto(ACTION)  # the GET that shows the page; answer it with our page
        requests.clear()
        page.set_content(render_confirm_page(lang, HOSTILE, ACTION))
        assert HOSTILE in page.inner_text("main")
        assert requests == []  # rendering loads nothing
        page.click("button")
        page.wait_for_load_state()
        assert requests == [("POST", ACTION, "List-Unsubscribe=One-Click")]
        assert dialogs == []  # no script ran
    finally:
        page.close()
