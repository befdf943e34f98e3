"""Decoding bytes the way Japanese mail really arrives, never raising.

Carriers and old clients label mail ``Shift_JIS`` or ``ISO-2022-JP`` but use
the Microsoft/NEC extensions (circled numbers, carrier emoji in the
user-defined area).  Python's strict codecs reject those, so Shift_JIS is read
as cp932 (a superset whose user-defined area maps to Unicode's private use
area), and ISO-2022-JP is converted to cp932 bytes by arithmetic and decoded
the same way.  Unknown charsets fall back instead of raising LookupError.
"""

from __future__ import annotations

import codecs
import re

_ALIASES = {
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "cp932": "cp932",
    "iso-2022-jp": "iso-2022-jp",
    "iso-2022-jp-1": "iso-2022-jp",
    "iso-2022-jp-2": "iso-2022-jp",
    "iso-2022-jp-ms": "iso-2022-jp",
    "cp50220": "iso-2022-jp",
    "cp50221": "iso-2022-jp",
    "csiso2022jp": "iso-2022-jp",
    "euc-jp": "euc_jis_2004",
    "x-euc-jp": "euc_jis_2004",
    "ks_c_5601-1987": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "us-ascii": "utf-8",  # 8-bit bytes in "ASCII" mail are nearly always UTF-8
    "ascii": "utf-8",
    "unknown-8bit": "utf-8",
    "x-unknown": "utf-8",
}

_ESC = re.compile(rb"\x1b(\$@|\$B|\$\(D|\$\(Q|\(B|\(J|\(I|\(H)")


def normalise_charset(charset: str | None) -> str | None:
    if not charset:
        return None
    name = charset.strip().strip('"').lower()
    name = _ALIASES.get(name, name)
    if name == "iso-2022-jp":
        return name
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _jis_pair_to_sjis(j1: int, j2: int) -> bytes:
    s1 = ((j1 + 1) >> 1) + (0x70 if j1 <= 0x5E else 0xB0)
    if j1 >= 0x75:  # user-defined rows (carrier emoji) → cp932's F040–F4FC, as CP50221 does
        s1 += 5
    s2 = j2 + (0x1F if j1 & 1 else 0x7E)
    if j1 & 1 and s2 >= 0x7F:
        s2 += 1
    return bytes((s1 & 0xFF, s2 & 0xFF))


def iso2022jp_to_cp932(data: bytes) -> bytes:
    """Re-encode ISO-2022-JP (with NEC/carrier rows) as cp932 bytes."""
    out = bytearray()
    mode = b"(B"
    pos = 0
    for m in _ESC.finditer(data):
        out += _convert_run(data[pos : m.start()], mode)
        mode = m.group(1)
        pos = m.end()
    out += _convert_run(data[pos:], mode)
    return bytes(out)


