"""What every dashboard page shares: who is looking, in which language, and how a page answers.

A page is a method of a :class:`WebResource` wrapped in :func:`page_handler`:
it gets the :class:`Viewer` (the session's user, their org, the language) or
the browser is sent to ``/login``; it renders a template through
:meth:`WebResource.render`, which adds the CSRF token, the catalogue and the
security headers; a form it receives is read through
:meth:`WebResource.form`, which refuses a missing or wrong CSRF token.  Pages
call the same storage and service functions as the JSON API: no rule has a
second copy here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.clock import Clock
from gateway.http.jsonutil import positive_id
from gateway.outage import RETRY_AFTER_SECONDS, STORAGE, is_storage_outage
from gateway.web import i18n, security
from gateway.web.nav import NAV
from storage import orgs, web
from storage.db import Database

TEMPLATES = Path(__file__).parent / "templates"
#: A dashboard form is small: anything bigger is refused before it is parsed.
MAX_FORM_BYTES = 64 * 1024

_ENV = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


class LoginRequired(Exception):
    """No valid session: the browser goes to ``/login`` and comes back after."""


class PageError(Exception):
    """A page that cannot be shown: its status and the catalogue key of its message."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(key)
        self.status, self.key = status, key


@dataclass(frozen=True, slots=True)
class Viewer:
    """The logged-in user, their org and the language the page is in."""

    user: dict[str, Any]
    org: dict[str, Any]
    lang: str
    csrf: str
    #: One of the installation's operators (``MAILGATE_OPERATORS``): sees every org's quotas
    #: and the bounce mail of no org on /attention, nothing else of other orgs.
    is_operator: bool = False

    @property
    def is_admin(self) -> bool:
        return bool(self.user["is_admin"])

    def t(self, key: str, **values: object) -> str:
        return i18n.translate(self.lang, key, **values)


def language(request: Request, org_locale: str | None = None) -> str:
    return i18n.negotiate(
        request.query_params.get("lang"),
        request.cookies.get(security.LANG_COOKIE),
        request.headers.get("accept-language", ""),
        org_locale,
    )


def with_headers(response: Response, request: Request, lang: str | None = None) -> Response:
    response.headers.update(security.PAGE_HEADERS)
    chosen = request.query_params.get("lang")
    if lang and chosen in i18n.LANGS:  # remembered: the switch is a link, not a form
        response.set_cookie(
            security.LANG_COOKIE, chosen, max_age=365 * 86400, samesite="lax", httponly=True
        )
    return response


class WebResource:
    """The base of every dashboard resource (the twin of ``gateway.http.resource.Resource``)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        secure_cookies: bool = False,
        operators: frozenset[str] = frozenset(),
    ) -> None:
        self.db, self.clock, self.secure_cookies = db, clock, secure_cookies
        #: The installation's operators' emails, lower-cased (``Settings.operator_emails``).
        self.operators = operators

    async def viewer(self, request: Request) -> Viewer:
        token = request.cookies.get(security.SESSION_COOKIE)
        if not token:
            raise LoginRequired
        async with self.db.connect() as conn:
            user = await web.session_user(conn, token, self.clock.now())
            org = await orgs.get_org(conn, user["org_id"]) if user else None
        STORAGE.succeeded()  # storage answered: ends an outage in the log
        if user is None or org is None:
            raise LoginRequired
        csrf = user.pop("csrf")
        user.pop("password_hash", None)
        operator = str(user.get("email") or "").strip().lower() in self.operators
        return Viewer(user, org, language(request, org["locale"]), csrf, is_operator=operator)

    async def admin(self, request: Request) -> Viewer:
        viewer = await self.viewer(request)
        if not viewer.is_admin:
            raise PageError(403, "error.forbidden")
        return viewer

    def render(
        self,
        request: Request,
        template: str,
        viewer: Viewer | None = None,
        *,
        lang: str | None = None,
        status: int = 200,
        **context: Any,
    ) -> Response:
        lang = viewer.lang if viewer else (lang or language(request))
        html = _ENV.get_template(template).render(
            t=functools.partial(i18n.translate, lang),
            lang=lang,
            langs=i18n.LANGS,
            viewer=viewer,
            csrf=viewer.csrf if viewer else context.pop("csrf", ""),
            path=request.url.path,
            nav=NAV,
            number=functools.partial(i18n.format_number, lang=lang),
            when=functools.partial(
                i18n.format_datetime, tz=viewer.org["timezone"] if viewer else "UTC", lang=lang
            ),
            **context,
        )
        return with_headers(HTMLResponse(html, status_code=status), request, lang)

    async def form(self, request: Request, viewer: Viewer) -> FormData:
        """The posted form, once its CSRF token is the session's (else a 403 page)."""
        return await checked_form(request, viewer.csrf, max_fields=200)


async def checked_form(request: Request, expected_csrf: str | None, *, max_fields: int) -> FormData:
    """A posted form of at most :data:`MAX_FORM_BYTES` whose ``csrf`` field is
    ``expected_csrf`` (the session's, or the login form's double-submit cookie)."""
    length = request.headers.get("content-length")
    digits = length is not None and length.isascii() and length.isdigit()
    if length is not None and (not digits or int(length) > MAX_FORM_BYTES):
        raise PageError(413, "error.csrf")
    form = await request.form(max_files=0, max_fields=max_fields)
    if not security.same_token(str(form.get("csrf") or ""), expected_csrf):
        raise PageError(403, "error.csrf")
    return form


def page_id(request: Request, name: str = "id") -> int:
    """The path's id as the API reads it (``jsonutil.positive_id``); anything else a 404 page."""
    found = positive_id(str(request.path_params.get(name, "")))
    if found is None:
        raise PageError(404, "error.not_found")
    return found


Handler = Callable[[Any, Request], Awaitable[Response]]


def page_handler(fn: Handler) -> Handler:
    """Send the anonymous to ``/login?next=…``, render a :class:`PageError`, and answer 503
    with ``Retry-After`` when storage cannot be reached."""

    @functools.wraps(fn)
    async def wrapped(self: WebResource, request: Request) -> Response:
        try:
            return await fn(self, request)
        except LoginRequired:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.method != "GET":
                target = "/"
            return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
        except PageError as exc:
            return self.render(request, "error.html", status=exc.status, message_key=exc.key)
        except Exception as exc:
            if not is_storage_outage(exc):  # the API's rule (gateway.outage), not a copy
                raise
            STORAGE.failed(exc, "dashboard")
            response = self.render(
                request, "error.html", status=503, message_key="error.unavailable"
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response

    return wrapped
