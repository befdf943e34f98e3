"""The HTML part made safe to show in the CRM: nh3 with a mail-sized allow-list.

nh3 (ammonia) keeps only the tags and attributes listed here, so anything
not named is gone: ``<script>``/``<style>`` with their content, event handlers,
``style`` attributes, forms, iframes, objects and SVG.  URLs keep only the
schemes in :data:`URL_SCHEMES` (no ``javascript:``, ``data:``, ``vbscript:``).
Links open in a new tab with ``rel="noopener noreferrer nofollow"``.

Remote images are tracking pixels more often than content, so an ``http(s):``
``src`` is dropped (the ``alt`` text stays as the placeholder) and counted unless
the reader asked for images; ``cid:`` images point at the attachment URL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import nh3

#: Structure and text formatting only: no forms, media, frames, SVG or style.
TAGS = frozenset(nh3.ALLOWED_TAGS) - {"img"} | {"img", "font", "center"}
ATTRIBUTES: dict[str, set[str]] = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "img": {"src", "alt", "width", "height", "title"},
    "td": {"colspan", "rowspan", "align", "valign", "width"},
    "th": {"colspan", "rowspan", "align", "valign", "width"},
    "table": {"width", "align", "border", "cellpadding", "cellspacing"},
    "font": {"color", "size"},
    "a": {"href", "title"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto", "cid"})
LINK_REL = "noopener noreferrer nofollow"
_REMOTE = ("http://", "https://", "//")


@dataclass(slots=True)
class SafeHtml:
    html: str
    images_blocked: int


def sanitise(html: str, *, images: bool, cid_url: Callable[[str], str | None]) -> SafeHtml:
    """``html`` without active content; remote images blocked unless ``images``."""
    blocked = 0

    def on_attribute(tag: str, attr: str, value: str) -> str | None:
        nonlocal blocked
        if tag != "img" or attr != "src":
            return value
        src = value.strip()
        if src.lower().startswith("cid:"):
            return cid_url(src[4:].strip("<>")) or None
        if src.lower().startswith(_REMOTE) and not images:
            blocked += 1
            return None
        return value

    cleaned = nh3.clean(
        html,
        tags=set(TAGS),
        attributes=ATTRIBUTES,
        url_schemes=set(URL_SCHEMES),
        link_rel=LINK_REL,
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
        attribute_filter=on_attribute,
    )
    return SafeHtml(cleaned, blocked)


def cid_resolver(content_ids: Mapping[str, int], url_of: Callable[[int], str]):
    """``cid:`` → the attachment URL of the part with that Content-ID."""

    def resolve(cid: str) -> str | None:
        index = content_ids.get(cid.strip())
        return None if index is None else url_of(index)

    return resolve