def _convert_run(chunk: bytes, mode: bytes) -> bytes:
    if mode in (b"$B", b"$@", b"$(Q", b"$(D"):
        out = bytearray()
        i = 0
        while i < len(chunk):
            c = chunk[i]
            if c in (0x0A, 0x0D) or i + 1 >= len(chunk):
                out.append(c)
                i += 1
                continue
            j1, j2 = c, chunk[i + 1]
            if 0x21 <= j1 <= 0x7E and 0x21 <= j2 <= 0x7E:
                out += _jis_pair_to_sjis(j1, j2)
            else:
                out += b"?"
            i += 2
        return bytes(out)
    if mode == b"(I":  # JIS X 0201 half-width katakana
        return bytes(c + 0x80 if 0x21 <= c <= 0x5F else c for c in chunk)
    return chunk


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Best-effort text for ``data`` labelled ``charset``; never raises.

    When the label is missing or wrong: UTF-8 if the bytes are UTF-8; cp932
    only when its reading looks like Japanese (so ``£`` and ``Pádraig`` in
    unlabelled Latin mail, or Big5 with one bad byte, do not turn into
    katakana); else the label with replacement characters (one bad byte
    costs a character, not the whole text); else a detector's guess.
    """
    name = normalise_charset(charset)
    if name == "iso-2022-jp" or (name is None and b"\x1b$" in data):
        return iso2022jp_to_cp932(data).decode("cp932", "replace")
    if name:
        try:
            return data.decode(name)
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    japanese = as_japanese(data)
    if japanese is not None:
        return japanese
    if name and name != "utf-8":
        return data.decode(name, "replace")
    return guess(data)


#: Full-width hiragana and katakana: what Japanese text is never without.
_KANA = re.compile("[\u3041-\u30ff]")
#: Half-width katakana: what single 8-bit Latin or Big5 bytes become when read as cp932.
_HALF_KANA = re.compile("[\uff61-\uff9f]")


def as_japanese(data: bytes) -> str | None:
    """The cp932 reading of ``data`` when it is plausibly Japanese, else None.

    Real Japanese text has full-width kana (particles, katakana words); text
    misread as cp932 has stray kanji and half-width katakana instead, since
    Latin-1 and Big5 bytes fall into cp932's single-byte kana range.
    """
    try:
        text = data.decode("cp932")
    except UnicodeDecodeError:
        return None
    kana = len(_KANA.findall(text))
    return text if kana and len(_HALF_KANA.findall(text)) <= kana else None


#: What unlabelled 8-bit mail is written in, in order of preference when the
#: detector finds several equally clean readings (cp1252 first: what the web and
#: mail clients assume for unlabelled Western text).
GUESSES = ("cp1252", "big5", "gb18030", "cp949", "euc_jis_2004", "cp1251", "koi8_r", "iso8859_2")


def guess(data: bytes) -> str:
    """Unlabelled, not UTF-8, not Japanese: the cleanest reading among :data:`GUESSES`."""
    from charset_normalizer import from_bytes  # imported on the rare path only

    matches = list(from_bytes(data, cp_isolation=list(GUESSES)))
    if matches:
        best = min(m.chaos for m in matches)
        names = {
            enc
            for m in matches
            if m.chaos == best
            for enc in (m.encoding, *m.could_be_from_charset)
        }
        for enc in GUESSES:
            if enc in names:
                return data.decode(enc, "replace")
    return data.decode("cp1252", "replace")


_ENCODED_WORD = re.compile(
    r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=(?:[ \t\r\n]+(?==\?[^?\s]+\?[bBqQ]\?))?"
)


def decode_header_value(value: str | None) -> str:
    """RFC 2047 words (adjacent ones joined), raw 8-bit bytes guessed; never raises.

    ``value`` is what the compat32 parser gives: undecoded text whose 8-bit
    bytes are kept as surrogate escapes.
    """
    if not value:
        return ""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte: it becomes "?"
        raw = value.encode("utf-8", "replace")
        value = raw.decode("utf-8")
    if b"\x1b$" in raw or any(b > 0x7F for b in raw):
        text = decode_bytes(raw, None)
    else:
        text = value
    return _unfold(_ENCODED_WORD.sub(_decode_word, text)) if "=?" in text else _unfold(text)


def _decode_word(m: re.Match[str]) -> str:
    charset, enc, payload = m.group(1).split("*")[0], m.group(2).upper(), m.group(3)
    try:
        if enc == "B":
            data = _b64(payload)
        else:
            data = _qp(payload)
    except ValueError:
        return m.group(0)
    return decode_bytes(data, charset)


def _b64(payload: str) -> bytes:
    import base64

    payload = payload.rstrip("=")
    return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=False)


def _qp(payload: str) -> bytes:
    import quopri

    return quopri.decodestring(payload.replace("_", " ").encode("ascii", "replace"), header=False)


def _unfold(text: str) -> str:
    return re.sub(r"\r?\n[ \t]*", " ", text).strip()
