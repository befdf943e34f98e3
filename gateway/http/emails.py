"""One filed email: its headers and bodies for display, its raw bytes, its attachments.

Who may read it is decided once, by :func:`_visible_email`, with the same
sharing rule the record email lists and ``/api/v1/sends/{id}`` use
(:func:`gateway.receive.mailboxes.sharing.sees_mail`): mail sent from the CRM
is public, mail with an excluded domain (``shared`` false) is its owner's
only, the rest follows its owner's mode.  Mail the asker may not see answers
404, as mail that does not exist does.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id
from gateway.http.resource import Resource
from gateway.mailview import html as safe_html
from gateway.mailview.fields import header_fields
from gateway.mailview.parts import UNKNOWN_TYPE, MailView, view
from gateway.receive.mailboxes import sharing
from storage import filing, mailboxes
from storage.db import Database

#: Types a browser could run or render as a document: served as opaque bytes.
ACTIVE_TYPES = ("text/html", "application/xhtml+xml", "image/svg+xml", "text/xml")


#: A media type safe to put in a header (malformed mail brings anything).
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def download_type(content_type: str) -> str:
    """A type that cannot render active content, and only a well-formed one."""
    ctype = content_type.lower()
    if (
        not _MEDIA_TYPE.fullmatch(ctype)
        or ctype in ACTIVE_TYPES
        or ctype.endswith(("+xml", "/xml"))
        or "javascript" in ctype
    ):
        return UNKNOWN_TYPE
    return ctype


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus ``filename*=UTF-8''…`` for the real name."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename)
    encoded = quote(filename.encode("utf-8", "replace"), safe="")
    return f"attachment; filename=\"{fallback or 'attachment'}\"; filename*=UTF-8''{encoded}"


async def _view(row: dict[str, Any]) -> MailView:
    """The stored message taken apart, in a thread: a 25 MB message's MIME walk and
    decoding must not hold the event loop (tracking and the API share it)."""
    return await asyncio.to_thread(view, bytes(row["raw"]))


def attachment_url(email_id: int, index: int) -> str:
    return f"/api/v1/emails/{email_id}/attachments/{index}"


async def visible_email(db: Database, user: dict[str, Any], email_id: int) -> dict[str, Any] | None:
    """The email with its records when ``user`` may read it (the one sharing rule of
    the API and the dashboard); None when absent, another org's or not shared."""
    async with db.connect() as conn:
        row = await filing.email_with_records(conn, user["org_id"], email_id)
        if row is None:
            return None
        modes, shares = await mailboxes.sharing_rules(conn, user["org_id"])
    records = {(r["module"], r["id"]) for r in row["records"]}
    if not sharing.sees_mail(
        user["id"],
        row["user_id"],
        records,
        modes,
        shares,
        shared=row["shared"],
        crm_sent=sharing.is_crm_sent(row["source"]),
    ):
        return None
    return row


async def read_email(
    row: dict[str, Any], *, images: bool, url_of: Callable[[int], str] | None = None
) -> tuple[MailView, safe_html.SafeHtml]:
    """The message taken apart and its HTML sanitised; ``cid:`` images point at
    ``url_of(index)`` (the API's attachment URL unless told otherwise)."""
    mail = await _view(row)
    content_ids = {a.content_id: a.index for a in mail.attachments if a.content_id}
    safe = safe_html.sanitise(
        mail.html,
        images=images,
        cid_url=safe_html.cid_resolver(
            content_ids, url_of or (lambda i: attachment_url(row["id"], i))
        ),
    )
    return mail, safe


async def attachment_response(row: dict[str, Any], n: str) -> Response | None:
    """Attachment ``n`` as a download that cannot run (None when there is no such part)."""
    attachments = (await _view(row)).attachments
    if not (n.isascii() and n.isdigit()) or len(n) > 6 or int(n) >= len(attachments):
        return None
    part = attachments[int(n)]
    return Response(
        part.data,
        media_type=download_type(part.content_type),
        headers={
            "Content-Disposition": content_disposition(part.filename or f"attachment-{n}"),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


class EmailsApi(Resource):
    """``/api/v1/emails/{id}`` (display), ``/raw`` and ``/attachments/{n}``."""

    def routes(self) -> list[Route]:
        e = "/api/v1/emails/{id}"
        return [
            Route(e, self.get_email, methods=["GET"]),
            Route(e + "/raw", self.get_raw, methods=["GET"]),
            Route(e + "/attachments/{n}", self.get_attachment, methods=["GET"]),
        ]

    async def _visible_email(self, request: Request) -> dict[str, Any]:
        """The email with its records, or 404 when absent, another org's or not shared."""
        user = await self.user(request)
        row = await visible_email(self.db, user, path_id(request))
        if row is None:
            raise ApiError(404, "not_found", "no such email")
        return row

    async def get_email(self, request: Request) -> Response:
        row = await self._visible_email(request)
        images = request.query_params.get("images") in ("1", "true", "yes")
        mail, safe = await read_email(row, images=images)
        return JSON(
            {
                **header_fields(row),
                "records": row["records"],
                "text": mail.text,
                "html": safe.html,
                "images_blocked": safe.images_blocked,
                "attachments": [a.listing() for a in mail.attachments],
            }
        )

    async def get_raw(self, request: Request) -> Response:
        row = await self._visible_email(request)
        return Response(
            bytes(row["raw"]),
            media_type="message/rfc822",
            headers={
                "Content-Disposition": f'attachment; filename="message-{row["id"]}.eml"',
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def get_attachment(self, request: Request) -> Response:
        row = await self._visible_email(request)
        response = await attachment_response(row, request.path_params["n"])
        if response is None:
            raise ApiError(404, "not_found", "no such attachment")
        return response
