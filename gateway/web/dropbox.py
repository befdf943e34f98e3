"""Dashboard pages of a rep's dropbox, the org's suppressions and the mail needing attention.

- ``/dropbox``: the address (copy button, vCard), regenerate (a confirm checkbox), the allowed
  senders (at most five) and the two settings, through the functions of
  ``/api/v1/me/dropbox`` (:mod:`gateway.org.admin`).
- ``/suppressions``: search by address, reason and date; lift (a confirm checkbox) through the
  function of ``DELETE /api/v1/suppressions/{email}``, which records ``suppression.lifted``.
  Every member may lift, as in the API.
- ``/attention`` (admins and operators): the org's parked inbound mail (failed, refused) and
  held bounce mail with their reason, replayed through the function of ``mailgate inbound
  replay``.  Bounce mail no send could be found for belongs to no org: the installation's
  operators (``MAILGATE_OPERATORS``) see it and replay it here whatever the number of orgs,
  and so does the admin of the only org of a single-org install (it can be nobody else's);
  nobody else ever sees it (:func:`sees_unowned`, :func:`may_replay`).  An operator who is no
  admin of their org sees only that mail, not their org's.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.addresses import normalise
from gateway.clock import Clock
from gateway.config import Settings
from gateway.http.jsonutil import positive_id
from gateway.http.users import VCARD_FILENAME
from gateway.ingest.runner import ReplayError, replay_kept
from gateway.org import admin
from gateway.web.base import PageError, Viewer, WebResource, page_handler
from storage import inbound_store, orgs, suppressions
from storage.db import Database

#: Rows a search or the attention list shows at most (the newest / oldest first).
PAGE_ROWS = 200
#: Notices a redirect after a POST may ask for (``?done=``): catalogue keys, nothing else.
DONE = {
    "regenerated": "dropbox.done.regenerated",
    "senders": "dropbox.done.senders",
    "settings": "dropbox.done.settings",
    "lifted": "suppressions.done.lifted",
    "replayed": "attention.done.replayed",
}
_SENDER_ERRORS = {
    admin.Refusal.TOO_MANY_SENDERS: "dropbox.error.too_many",
    admin.Refusal.INVALID: "dropbox.error.invalid_address",
}


def _day(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def sees_unowned(*, operator: bool, admin: bool, orgs_in_install: int) -> bool:
    """May this viewer see (and replay) held bounce mail that belongs to no org?

    The installation's operators always; the admin of the only org of a single-org install
    too (nobody else's mail can be in it); nobody else, ever.
    """
    return operator or (admin and orgs_in_install == 1)


def may_replay(row: dict[str, Any] | None, org_id: int, *, admin: bool, unowned: bool) -> bool:
    """Is ``row`` (an ``inbound`` row) on this viewer's /attention list: their org's kept mail
    for an admin, held bounce mail of no org when ``unowned`` (:func:`sees_unowned`)?"""
    if row is None or row["state"] not in inbound_store.ATTENTION_STATES:
        return False
    if row["org_id"] is None:
        return unowned and row["channel"] == "bounce"
    return admin and row["org_id"] == org_id


def day_bounds(
    since: date | None, until: date | None, tz: str
) -> tuple[datetime | None, datetime | None]:
    """Local days (``until`` included) as the UTC instants that bound them."""
    zone = ZoneInfo(tz)
    start = datetime.combine(since, time(), zone) if since else None
    end = datetime.combine(until + timedelta(days=1), time(), zone) if until else None
    return start, end


class DropboxPages(WebResource):
    def __init__(
        self, db: Database, clock: Clock, *, settings: Settings, secure_cookies: bool = False
    ) -> None:
        super().__init__(
            db, clock, secure_cookies=secure_cookies, operators=settings.operator_emails
        )
        self.mail_domain = settings.mail_domain
        self.max_records = settings.max_records_per_message

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/dropbox", self.dropbox, methods=["GET"]),
            Route("/dropbox.vcf", self.vcard, methods=["GET"]),
            Route("/dropbox/regenerate", self.regenerate, methods=["POST"]),
            Route("/dropbox/senders", self.senders, methods=["POST"]),
            Route("/dropbox/settings", self.settings, methods=["POST"]),
            Route("/suppressions", self.suppressions, methods=["GET"]),
            Route("/suppressions/lift", self.lift, methods=["POST"]),
            Route("/attention", self.attention, methods=["GET"]),
            Route("/attention/replay", self.replay, methods=["POST"]),
        ]

    @staticmethod
    def _done(request: Request) -> str | None:
        return DONE.get(request.query_params.get("done", ""))

    # -- dropbox ------------------------------------------------------------------------

    async def _dropbox_page(
        self, request: Request, viewer: Viewer, *, error: str | None = None, status: int = 200
    ) -> Response:
        view = await admin.dropbox_view(self.db, viewer.user, self.mail_domain)
        return self.render(
            request,
            "dropbox.html",
            viewer,
            status=status,
            dropbox=view,
            max_senders=admin.MAX_EXTRA_SENDERS,
            settings=admin.DROPBOX_SETTINGS,
            searches=admin.DROPBOX_SEARCHES,
            done=self._done(request),
            error=error,
        )

    @page_handler
    async def dropbox(self, request: Request) -> Response:
        return await self._dropbox_page(request, await self.viewer(request))

    @page_handler
    async def vcard(self, request: Request) -> Response:
        """The same bytes as ``GET /api/v1/me/dropbox.vcf``, for the session's user."""
        viewer = await self.viewer(request)
        view = await admin.dropbox_view(self.db, viewer.user, self.mail_domain)
        return Response(
            admin.vcard(viewer.user["name"], view["address"]).encode(),
            media_type="text/vcard; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{VCARD_FILENAME}"',
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
            },
        )

    @page_handler
    async def regenerate(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        form = await self.form(request, viewer)
        if form.get("confirm") != "yes":
            return await self._dropbox_page(
                request, viewer, error="dropbox.error.confirm", status=422
            )
        await admin.regenerate_dropbox(self.db, viewer.user, mail_domain=self.mail_domain)
        return RedirectResponse("/dropbox?done=regenerated", status_code=303)

    @page_handler
    async def senders(self, request: Request) -> Response:
        """Add one allowed sender (``add``) or remove one (``remove``): the list is then
        replaced as ``PUT /api/v1/me/dropbox/senders`` does."""
        viewer = await self.viewer(request)
        form = await self.form(request, viewer)
        current = (await admin.dropbox_view(self.db, viewer.user, self.mail_domain))[
            "allowed_senders"
        ]
        if form.get("remove"):
            wanted = [s for s in current if s != str(form.get("remove"))]
        else:
            wanted = [*current, str(form.get("add") or "")[:320]]
        try:
            await admin.replace_senders(self.db, viewer.user, wanted)
        except admin.AdminError as exc:
            key = _SENDER_ERRORS.get(exc.code, "dropbox.error.invalid_address")
            return await self._dropbox_page(request, viewer, error=key, status=422)
        return RedirectResponse("/dropbox?done=senders", status_code=303)

    @page_handler
    async def settings(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        form = await self.form(request, viewer)
        try:
            await admin.set_dropbox_options(
                self.db,
                viewer.user["org_id"],
                viewer.user["id"],
                setting=form.get("setting"),
                search=form.get("search"),
            )
        except admin.AdminError:
            return await self._dropbox_page(
                request, viewer, error="dropbox.error.setting", status=422
            )
        return RedirectResponse("/dropbox?done=settings", status_code=303)

    # -- suppressions ----------------------------------------------------------------------

    async def _suppressions_page(
        self, request: Request, viewer: Viewer, *, error: str | None = None, status: int = 200
    ) -> Response:
        q = request.query_params
        email = q.get("email", "").strip().lower()[:320]
        reason = q.get("reason", "")
        reason = reason if reason in suppressions.REASONS else ""
        since, until = _day(q.get("from", "")), _day(q.get("to", ""))
        start, end = day_bounds(since, until, viewer.org["timezone"])
        async with self.db.connect() as conn:
            rows = await suppressions.search(
                conn,
                viewer.org["id"],
                email=email,
                reason=reason or None,
                since=start,
                until=end,
                limit=PAGE_ROWS + 1,
            )
        return self.render(
            request,
            "suppressions.html",
            viewer,
            status=status,
            rows=rows[:PAGE_ROWS],
            more=len(rows) > PAGE_ROWS,
            reasons=suppressions.REASONS,
            query={
                "email": email,
                "reason": reason,
                "from": since.isoformat() if since else "",
                "to": until.isoformat() if until else "",
            },
            done=self._done(request),
            lifted=q.get("lifted") if self._done(request) == DONE["lifted"] else None,
            error=error,
        )

    @page_handler
    async def suppressions(self, request: Request) -> Response:
        return await self._suppressions_page(request, await self.viewer(request))

    @page_handler
    async def lift(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        form = await self.form(request, viewer)
        norm = normalise(str(form.get("email") or "")[:320])
        if form.get("confirm") != "yes":
            return await self._suppressions_page(
                request, viewer, error="suppressions.error.confirm", status=422
            )
        if norm is None:
            raise PageError(404, "error.not_found")
        async with self.db.begin() as conn:
            removed = await suppressions.lift_recorded(
                conn, viewer.org["id"], norm, viewer.user["id"]
            )
        if removed is None:
            raise PageError(404, "error.not_found")
        target = "/suppressions?" + urlencode({"done": "lifted", "lifted": norm})
        return RedirectResponse(target, status_code=303)

    # -- mail needing attention (admins, operators) ------------------------------------------

    async def _attention_viewer(self, request: Request) -> Viewer:
        """An org admin or an operator of the installation; anyone else is refused (403)."""
        viewer = await self.viewer(request)
        if not (viewer.is_admin or viewer.is_operator):
            raise PageError(403, "error.forbidden")
        return viewer

    async def _unowned_visible(self, viewer: Viewer) -> bool:
        operator, count = viewer.is_operator, 0
        if viewer.is_admin and not operator:  # the number of orgs decides only then
            async with self.db.connect() as conn:
                count = await orgs.count_orgs(conn)
        return sees_unowned(operator=operator, admin=viewer.is_admin, orgs_in_install=count)

    async def _attention_page(
        self,
        request: Request,
        viewer: Viewer,
        *,
        error: str | None = None,
        detail: str = "",
        status: int = 200,
    ) -> Response:
        unowned = await self._unowned_visible(viewer)
        own = viewer.org["id"] if viewer.is_admin else None
        rows = await self.db.run_read(
            lambda conn: inbound_store.kept_for_org(
                conn, own, unowned_bounces=unowned, limit=PAGE_ROWS + 1
            )
        )
        return self.render(
            request,
            "attention.html",
            viewer,
            status=status,
            rows=rows[:PAGE_ROWS],
            more=len(rows) > PAGE_ROWS,
            unowned=unowned,
            kind=row_kind,
            done=self._done(request),
            replayed=request.query_params.get("id", ""),
            error=error,
            detail=detail,
        )

    @page_handler
    async def attention(self, request: Request) -> Response:
        return await self._attention_page(request, await self._attention_viewer(request))

    @page_handler
    async def replay(self, request: Request) -> Response:
        viewer = await self._attention_viewer(request)
        form = await self.form(request, viewer)
        inbound_id = positive_id(str(form.get("id") or ""))
        if inbound_id is None:
            raise PageError(404, "error.not_found")
        row = await self.db.run_read(inbound_store.get, inbound_id)
        unowned = row is not None and row["org_id"] is None and await self._unowned_visible(viewer)
        if not may_replay(row, viewer.org["id"], admin=viewer.is_admin, unowned=unowned):
            raise PageError(404, "error.not_found")
        if form.get("confirm") != "yes":
            return await self._attention_page(
                request, viewer, error="attention.error.confirm", status=422
            )
        try:
            await replay_kept(
                self.db, inbound_id, mail_domain=self.mail_domain, max_records=self.max_records
            )
        except ReplayError as exc:
            return await self._attention_page(
                request, viewer, error="attention.error.failed", detail=str(exc), status=409
            )
        except (OperationalError, DBAPIError, OSError):
            raise  # storage down: the 503 page
        except Exception as exc:  # noqa: BLE001 - one line, as `mailgate inbound replay` says it
            first = str(exc).splitlines()[0] if str(exc) else ""
            detail = f"replay of message {inbound_id} broke: {type(exc).__name__}: {first}"
            return await self._attention_page(
                request, viewer, error="attention.error.failed", detail=detail[:500], status=409
            )
        return RedirectResponse(f"/attention?done=replayed&id={inbound_id}", status_code=303)


def row_kind(row: dict[str, Any]) -> str:
    """The catalogue key of a kept row's kind (a held bounce, of an org or of none; parked
    failed or refused mail)."""
    if row["channel"] == "bounce":
        return "attention.kind.bounce" if row["org_id"] is not None else "attention.kind.unowned"
    return f"attention.kind.{row['state']}"
