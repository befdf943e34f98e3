"""What an individual send may carry besides its body: CC, attachments, a thread to reply in.

Pure functions over the request's JSON values: each either returns the typed
value the send steps use or raises :class:`RequestProblem` with the HTTP
status and code the API answers with (413 for sizes, 422 for the rest), so
hostile input is refused here, once, before anything is stored.

Decisions, documented in the README ("CC, attachments, replies and deals"):

* **CC** entries are an address (``"a@b.jp"``), ``{"email", "name"}`` or a
  record ``{"module", "id"}`` (leads, contacts, deals: the deal's contact).
  Every message of the request carries the same CC header; each CC recipient
  counts against the individual quota like a To recipient.  A suppressed CC
  address is dropped and named in the response's ``cc_skipped`` (the message
  still goes to the others), as Postal and Mautic drop suppressed recipients.
* **Attachments** are at most :data:`MAX_ATTACHMENTS` files of together at
  most :data:`MAX_ATTACHMENT_BYTES` decoded bytes; the composed message must
  also fit the deployment's maximum message size.
* **Replies**: ``Re: <subject>`` without stacking prefixes (Japanese clients
  write ``RE:``, ``Re：``, ``Ｒｅ：``, ``返信:``), and a ``References`` list
  capped at :data:`MAX_REFERENCES` ids (the thread's root and the latest).
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Any

from gateway.addresses import normalise

#: CC entries per request: a copy to a few colleagues or the customer's team, not a list.
MAX_CC = 20
MAX_ATTACHMENTS = 10
#: Decoded bytes of all attachments of one request (a quote or invoice PDF, a few images).
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
#: Attachment bytes times To recipients: every message is stored until delivered and filed.
MAX_ATTACHED_COPIES_BYTES = 50 * 1024 * 1024
MAX_FILENAME_CHARS = 255
#: Message-IDs kept in ``References``: the thread's root plus the most recent ones.
MAX_REFERENCES = 20
#: A referenced id longer than this is not worth a header line (RFC 5322 ids are short).
MAX_REFERENCE_CHARS = 250

#: A media type as RFC 6838 allows it, lower case, no parameters: nothing can ride along.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_B64_SPACE = re.compile(r"\s+")
#: Reply prefixes mail clients write, stacked or counted (``Re[2]:``), in ASCII or full width
#: (IGNORECASE folds ``Ｒｅ`` like ``Re``): German ``AW``, Nordic ``SV``, Dutch ``Antw``, Japanese
#: and Chinese clients' ``返信``/``回复``/``答复``.
_REPLY_PREFIX = re.compile(
    r"^[\s\u3000]*(?:(?:[rｒ][eｅ]|[aａ][wｗ]|sv|antw|返信|回复|答复)[\s\u3000]*"
    r"(?:[\[［(（][0-9０-９]+[\]］)）])?[\s\u3000]*[:：][\s\u3000]*)+",
    re.IGNORECASE,
)
_MSG_ID = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")  # printable ASCII, no < > or spaces


class RequestProblem(ValueError):
    """A request the API refuses: ``status`` (413/422), ``code`` and a message naming the field."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _invalid(message: str) -> RequestProblem:
    return RequestProblem(422, "invalid_field", message)


# --------------------------------------------------------------------------- CC


@dataclass(frozen=True, slots=True)
class CcEntry:
    """One CC entry as asked: an address (with an optional name) or a record."""

    email: str | None = None
    name: str | None = None
    module: str | None = None
    record_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        if self.module is not None:
            return {"module": self.module, "id": self.record_id}
        return {"email": self.email}


#: Modules a CC record may name (a deal is mailed at its contact, as in ``to``).
CC_MODULES = ("leads", "contacts", "deals")


