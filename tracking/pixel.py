"""The open pixel: a 1×1 transparent GIF and the headers that keep it honest.

The endpoint answers this image for every request, valid token or not
(listmonk does the same): a broken image icon in the recipient's mail is a
worse outcome than an uncounted open, and the answer must not reveal whether
a token was genuine.  (CONTRACT.md asks for 404 on a bad token; the endpoint
may send these bytes with status 404 — mail clients render the body anyway.)

The cache headers matter for counting: a cached pixel is an open we never
see, and a shared cache (corporate proxy) must never serve one recipient's
pixel to another, hence ``private`` and ``no-store``.
"""

from __future__ import annotations

__all__ = ["PIXEL_GIF", "PIXEL_HEADERS", "PIXEL_MEDIA_TYPE"]

#: GIF89a, 1×1, a two-entry palette, the single pixel transparent
#: (Graphic Control Extension), LZW-coded.  The canonical 43-byte form.
PIXEL_GIF: bytes = (
    b"GIF89a"  # signature + version
    b"\x01\x00\x01\x00"  # logical screen 1×1
    b"\x80\x00\x00"  # global colour table (2 entries), bg 0, aspect 0
    b"\x00\x00\x00\xff\xff\xff"  # palette: black, white
    b"\x21\xf9\x04\x01\x00\x00\x00\x00"  # GCE: transparent colour index 0
    b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"  # image descriptor 1×1
    b"\x02\x02\x44\x01\x00"  # LZW min code size 2, one data block
    b"\x3b"  # trailer
)

PIXEL_MEDIA_TYPE = "image/gif"

PIXEL_HEADERS: dict[str, str] = {
    "Content-Type": PIXEL_MEDIA_TYPE,
    "Content-Length": str(len(PIXEL_GIF)),
    "Cache-Control": "no-cache, no-store, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
