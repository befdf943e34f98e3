"""The dashboard's mail: a record's filed emails, one email read safely, the SalesInbox
columns and the live signals feed.

Every page calls the function the JSON API calls (no rule has a second copy):
:func:`gateway.http.records.record_mail` (a record's list, its filters and the
sharing rules), :func:`gateway.http.emails.visible_email` /
:func:`~gateway.http.emails.read_email` / :func:`~gateway.http.emails.attachment_response`
(who may read an email, its sanitised HTML, its attachments),
:func:`gateway.http.inbox.read_inbox` and :func:`gateway.http.stream.open_stream`
(the signal hub's stream, here authenticated by the session instead of a token).

**How an email's HTML is shown.**  The page embeds ``<iframe src="/emails/{id}/body"
sandbox="allow-same-origin allow-popups allow-popups-to-escape-sandbox">``.  The
body is the API's sanitised HTML (nh3: no script, handler, style, form, SVG or
``javascript:`` URL survives), served as its own document with its own policy
(:func:`body_policy`): ``default-src 'none'``, images only from us and ``data:``
(plus ``https:`` once the reader asked for images), styles only our stylesheet,
and the ``sandbox`` directive too, so the body opened on its own is as shut as in
the frame.  Three layers, each enough against script: the sanitiser, the sandbox
without ``allow-scripts`` (no script runs in the frame whatever it holds), and the
CSP.  ``srcdoc`` was not chosen: it inherits the page's policy (which would have
to allow the mail's images) and the body would be escaped into an attribute.
``allow-same-origin`` is there so that ``cid:`` images (our attachment route)
are fetched with the session cookie; without ``allow-scripts`` it gives the
frame no way to act.  Links open in a new tab (``allow-popups``) without an
opener.  No ``'unsafe-inline'`` style either: the sanitiser removes every
``style``, so allowing it would only matter if the sanitiser missed one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.clock import Clock
from gateway.http.emails import attachment_response, read_email, visible_email
from gateway.http.errors import ApiError
from gateway.http.inbox import read_inbox
from gateway.http.jsonutil import path_id
from gateway.http.records import DIRECTIONS, SOURCE_FILTERS, record_mail
from gateway.http.stream import SignalHub, TooManyStreams, open_stream
from gateway.mailview.parts import clean_text
from gateway.receive.mailboxes import sharing
from gateway.runner import LoopRunner
from gateway.web import i18n
from gateway.web.base import LoginRequired, PageError, Viewer, WebResource, page_handler, page_id
from storage import crm, orgs
from storage.db import Database

#: Emails per page of a record's list.
RECORD_PAGE = 50
#: What the frame may do: follow a link to a new tab; never run script (no allow-scripts).
FRAME_SANDBOX = "allow-same-origin allow-popups allow-popups-to-escape-sandbox"


def body_policy(images: bool) -> str:
    """The Content-Security-Policy of an email body (see the module's docstring)."""
    img = "'self' data: https:" if images else "'self' data:"
    return (
        f"default-src 'none'; img-src {img}; style-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
        f"sandbox {FRAME_SANDBOX}; report-uri /csp-report"
    )


def _wants_images(request: Request) -> bool:
    return request.query_params.get("images") in ("1", "true", "yes")


def _record_name(module: str, record: dict[str, Any], locale: str) -> str:
    if module in ("leads", "contacts"):
        return i18n.person_name(record, locale) or str(record.get("email") or "")
    return str(record.get("name") or "")


def _page_error(exc: ApiError) -> PageError:
    """An API rule's refusal as the page's: 404 stays 404, a bad filter is a 422 page."""
    if exc.status == 404:
        return PageError(404, "error.not_found")
    return PageError(exc.status, "mail.bad_filter")


def _api_user(viewer: Viewer) -> dict[str, Any]:
    """The viewer as the API's functions know a user (``id``, ``org_id``, ``is_admin``)."""
    return viewer.user


class MailPages(WebResource):
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        hub: LoopRunner,
        secure_cookies: bool = False,
        operators: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(db, clock, secure_cookies=secure_cookies, operators=operators)
        assert isinstance(hub, SignalHub), "the services' signals runner is a SignalHub"
        self.hub = hub

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/records/{module}/{id}", self.record, methods=["GET"]),
            Route("/emails/{id}", self.email, methods=["GET"]),
            Route("/emails/{id}/body", self.body, methods=["GET"]),
            Route("/emails/{id}/attachments/{n}", self.attachment, methods=["GET"]),
            Route("/inbox", self.inbox, methods=["GET"]),
            Route("/signals/stream", self.stream, methods=["GET"]),
        ]

    # -- a record's mail ----------------------------------------------------------------

    @page_handler
    async def record(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        module = request.path_params["module"]
        if module not in crm.MODULES:
            raise PageError(404, "error.not_found")
        params = request.query_params
        cursor = params.get("cursor") or "0"
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19:
            raise PageError(422, "mail.bad_filter")
        try:
            rid = path_id(request)
            rows = await record_mail(
                self.db,
                request,
                _api_user(viewer),
                module,
                rid,
                after=int(cursor),
                limit=RECORD_PAGE,
            )
        except ApiError as exc:
            raise _page_error(exc) from None
        async with self.db.connect() as conn:
            record = await crm.get(conn, module, viewer.org["id"], rid)
            colleagues = await orgs.list_users(conn, viewer.org["id"])
        if record is None:
            raise PageError(404, "error.not_found")
        more = len(rows) > RECORD_PAGE
        rows = rows[:RECORD_PAGE]
        filters = {k: params.get(k) or "" for k in ("source", "direction", "user")}
        next_query = None
        if more:
            kept = [(k, v) for k, v in filters.items() if v]
            next_query = "?" + urlencode([("cursor", rows[-1]["id"]), *kept])
        return self.render(
            request,
            "mail_record.html",
            viewer,
            module=module,
            record=record,
            record_name=_record_name(module, record, viewer.org["locale"]),
            emails=[
                {
                    **row,
                    "subject": clean_text(row["subject"] or ""),
                    "from_name": clean_text(row["from_name"] or ""),
                    "crm_sent": sharing.is_crm_sent(row["source"]),
                }
                for row in rows
            ],
            filters=filters,
            sources=tuple(SOURCE_FILTERS),
            directions=DIRECTIONS,
            colleagues=colleagues,
            next_query=next_query,
        )

    # -- one email ------------------------------------------------------------------------

    async def _email_row(self, request: Request, viewer: Viewer) -> dict[str, Any]:
        row = await visible_email(self.db, _api_user(viewer), page_id(request))
        if row is None:
            raise PageError(404, "error.not_found")
        return row

    @page_handler
    async def email(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        row = await self._email_row(request, viewer)
        images = _wants_images(request)
        mail, safe = await read_email(row, images=images, url_of=self._attachment_url(row))
        names = {}
        async with self.db.connect() as conn:
            for ref in row["records"]:
                found = await crm.get(conn, ref["module"], viewer.org["id"], ref["id"])
                if found is not None:
                    names[(ref["module"], ref["id"])] = _record_name(
                        ref["module"], found, viewer.org["locale"]
                    )
        return self.render(
            request,
            "mail_email.html",
            viewer,
            email=row,
            subject=clean_text(row["subject"] or ""),
            from_name=clean_text(row["from_name"] or ""),
            text=mail.text,
            has_html=bool(mail.html.strip()),
            images=images,
            images_blocked=safe.images_blocked,
            attachments=[a.listing() for a in mail.attachments],
            records=[
                {**ref, "name": names.get((ref["module"], ref["id"]), "")} for ref in row["records"]
            ],
            sandbox=FRAME_SANDBOX,
        )

    @staticmethod
    def _attachment_url(row: dict[str, Any]):
        return lambda index: f"/emails/{row['id']}/attachments/{index}"

    @page_handler
    async def body(self, request: Request) -> Response:
        """The sanitised HTML as its own document, for the page's sandboxed frame."""
        viewer = await self.viewer(request)
        row = await self._email_row(request, viewer)
        images = _wants_images(request)
        _, safe = await read_email(row, images=images, url_of=self._attachment_url(row))
        document = (
            '<!doctype html><html><head><meta charset="utf-8">'
            '<link rel="stylesheet" href="/static/mail_body.css">'
            f"</head><body>{safe.html}</body></html>"
        )
        return HTMLResponse(
            document,
            headers={
                "Content-Security-Policy": body_policy(images),
                "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "SAMEORIGIN",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    @page_handler
    async def attachment(self, request: Request) -> Response:
        """The same bytes and headers as ``/api/v1/emails/{id}/attachments/{n}``."""
        viewer = await self.viewer(request)
        row = await self._email_row(request, viewer)
        response = await attachment_response(row, request.path_params["n"])
        if response is None:
            raise PageError(404, "error.not_found")
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- the SalesInbox and the live feed -------------------------------------------------

    @page_handler
    async def inbox(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        overview = await read_inbox(self.db, _api_user(viewer), self.clock.now())
        return self.render(
            request,
            "mail_inbox.html",
            viewer,
            columns=overview["columns"],
            keep_unknown=overview["keep_unknown"],
            kinds=("received", "replied", "opened", "clicked", "bounced"),
        )

    async def stream(self, request: Request) -> Response:
        """``GET /api/v1/stream`` for the page's ``EventSource``, by the session cookie.

        Not a page: an anonymous or expired session is a bare 401 (an event stream
        cannot follow a redirect to the login form), and the hub's per-user limit
        applies as it does to the API (429).
        """
        try:
            viewer = await self.viewer(request)
        except LoginRequired:
            return PlainTextResponse("login required", status_code=401)
        try:
            return await open_stream(self.hub, _api_user(viewer), request)
        except TooManyStreams:
            return PlainTextResponse("too many streams", status_code=429)
