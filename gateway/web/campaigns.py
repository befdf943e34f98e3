"""Dashboard pages for Campaigns and syncs: lists, campaigns with per-member status,
each sync's state (pause/resume), its run history with skipped records, and consumer lag.

Every read and write goes through the same functions as the JSON API
(:mod:`gateway.http.lists`, :mod:`gateway.http.campaigns`, :mod:`gateway.http.syncs`,
:mod:`storage.consumers`): a page is scoped to the viewer's org exactly as the API is,
and another org's campaign or sync is a 404 page.  Lists, campaigns and syncs are
shared by the org in the API (any user may read and change them), so they are here too;
consumer lag concerns the whole installation and is shown to admins only.  The events the
log's consumers parked are shown per org (the viewer's org's only); only admins replay or
skip one, through the same functions as ``mailgate consumer`` and the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.clock import Clock
from gateway.http.campaigns import RECIPIENT_STATUSES, campaign_json, recipient_json
from gateway.http.errors import ApiError
from gateway.http.jsonutil import MAX_INT, positive_id
from gateway.http.lists import list_json
from gateway.http.syncs import (
    _last_run,
    pause_sync,
    resume_sync,
    run_json,
    skip_json,
    sync_json,
)
from gateway.web import i18n
from gateway.web.base import PageError, WebResource, page_handler, page_id
from storage import campaigns as campaign_store
from storage import consumers, events
from storage import parked as parked_store
from storage import syncs as sync_store
from storage.db import Database
from sync.consumer import (
    AlreadyResolved,
    ParkedError,
    ParkedNotFound,
    ReplayFailed,
    replay_parked,
    skip_parked,
)

#: Rows per page on these pages (the API's defaults are larger; a page stays readable).
LISTS_PER_PAGE = 50
CAMPAIGNS_PER_PAGE = 50
MEMBERS_PER_PAGE = 50
RUNS_PER_PAGE = 20
SKIPS_PER_PAGE = 100
PARKED_PER_PAGE = 100


def _cursor(request: Request, name: str, default: int = 0) -> int:
    """A paging cursor from the query string; anything but a positive 64-bit id is ignored."""
    found = positive_id(request.query_params.get(name, ""))
    return default if found is None else found


def _paged(rows: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """The page's rows and the cursor of the next page (``None`` on the last)."""
    return rows[:limit], (rows[limit - 1]["id"] if len(rows) > limit else None)


def consumer_lag(conn: Connection) -> dict[str, Any]:
    """Each consumer of the log: its offset, how far behind the log's last id, when it moved."""
    from sync import CONSUMERS  # the consumers import the HTTP layer's neighbours: late

    last = events.last_id(conn)
    stored = consumers.positions(conn)
    rows = []
    for cls in CONSUMERS:
        position, moved = stored.get(cls.name, (0, None))
        rows.append(
            {"name": cls.name, "position": position, "lag": max(last - position, 0), "at": moved}
        )
    return {"last_id": last, "consumers": rows}


