"""Link rewriting: tracked links come back to us, everything else is left exactly as written."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.browser import chromium_browser
from tracking.links import (
    list_unsubscribe_headers,
    rewrite_html,
    safe_redirect_target,
    unsubscribe_url,
)
from tracking.tokens import TokenKind, TokenSigner, keys_from_secrets

PUBLIC = "https://mg.example.jp"
SEND = 31337


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(keys_from_secrets(["links-test"]))


def rewrite(signer, html, **kw):
    kw.setdefault("skip_domains", set())
    kw.setdefault("unsubscribe_url", None)
    return rewrite_html(html, send_id=SEND, signer=signer, public_url=PUBLIC, **kw)


def click_index(signer, href: str) -> int:
    assert href.startswith(PUBLIC + "/t/c/"), href
    parsed = signer.verify(href.removeprefix(PUBLIC + "/t/c/"), TokenKind.CLICK)
    assert parsed is not None and parsed.send_id == SEND
    return parsed.link_index


def hrefs(html: str) -> list[str]:
    return re.findall(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", html, re.I)


def test_http_and_https_links_redirect_to_exactly_the_stored_url(signer):
    html = '<p><a href="https://shop.example.com/item?id=1">buy</a> <a href="http://old.example/">old</a></p>'
    result = rewrite(signer, html)
    assert "shop.example.com" not in result.html and "old.example" not in result.html
    tracked = [h for h in re.findall(r'href="([^"]*)"', result.html)]
    targets = [result.links[click_index(signer, h)] for h in tracked]
    assert "https://shop.example.com/item?id=1" in targets
    assert "http://old.example/" in targets


def test_single_double_unquoted_and_uppercase_hrefs_are_all_tracked(signer):
    html = (
        "<body><a href='https://a.example/1'>1</a>"
        '<A HREF="https://a.example/2">2</A>'
        "<a href=https://a.example/3>3</a>"
        '<a class="btn" Href = "https://a.example/4" target=_blank>4</a></body>'
    )
    result = rewrite(signer, html)
    assert result.links[:4] == [f"https://a.example/{i}" for i in (1, 2, 3, 4)]
    assert '<A HREF="' + PUBLIC in result.html  # original quoting and case kept
    assert "<a href='" + PUBLIC in result.html
    assert "<a href=" + PUBLIC in result.html
    assert "target=_blank>4</a>" in result.html


def test_entities_in_hrefs_are_decoded_in_the_stored_link(signer):
    html = (
        '<a href="https://a.example/s?q=1&amp;lang=ja&#38;x=&quot;y&quot;">x</a>'
        '<a href="  https://a.example/\n\tpad ded  ">y</a>'
    )
    result = rewrite(signer, html)
    assert result.links[0] == 'https://a.example/s?q=1&lang=ja&x="y"'
    assert result.links[1] == "https://a.example/pad%20ded"  # as a browser would send it


@pytest.mark.parametrize(
    "href",
    [
        "mailto:sales@example.co.jp?subject=%E8%B3%87%E6%96%99",
        "tel:+81-3-1234-5678",
        "sms:+8190",
        "#section-2",
        "/relative/path",
        "relative.html",
        "",
        "//protocol-relative.example/x",
        "ftp://files.example/",
        "http:no-slashes.example",
        "https:///no-host",
        "https://user:pass@phish.example/",
    ],
)
def test_links_that_are_not_absolute_http_are_left_exactly_as_written(signer, href):
    html = f'<body><p>before <a href="{href}" class="k">link</a> after</p></body>'
    result = rewrite(signer, html)
    assert f'<a href="{href}" class="k">link</a>' in result.html
    assert result.links == [PUBLIC + "/"]  # only the honeypot


@pytest.mark.parametrize(
    "href",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        " java\tscript:alert(1)",
        "&#106;avascript:alert(1)",
        "vbscript:msgbox",
        "data:text/html,<script>alert(1)</script>",
    ],
)
def test_script_and_data_links_are_neutralised_not_tracked(signer, href):
    html = f'<a href="{href.replace(chr(34), "&quot;")}">x</a>'
    if "<" in href:
        html = f"<a href='{href}'>x</a>"
    result = rewrite(signer, html)
    assert re.search(r"""<a href=["']#["']>x</a>""", result.html), result.html
    assert result.neutralised == 1
    assert all("script" not in link and "data:" not in link for link in result.links)


def test_the_unsubscribe_link_and_our_own_urls_are_not_tracked(signer):
    unsub = unsubscribe_url(PUBLIC, signer, SEND)
    html = (
        f'<a href="{unsub}">配信停止</a>'
        f'<a href="{PUBLIC}/t/c/already-tracked">x</a>'
        f'<a href="{PUBLIC}/u/other-send">y</a>'
    )
    result = rewrite(signer, html, unsubscribe_url=unsub)
    assert f'<a href="{unsub}">配信停止</a>' in result.html
    assert f'<a href="{PUBLIC}/t/c/already-tracked">' in result.html
    assert result.links == [PUBLIC + "/"]


def test_skip_domains_and_their_subdomains_are_not_tracked(signer):
    html = (
        '<a href="https://example.co.jp/">a</a>'
        '<a href="https://www.Example.CO.JP./x">b</a>'
        '<a href="https://notexample.co.jp/">c</a>'
        '<a href="https://example.co.jp.evil.example/">d</a>'
    )
    result = rewrite(signer, html, skip_domains={"Example.co.jp"})
    assert '<a href="https://example.co.jp/">a</a>' in result.html
    assert '<a href="https://www.Example.CO.JP./x">b</a>' in result.html
    assert result.links[:2] == ["https://notexample.co.jp/", "https://example.co.jp.evil.example/"]


def test_each_occurrence_gets_its_own_index_so_reports_can_tell_buttons_apart(signer):
    html = '<a href="https://a.example/">logo</a><a href="https://a.example/">button</a>'
    result = rewrite(signer, html)
    first, second = re.findall(r'href="([^"]*)"', result.html)[:2]
    assert {click_index(signer, first), click_index(signer, second)} == {0, 1}


def test_html_outside_the_rewritten_hrefs_is_unchanged_byte_for_byte(signer):
    original = (
        '<!DOCTYPE html>\n<html lang="ja"><head><meta charset="utf-8">'
        "<style>a > b { color: red }</style></head>\n"
        '<body style="margin:0">\n'
        '<!--[if mso]><a href="https://mso.example/">outlook</a><![endif]-->\n'
        '<table><tr><td title="a > b"><a title=\'x>y\' href="https://a.example/?a=1&amp;b=2"'
        " data-x=it's>山田様</a></td></tr></table>\n"
        '<a href="mailto:x@example.jp">mail</a>\u3000全角スペース\r\n'
        "</body>\n</html>\n"
    )
    result = rewrite(signer, original)
    # Undo our three kinds of edits; what is left must be the original text.
    restored = result.html
    for href in re.findall(re.escape(PUBLIC) + r"/t/c/[A-Za-z0-9_-]+", result.html):
        url = result.links[click_index(signer, href)]
        restored = restored.replace(href, url.replace("&", "&amp;"), 1)
    restored = re.sub(
        r'<a href="' + re.escape(PUBLIC) + r'/"[^>]*aria-hidden="true"[^>]*></a>', "", restored
    )
    restored = re.sub(r'<img src="' + re.escape(PUBLIC) + r'/t/o/[^"]+"[^>]*>', "", restored)
    assert restored == original
    assert result.links[:2] == ["https://mso.example/", "https://a.example/?a=1&b=2"]


def test_open_pixel_is_added_before_the_closing_body_tag(signer):
    result = rewrite(signer, "<html><body><p>hi</p></BODY></html>")
    match = re.search(
        r'<img src="'
        + re.escape(PUBLIC)
        + r'/t/o/([^"]+)" width="1" height="1" alt="" style="[^"]+">\s*</BODY>',
        result.html,
    )
    assert match, result.html
    parsed = signer.verify(match.group(1), TokenKind.OPEN)
    assert parsed is not None and parsed.send_id == SEND


def test_open_pixel_and_honeypot_are_appended_to_a_fragment_without_body(signer):
    result = rewrite(signer, "<p>no body tag</p>")
    assert result.html.startswith("<p>no body tag</p>")
    assert result.html.endswith('alt="" style="' + result.html.split('alt="" style="')[1])
    assert "/t/o/" in result.html and 'aria-hidden="true"' in result.html


def test_honeypot_is_a_tracked_link_hidden_from_people(signer):
    result = rewrite(signer, '<body><a href="https://a.example/">visible</a></body>')
    honeypots = re.findall(
        r'<a href="([^"]+)" style="([^"]+)" aria-hidden="true" tabindex="-1"></a>', result.html
    )
    assert len(honeypots) == 1
    href, style = honeypots[0]
    assert click_index(signer, href) == result.honeypot_index == 1
    assert "display:none" in style and "mso-hide:all" in style
    assert result.links[result.honeypot_index] == PUBLIC + "/"
    # It is the first link in the body: scanners that stop early still meet it.
    assert result.html.index(href) < result.html.index("visible")


def test_a_quoted_greater_than_sign_does_not_end_the_tag(signer):
    result = rewrite(signer, '<a title="1 > 0" href="https://a.example/">x</a>')
    assert result.links[0] == "https://a.example/"


def test_only_the_first_href_of_a_tag_counts_as_browsers_do(signer):
    result = rewrite(
        signer, '<a href="https://first.example/" href="https://second.example/">x</a>'
    )
    assert result.links[0] == "https://first.example/"
    assert 'href="https://second.example/"' in result.html


def test_attribute_names_that_merely_contain_href_are_ignored(signer):
    html = '<a data-href="https://a.example/" xhref="https://b.example/">no href</a><abbr href="https://c.example/">x</abbr>'
    result = rewrite(signer, html)
    assert html in result.html
    assert result.links == [PUBLIC + "/"]


def test_hostile_html_is_rewritten_in_linear_time(signer):
    start = time.perf_counter()
    rewrite(signer, "<a " + "x=" * 20000 + '"' + "'" * 20000 + "<a href" * 20000)
    rewrite(signer, "<a href" * 20000)
    rewrite(signer, '<a x="' * 20000)
    rewrite(signer, '<body x="' * 20000)
    rewrite(signer, "<a x='<a y=\" q='" * 20000)
    rewrite(signer, "<a" + " " * 100_000)
    rewrite(signer, '<a href="' + "a" * 100_000)
    assert time.perf_counter() - start < 2.0


def test_list_unsubscribe_headers_offer_rfc8058_one_click(signer):
    url = unsubscribe_url(PUBLIC + "/", signer, SEND)
    assert url.startswith(PUBLIC + "/u/")
    assert signer.verify(url.rsplit("/", 1)[1], TokenKind.UNSUBSCRIBE).send_id == SEND
    headers = list_unsubscribe_headers(url, mailto="unsub@mg.example.jp")
    assert headers["List-Unsubscribe"] == f"<{url}>, <mailto:unsub@mg.example.jp>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize(
    "url",
    [
        "//evil.com",
        "\\\\evil.com",
        "/\\evil.com",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "http:evil.com",
        "http:/evil.com",
        "http:/\\evil.com",
        "http:\\\\evil.com",
        "https:\\/evil.com",
        "https:///evil",
        "https://",
        "%2F%2Fevil",
        "http%3A%2F%2Fevil.com",
        "data:text/html,hi",
        "ftp://files.example/",
        "https://evil.com\\@good.example",
        "https://good.example@evil.com/",
        "https://%65vil.com/",
        "https://evil.com\uff0f.good.example/",
        "https://evil.com:99999/",
        "https://evil.com:port/",
        " https://leading-space.example/",
        "https://tab\t.example/",
        "https://new\nline.example/",
        "https://nul\x00.example/",
        "https://[not-ipv6]/",
        "",
        "https://" + "a" * 9000 + ".example/",
    ],
)
def test_safe_redirect_target_refuses_tricks(url):
    assert safe_redirect_target(url) is False


