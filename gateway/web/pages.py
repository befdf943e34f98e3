"""The dashboard's own routes: login and logout, static files and the CSP report endpoint
(the quotas landing page is :mod:`gateway.web.quotas`).  Other pages live in their own
modules of ``gateway.web``.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.addresses import normalise
from gateway.web import security
from gateway.web.base import (
    WebResource,
    checked_form,
    language,
    page_handler,
)
from gateway.web.i18n import translate
from storage import web

log = logging.getLogger("mailgate.web")

STATIC = Path(__file__).parent / "static"
#: A session lasts this long from login (then log in again).
SESSION_HOURS = 12
#: Failed logins allowed per address, and per client address, in the window.
FAILURES_PER_EMAIL = 5
FAILURES_PER_CLIENT = 20
FAILURE_WINDOW = timedelta(minutes=15)
#: The last CSP violation reports this process received (evidence for the XSS tests).
CSP_REPORTS: deque[dict[str, Any]] = deque(maxlen=200)
MAX_CSP_REPORT = 16 * 1024


def safe_next(target: str | None) -> str:
    """Only a path on this site: never ``//evil.example`` or ``https://…`` (open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target:
        return "/"
    return target


class DashboardPages(WebResource):
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/csp-report", self.csp_report, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]

    # -- login ------------------------------------------------------------------------

    def _login_page(
        self, request: Request, *, error: str | None = None, status: int = 200, email: str = ""
    ) -> Response:
        token = security.new_token()
        response = self.render(
            request,
            "login.html",
            status=status,
            csrf=token,
            error=error,
            email=email,
            next=safe_next(request.query_params.get("next")),
        )
        response.set_cookie(
            security.LOGIN_CSRF_COOKIE,
            token,
            max_age=3600,
            httponly=True,
            samesite="lax",
            secure=self.secure_cookies,
            path="/login",
        )
        return response

    async def login_form(self, request: Request) -> Response:
        return self._login_page(request)

    @page_handler
    async def login(self, request: Request) -> Response:
        """Check the double-submit CSRF token, the rate limit, then the password."""
        lang = language(request)
        form = await checked_form(
            request, request.cookies.get(security.LOGIN_CSRF_COOKIE), max_fields=20
        )
        email = str(form.get("email") or "")[:320]
        password = str(form.get("password") or "")
        email_norm = normalise(email) or email.strip().lower()
        client = request.client.host if request.client else "?"
        now = self.clock.now()
        async with self.db.connect() as conn:  # reads only: no write transaction
            by_email, by_client = await web.recent_failures(
                conn, email_norm, client, now - FAILURE_WINDOW
            )
            candidates = await web.user_for_login(conn, email_norm)
        if by_email >= FAILURES_PER_EMAIL or by_client >= FAILURES_PER_CLIENT:
            minutes = int(FAILURE_WINDOW.total_seconds() // 60)
            response = self._login_page(
                request,
                error=translate(lang, "login.throttled", minutes=minutes),
                status=429,
                email=email,
            )
            response.headers["Retry-After"] = str(int(FAILURE_WINDOW.total_seconds()))
            return response
        user = next(
            (u for u in candidates if security.verify_password(u["password_hash"], password)),
            None,
        )
        if user is None:
            if not candidates:
                security.verify_password(None, password)  # the same cost either way
            async with self.db.begin() as conn:
                await web.record_failure(conn, email_norm, client, now)
            return self._login_page(
                request, error=translate(lang, "login.failed"), status=401, email=email
            )
        token, csrf = security.new_token(), security.new_token()
        async with self.db.begin() as conn:
            await web.forget_failures(conn, email_norm, now - FAILURE_WINDOW)
            await web.end_expired(conn, now)
            await web.create_session(
                conn, user["id"], token, csrf, now, now + timedelta(hours=SESSION_HOURS)
            )
        response = RedirectResponse(safe_next(str(form.get("next") or "/")), status_code=303)
        response.set_cookie(
            security.SESSION_COOKIE,
            token,
            max_age=SESSION_HOURS * 3600,
            httponly=True,
            samesite="lax",
            secure=self.secure_cookies,
        )
        response.delete_cookie(security.LOGIN_CSRF_COOKIE, path="/login")
        return response

    @page_handler
    async def logout(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        await self.form(request, viewer)
        async with self.db.begin() as conn:
            await web.end_session(conn, request.cookies.get(security.SESSION_COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(security.SESSION_COOKIE)
        return response

    # -- CSP reports --------------------------------------------------------------------------

    async def csp_report(self, request: Request) -> Response:
        """Browsers report what the policy blocked; kept (bounded) and logged, never trusted."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_CSP_REPORT:
                return Response(status_code=413)
        try:
            report = json.loads(body or b"{}")
        except ValueError:
            return Response(status_code=400)
        if isinstance(report, dict):
            inner = report.get("csp-report", report)
            if isinstance(inner, dict):
                CSP_REPORTS.append(
                    {
                        k: str(inner.get(k, ""))[:500]
                        for k in ("document-uri", "violated-directive", "blocked-uri")
                    }
                )
                log.warning(
                    "CSP blocked %s on %s",
                    str(inner.get("violated-directive", ""))[:100],
                    str(inner.get("document-uri", ""))[:200],
                )
        return Response(status_code=204)
