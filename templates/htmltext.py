"""A small HTML -> plain text converter for the text/plain alternative.

Mail clients that show the text part (and spam filters that compare both parts)
want readable text, not a tag soup: paragraphs and ``<br>`` become line breaks,
links become ``text (url)``, list items get a dash, scripts and styles vanish.
Built on :mod:`html.parser` so it needs no extra dependency; it runs once per
template at compile time, not per message.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li", "main",
        "nav", "ol", "pre", "section", "table", "tbody", "thead", "tfoot", "tr", "ul",
    }
)  # fmt: skip
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6"})
_SKIP = frozenset({"script", "style", "head", "title", "template"})
_BREAK = "\x01"  # a hard line break that whitespace collapsing must keep
_PARA = "\x02"
_SPACE = "\x04"  # a space inside <pre> that collapsing must keep
_NO_MARKERS = dict.fromkeys(range(1, 5))  # input never contains our markers
_BLOCK_EDGE = "\x03"  # an element boundary: one line break however many


class _TextBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip_depth += 1
        elif tag == "br":
            self.out.append(_BREAK)
        elif tag in _PARAGRAPH:
            self.out.append(_PARA)
        elif tag in _BLOCK:
            self.out.append(_BLOCK_EDGE)
            if tag == "li":
                self.out.append("- ")
            elif tag == "pre":
                self.pre_depth += 1
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.out)))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.out.append(alt)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _SKIP:
            self.skip_depth -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _PARAGRAPH:
            self.out.append(_PARA)
        elif tag in _BLOCK:
            self.out.append(_BLOCK_EDGE)
            if tag == "pre":
                self.pre_depth = max(0, self.pre_depth - 1)
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            text = "".join(self.out[start:]).strip()
            if href and not href.startswith("#") and href not in (text, f"mailto:{text}"):
                self.out.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        data = data.translate(_NO_MARKERS)
        if self.pre_depth:
            data = data.replace(" ", _SPACE).replace("\t", _SPACE * 4).replace("\n", _BREAK)
        self.out.append(data)


def html_to_text(html: str) -> str:
    """Readable plain text for ``html``."""
    builder = _TextBuilder()
    builder.feed(html)
    builder.close()
    text = re.sub(r"[ \t\r\n\f\v]+", " ", "".join(builder.out))
    # Turn the markers into real breaks: at most one blank line in a row.
    text = re.sub(r" ?([\x01\x02\x03] ?)+", _breaks, text)
    return text.strip("\n ").replace(_SPACE, " ") + "\n"


def _breaks(match: re.Match[str]) -> str:
    run = match.group(0)
    return "\n\n" if _PARA in run or run.count(_BREAK) > 1 else "\n"