@pytest.mark.parametrize("url", [None, 42, b"https://a.example/"])
def test_safe_redirect_target_refuses_non_strings(url):
    assert safe_redirect_target(url) is False


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com",
        "http://example.com/",
        "HTTPS://Example.COM/Path?q=1&r=%2F#frag",
        "https://shop.example.co.jp:8443/商品?id=1",
        "https://日本語.jp/",
        "https://xn--wgv71a119e.jp/",
        "http://192.0.2.1/x",
        "http://[2001:db8::1]:8080/x",
        "https://a.example/redirect?to=//evil.com",
    ],
)
def test_safe_redirect_target_accepts_normal_urls(url):
    assert safe_redirect_target(url) is True


def test_the_pixel_is_a_43_byte_transparent_gif_that_no_cache_keeps():
    from tracking.pixel import PIXEL_GIF, PIXEL_HEADERS

    assert len(PIXEL_GIF) == 43 and PIXEL_GIF.startswith(b"GIF89a") and PIXEL_GIF.endswith(b";")
    assert PIXEL_GIF[6:10] == b"\x01\x00\x01\x00"  # 1×1
    gce = PIXEL_GIF.index(b"\x21\xf9\x04")
    assert PIXEL_GIF[gce + 3] & 1  # transparency flag set
    assert PIXEL_HEADERS["Content-Type"] == "image/gif"
    assert PIXEL_HEADERS["Content-Length"] == "43"
    cache = PIXEL_HEADERS["Cache-Control"]
    for directive in ("no-cache", "no-store", "must-revalidate", "private"):
        assert directive in cache


# --- in a real browser ------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    with chromium_browser() as browser:
        yield browser


def test_in_a_browser_people_see_the_same_message_and_no_honeypot(signer, chromium):
    original = (
        '<html><body style="margin:0;font:16px sans-serif">'
        '<p>山田様</p><a id="buy" href="https://shop.example/?a=1&amp;b=2">購入する</a>'
        "<p>以上</p></body></html>"
    )
    result = rewrite(signer, original)
    page = chromium.new_page()
    try:
        page.route("**/*", lambda route: route.fulfill(status=200, body=b""))
        page.set_content(original)
        before = page.inner_text("body")
        page.set_content(result.html)
        assert page.inner_text("body") == before
        honeypot = page.locator('a[aria-hidden="true"]')
        assert honeypot.count() == 1 and not honeypot.is_visible()
        # Tabbing from the top lands on the real link, never the honeypot.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "buy"
        pixel = page.locator("img").bounding_box()
        assert pixel is not None and pixel["width"] <= 1 and pixel["height"] <= 1
        # The browser resolves the visible link to our click URL, which maps back.
        href = page.eval_on_selector("#buy", "a => a.href")
        assert result.links[click_index(signer, href)] == "https://shop.example/?a=1&b=2"
    finally:
        page.close()