def parse_cc(value: Any) -> list[CcEntry]:
    """``cc`` of the request: a list of addresses, ``{"email", "name"}`` or ``{"module", "id"}``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid('cc must be a list of addresses, {"email", "name"} or {"module", "id"}')
    if len(value) > MAX_CC:
        raise RequestProblem(422, "too_many_recipients", f"at most {MAX_CC} cc entries")
    return [_cc_entry(item, i) for i, item in enumerate(value)]


def _cc_entry(item: Any, i: int) -> CcEntry:
    where = f"cc[{i}]"
    if isinstance(item, str):
        return CcEntry(email=_address(item, where))
    if not isinstance(item, dict):
        raise _invalid(f'{where} must be an address, {{"email", "name"}} or {{"module", "id"}}')
    if "module" in item:
        module, rid = item.get("module"), item.get("id")
        if module not in CC_MODULES or not isinstance(rid, int) or isinstance(rid, bool):
            raise _invalid(f"{where} must name a record of {', '.join(CC_MODULES)} by id")
        return CcEntry(module=module, record_id=rid)
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise _invalid(f"{where}.name must be a string")
    if name is not None and (_CONTROL.search(name) or len(name) > 200):
        raise _invalid(f"{where}.name must be one line of at most 200 characters")
    return CcEntry(email=_address(item.get("email"), f"{where}.email"), name=name or None)


def _address(value: Any, where: str) -> str:
    if not isinstance(value, str) or _CONTROL.search(value) or len(value) > 320:
        raise _invalid(f"{where} must be an email address")
    if normalise(value) is None:
        raise _invalid(f"{where} {value!r} is not an email address")
    return value.strip().strip("<>").strip()


# --------------------------------------------------------------------------- attachments


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


def parse_attachments(value: Any) -> list[Attachment]:
    """``attachments`` of the request, decoded and checked; sizes over the limits are 413."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(
            'attachments must be a list of {"filename", "content_type", "content_base64"}'
        )
    if len(value) > MAX_ATTACHMENTS:
        raise RequestProblem(
            422, "too_many_attachments", f"at most {MAX_ATTACHMENTS} attachments per message"
        )
    out: list[Attachment] = []
    total = 0
    for i, item in enumerate(value):
        att = _attachment(item, f"attachments[{i}]", MAX_ATTACHMENT_BYTES - total)
        total += len(att.data)
        out.append(att)
    return out


def _too_large() -> RequestProblem:
    return RequestProblem(
        413,
        "attachments_too_large",
        f"attachments total more than {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB",
    )


def _attachment(item: Any, where: str, room: int) -> Attachment:
    if not isinstance(item, dict):
        raise _invalid(f'{where} must be {{"filename", "content_type", "content_base64"}}')
    filename, ctype, b64 = (
        item.get("filename"),
        item.get("content_type"),
        item.get("content_base64"),
    )
    if not isinstance(filename, str) or not filename.strip():
        raise _invalid(f"{where}.filename is required")
    if _CONTROL.search(filename):
        raise _invalid(f"{where}.filename contains a control character (a line break?)")
    if len(filename) > MAX_FILENAME_CHARS:
        raise _invalid(f"{where}.filename is longer than {MAX_FILENAME_CHARS} characters")
    if ctype is None:
        ctype = "application/octet-stream"
    if not isinstance(ctype, str) or not _MEDIA_TYPE.fullmatch(ctype.lower()):
        raise _invalid(f"{where}.content_type must be a media type such as application/pdf")
    ctype = ctype.lower()
    if ctype.startswith(("multipart/", "message/")):
        raise _invalid(f"{where}.content_type {ctype} cannot be attached as a file")
    if not isinstance(b64, str):
        raise _invalid(f"{where}.content_base64 is required (the file's bytes, base64)")
    compact = _B64_SPACE.sub("", b64)
    if len(compact) // 4 * 3 > room + 2:  # known too large before decoding
        raise _too_large()
    try:
        data = binascii.a2b_base64(compact.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _invalid(f"{where}.content_base64 is not valid base64") from None
    if len(data) > room:
        raise _too_large()
    return Attachment(filename=filename.strip(), content_type=ctype, data=data)


# --------------------------------------------------------------------------- replies


def reply_subject(original: str | None) -> str:
    """``Re: <subject>`` with any reply prefixes the original had taken off first.

    Filed mail brings anything: line breaks and control characters become
    spaces, so the subject can never add a header.
    """
    rest = " ".join(_CONTROL.sub(" ", original or "").split())
    rest = _REPLY_PREFIX.sub("", rest, count=1).strip()
    return f"Re: {rest}" if rest else "Re:"


def usable_id(value: str | None) -> bool:
    """A Message-ID we can put in a header as it is (filed mail brings anything)."""
    return bool(value) and len(value) <= MAX_REFERENCE_CHARS and bool(_MSG_ID.fullmatch(value))


def thread_references(references: list[str] | None, message_id: str | None) -> list[str]:
    """The reply's ``References`` (bare ids): the original's, then its own id; capped.

    RFC 5322 §3.6.4: the parent's References followed by the parent's id.  A
    long thread keeps its root (clients thread on it) and the latest ids.
    """
    ids: list[str] = []
    for ref in [*(references or []), message_id]:
        if isinstance(ref, str) and usable_id(ref) and ref not in ids:
            ids.append(ref)
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return ids
