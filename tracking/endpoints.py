"""The public tracking endpoints: ``/t/o/{token}``, ``/t/c/{token}``, ``/u/{token}``.

No authentication: the signed token is the only credential, and every
failure — garbage, a flipped bit, a token of another deployment, a click
token whose link index the send does not have — answers 404 and records
nothing.  The open pixel never touches the database on the request path;
the click needs the send's stored links (the only places it will ever
redirect to), and unsubscribing is a rare, synchronous write.

While storage is away (:mod:`gateway.outage`) the pixel is answered as ever
(its hit waits in the recorder's memory), and a click still redirects when
this process has looked up that send's links before: links never change once
a send has gone out, so the last :data:`LINK_CACHE_SENDS` sends' links are
kept.  A click on a send not among them answers a ``503`` page with
``Retry-After`` (there is no safe target to guess).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.outage import RETRY_AFTER_SECONDS, STORAGE, is_storage_outage
from storage import tracking_store
from storage.db import Database
from tracking.links import safe_redirect_target
from tracking.pixel import PIXEL_GIF, PIXEL_HEADERS
from tracking.recorder import HitRecorder
from tracking.tokens import TokenKind, TokenSigner
from tracking.unsubscribe import apply_unsubscribe
from tracking.unsubscribe_page import (
    PAGE_HEADERS,
    mask_email,
    pick_lang,
    render_confirm_page,
    render_done_page,
    render_invalid_page,
)

__all__ = ["Tracking", "routes"]

_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
_MAX_UNSUBSCRIBE_BODY = 4096
#: How many sends' links a process keeps for clicks during a storage outage (~100 B each).
LINK_CACHE_SENDS = 100_000


class Tracking:
    """What the endpoints share: the signer, the recorder and where links point."""

    def __init__(
        self, db: Database, signer: TokenSigner, recorder: HitRecorder, public_url: str
    ) -> None:
        self.db = db
        self.signer = signer
        self.recorder = recorder
        self.public_url = public_url.rstrip("/")
        self._links: OrderedDict[int, list[str]] = OrderedDict()

    async def links(self, send_id: int) -> list[str] | None:
        """The send's stored links (None: no such send), from the cache during an outage.

        Raises the storage error when storage is away and the send is not cached.
        """
        try:
            async with self.db.connect() as conn:
                send = await tracking_store.send_for_link(conn, send_id)
        except Exception as exc:
            if not is_storage_outage(exc):
                raise
            STORAGE.failed(exc, "tracking")
            cached = self._links.get(send_id)
            if cached is None:
                raise
            return cached
        STORAGE.succeeded()
        if send is None:
            self._links.pop(send_id, None)
            return None
        links = list(send.get("links") or [])
        self._links[send_id] = links
        self._links.move_to_end(send_id)
        if len(self._links) > LINK_CACHE_SENDS:
            self._links.popitem(last=False)
        return links


def _client(request: Request) -> tuple[str, str]:
    ip = request.client.host if request.client else ""
    return ip, request.headers.get("user-agent", "")


class _OpenPixel:
    """``GET /t/o/{token}`` as a bare ASGI app: the hottest path of the service.

    Starlette hands an ASGI app (not a function) the raw scope, so a pixel costs
    no ``Request``/``Response`` objects: verify the token, append the hit, send
    two pre-built messages.  Status, headers and body are those of
    ``Response(PIXEL_GIF, headers=PIXEL_HEADERS)``.
    """

    _FOUND = Response(PIXEL_GIF, headers=PIXEL_HEADERS)
    _NOT_FOUND = Response(PIXEL_GIF, status_code=404, headers=PIXEL_HEADERS)
    _BODY = {"type": "http.response.body", "body": PIXEL_GIF}

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracking = self.tracking
        parsed = tracking.signer.verify(scope["path_params"]["token"], TokenKind.OPEN)
        if parsed is None:
            # Still the GIF (a broken-image icon helps nobody), but 404 and nothing recorded.
            start = self._NOT_FOUND
        else:
            client = scope.get("client")
            agent = ""
            for name, value in scope["headers"]:
                if name == b"user-agent":
                    agent = value.decode("latin-1")
                    break
            tracking.recorder.record(
                "open", parsed.send_id, None, client[0] if client else "", agent
            )
            start = self._FOUND
        await send(
            {
                "type": "http.response.start",
                "status": start.status_code,
                "headers": start.raw_headers,
            }
        )
        await send(self._BODY)


def routes(tracking: Tracking) -> list[Route]:
    """The public tracking routes, bound to ``tracking`` (no application state is read).

    They go first in the app's route table: the pixel is the hottest path and
    routes are matched in order.
    """

    async def click_route(request: Request) -> Response:
        return await click(tracking, request)

    async def unsubscribe_get(request: Request) -> Response:
        return await unsubscribe_page(tracking, request)

    async def unsubscribe_form(request: Request) -> Response:
        return await unsubscribe_post(tracking, request)

    return [
        Route("/t/o/{token}", _OpenPixel(tracking), methods=["GET"]),
        Route("/t/c/{token}", click_route, methods=["GET"]),
        Route("/u/{token}", unsubscribe_get, methods=["GET"]),
        Route("/u/{token}", unsubscribe_form, methods=["POST"]),
    ]


def _not_found(request: Request) -> Response:
    lang = pick_lang(request.headers.get("accept-language"))
    return HTMLResponse(render_invalid_page(lang), status_code=404, headers=PAGE_HEADERS)


def _unavailable(request: Request) -> Response:
    """A click we cannot resolve while storage is away: try again shortly."""
    ja = pick_lang(request.headers.get("accept-language")) == "ja"
    text = _UNAVAILABLE_JA if ja else _UNAVAILABLE_EN
    headers = {**_NO_STORE, "Retry-After": str(RETRY_AFTER_SECONDS)}
    return PlainTextResponse(text, status_code=503, headers=headers)


_UNAVAILABLE_EN = "This link is unavailable for a moment. Please try again in a few seconds.\n"
_UNAVAILABLE_JA = "このリンクは一時的に利用できません。数秒後にもう一度お試しください。\n"


async def click(tracking: Tracking, request: Request) -> Response:
    parsed = tracking.signer.verify(request.path_params["token"], TokenKind.CLICK)
    if parsed is None:
        return _not_found(request)
    try:
        links = await tracking.links(parsed.send_id) or []
    except Exception as exc:
        if not is_storage_outage(exc):
            raise
        return _unavailable(request)
    index = parsed.link_index
    if index is None or index >= len(links) or not safe_redirect_target(links[index]):
        return _not_found(request)
    ip, agent = _client(request)
    tracking.recorder.record("click", parsed.send_id, index, ip, agent)
    return RedirectResponse(links[index], status_code=302, headers=_NO_STORE)


async def _unsubscribe_send(tracking: Tracking, request: Request) -> dict[str, Any] | None:
    parsed = tracking.signer.verify(request.path_params["token"], TokenKind.UNSUBSCRIBE)
    if parsed is None:
        return None
    return await tracking.db.run_read(tracking_store.send_for_unsubscribe, parsed.send_id)


async def unsubscribe_page(tracking: Tracking, request: Request) -> Response:
    """The confirmation page; a GET never unsubscribes (scanners follow GETs)."""
    send = await _unsubscribe_send(tracking, request)
    if send is None:
        return _not_found(request)
    lang = pick_lang(request.headers.get("accept-language"))
    body = render_confirm_page(lang, mask_email(send["to_email"]), str(request.url.path))
    return HTMLResponse(body, headers=PAGE_HEADERS)


async def unsubscribe_post(tracking: Tracking, request: Request) -> Response:
    """RFC 8058 one-click (``List-Unsubscribe=One-Click``) and the page's form.

    Idempotent: a second POST answers the same page and changes nothing.
    """
    send = await _unsubscribe_send(tracking, request)
    if send is None:
        return _not_found(request)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_UNSUBSCRIBE_BODY:
            break
    one_click = b"List-Unsubscribe=One-Click" in body[:_MAX_UNSUBSCRIBE_BODY]
    detail = "one_click" if one_click else "form"
    await tracking.db.run_write(apply_unsubscribe, send, detail)
    lang = pick_lang(request.headers.get("accept-language"))
    return HTMLResponse(render_done_page(lang, mask_email(send["to_email"])), headers=PAGE_HEADERS)