class CampaignPages(WebResource):
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        secure_cookies: bool = False,
        operators: frozenset[str] = frozenset(),
        wake: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(db, clock, secure_cookies=secure_cookies, operators=operators)
        #: Wakes the ``crm_to_campaigns`` consumer after a resume (as the API does).
        self.wake = wake or (lambda: None)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/campaigns", self.campaigns, methods=["GET"]),
            Route("/campaigns/{id}", self.campaign, methods=["GET"]),
            Route("/syncs", self.syncs, methods=["GET"]),
            Route("/syncs/{id}", self.sync, methods=["GET"]),
            Route("/syncs/{id}/pause", self.pause, methods=["POST"]),
            Route("/syncs/{id}/resume", self.resume, methods=["POST"]),
            Route("/syncs/parked/{id}/replay", self.replay_parked, methods=["POST"]),
            Route("/syncs/parked/{id}/skip", self.skip_parked, methods=["POST"]),
        ]

    # -- lists and campaigns ---------------------------------------------------------------

    @page_handler
    async def campaigns(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        org_id = viewer.org["id"]
        lists_after = _cursor(request, "lists_after")
        campaigns_after = _cursor(request, "campaigns_after")

        def read(conn: Connection) -> tuple[list, list, int | None, int | None]:
            lists, next_lists = _paged(
                campaign_store.lists_page(conn, org_id, lists_after, LISTS_PER_PAGE + 1),
                LISTS_PER_PAGE,
            )
            rows, next_campaigns = _paged(
                campaign_store.campaigns_page(
                    conn, org_id, campaigns_after, CAMPAIGNS_PER_PAGE + 1
                ),
                CAMPAIGNS_PER_PAGE,
            )
            stats = campaign_store.stats_of(conn, [r["id"] for r in rows]) if rows else {}
            found = [campaign_json(r, stats[r["id"]]) for r in rows]
            return lists, found, next_lists, next_campaigns

        lists, campaigns, next_lists, next_campaigns = await self.db.run_read(read)
        list_rows = []
        for row in lists:
            item = list_json(row)
            item["total"] = sum(item["members"].values())
            list_rows.append(item)
        return self.render(
            request,
            "campaigns_index.html",
            viewer,
            lists=list_rows,
            next_lists=next_lists,
            campaigns=campaigns,
            next_campaigns=next_campaigns,
            lists_after=lists_after,
            campaigns_after=campaigns_after,
        )

    @page_handler
    async def campaign(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        org_id, cid = viewer.org["id"], page_id(request)
        after = _cursor(request, "after")
        status = request.query_params.get("status") or None
        if status not in (None, *RECIPIENT_STATUSES):
            status = None

        def read(conn: Connection) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
            row = campaign_store.get_campaign(conn, org_id, cid)
            if row is None:
                return None
            rows = campaign_store.recipients_page(
                conn, cid, after=after, limit=MEMBERS_PER_PAGE + 1, status=status
            )
            return campaign_json(row, campaign_store.stats(conn, cid)), rows

        found = await self.db.run_read(read)
        if found is None:
            raise PageError(404, "error.not_found")
        campaign, rows = found
        rows, next_after = _paged(rows, MEMBERS_PER_PAGE)
        members = []
        for row in rows:
            item = recipient_json(row)
            item["name"] = i18n.person_name(row, viewer.org["locale"])
            members.append(item)
        return self.render(
            request,
            "campaigns_campaign.html",
            viewer,
            campaign=campaign,
            members=members,
            next_after=next_after,
            after=after,
            chosen=status,
            statuses=RECIPIENT_STATUSES,
        )

    # -- syncs -----------------------------------------------------------------------------

    @page_handler
    async def syncs(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        org_id = viewer.org["id"]

        def read(conn: Connection) -> dict[str, Any]:
            rows = sync_store.list_for_org(conn, org_id)
            lists = campaign_store.lists_of_org(conn, org_id, [r["list_id"] for r in rows])
            return {
                "syncs": [
                    {
                        **sync_json(r, _last_run(conn, r["id"])),
                        "list_name": (lists.get(r["list_id"]) or {}).get("name", ""),
                    }
                    for r in rows
                ],
                "lag": consumer_lag(conn) if viewer.is_admin else None,
                "parked": parked_store.listing(conn, org_id=org_id, limit=PARKED_PER_PAGE + 1),
            }

        found = await self.db.run_read(read)
        parked, more_parked = _paged(found.pop("parked"), PARKED_PER_PAGE)
        return self.render(
            request,
            "campaigns_syncs.html",
            viewer,
            notice=request.query_params.get("done"),
            parked=parked,
            more_parked=more_parked is not None,
            **found,
        )

    @page_handler
    async def sync(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        org_id, sync_id = viewer.org["id"], page_id(request)
        before = _cursor(request, "before", MAX_INT)
        run_id = _cursor(request, "run")
        skips_after = _cursor(request, "skips_after")

        def read(conn: Connection) -> dict[str, Any] | None:
            row = sync_store.get(conn, org_id, sync_id)
            if row is None:
                return None
            lists = campaign_store.lists_of_org(conn, org_id, [row["list_id"]])
            runs = sync_store.runs_page(conn, sync_id, before=before, limit=RUNS_PER_PAGE + 1)
            run = sync_store.get_run(conn, sync_id, run_id) if run_id else None
            skips = (
                sync_store.skips_page(conn, run_id, after=skips_after, limit=SKIPS_PER_PAGE + 1)
                if run
                else []
            )
            return {
                "sync": {
                    **sync_json(row, _last_run(conn, sync_id)),
                    "list_name": (lists.get(row["list_id"]) or {}).get("name", ""),
                },
                "runs": runs,
                "run": run_json(run) if run else None,
                "skips": skips,
            }

        found = await self.db.run_read(read)
        if found is None or (run_id and found["run"] is None):
            raise PageError(404, "error.not_found")
        runs, next_before = _paged(found["runs"], RUNS_PER_PAGE)
        skips, next_skips = _paged(found["skips"], SKIPS_PER_PAGE)
        return self.render(
            request,
            "campaigns_sync.html",
            viewer,
            sync=found["sync"],
            runs=[run_json(r) for r in runs],
            next_before=next_before,
            run=found["run"],
            skips=[skip_json(s) for s in skips],
            next_skips=next_skips,
            notice=request.query_params.get("done"),
        )

    async def _change(self, request: Request, action: str) -> Response:
        viewer = await self.viewer(request)
        sync_id = page_id(request)
        form = await self.form(request, viewer)
        change = pause_sync if action == "pause" else resume_sync
        try:
            await self.db.run_write(change, viewer.org["id"], sync_id, self.clock.now())
        except ApiError as exc:
            if exc.status == 404:
                raise PageError(404, "error.not_found") from None
            if exc.code == "sync_limit":
                raise PageError(409, "syncs.limit") from None
            raise
        if action == "resume":
            self.wake()
        if form.get("back") == "sync":  # the button of the sync's own page
            return RedirectResponse(f"/syncs/{sync_id}?done={action}", status_code=303)
        return RedirectResponse(f"/syncs?done={action}#sync-{sync_id}", status_code=303)

    @page_handler
    async def pause(self, request: Request) -> Response:
        return await self._change(request, "pause")

    @page_handler
    async def resume(self, request: Request) -> Response:
        return await self._change(request, "resume")

    # -- parked events (org admins act; their org's events only) ------------------------------

    async def _resolve_parked(self, request: Request, action: str) -> Response:
        viewer = await self.admin(request)
        parked_id = page_id(request)
        form = await self.form(request, viewer)
        if action == "skip" and form.get("confirm") != "yes":
            raise PageError(422, "syncs.parked.error.confirm")
        act = replay_parked if action == "replay" else skip_parked
        done = "replayed" if action == "replay" else "skipped"
        try:
            await act(self.db, self.clock, parked_id, org_id=viewer.org["id"])
        except ParkedNotFound:
            raise PageError(404, "error.not_found") from None
        except AlreadyResolved:
            done = "resolved_already"
        except ReplayFailed:
            done = "replay_failed"  # the row shows the new error
        except ParkedError:
            raise PageError(409, "syncs.parked.error.unavailable") from None
        return RedirectResponse(f"/syncs?done={done}#parked-{parked_id}", status_code=303)

    @page_handler
    async def replay_parked(self, request: Request) -> Response:
        return await self._resolve_parked(request, "replay")

    @page_handler
    async def skip_parked(self, request: Request) -> Response:
        return await self._resolve_parked(request, "skip")
