"""``/analytics``: the hosted CRM's "email tracking" page over our reports.

Sent, bounced %, opened %, clicked %, received and replied as a summary row
and per day, week or month; filtered by a date range and by a user or a
template (a GET form); a chart; the template versions side by side (A/B); and
who did not respond.  Every figure comes from the functions behind
``GET /api/v1/reports/emails`` and ``/no-response`` (:mod:`tracking.reports`):
the same period rules, buckets and percentages.  Like those endpoints the page
covers the whole org for every user (sends are public mail; incoming mail is
only counted).

The report groups by user or by template rather than filtering, so a user
filter keeps the user's rows of ``by=user`` and a template filter the
template's rows of ``by=template`` (all its versions, added up per period by
:func:`tracking.reports.summarise`).  One of the two at a time: there is no
report by user *and* template.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.http.jsonutil import positive_id
from gateway.web.base import Viewer, WebResource, page_handler
from gateway.web.charts import bar_chart
from gateway.web.i18n import person_name
from storage import orgs, templates_store
from tracking.reports import (
    GROUPS,
    Period,
    ReportError,
    email_report,
    no_response_report,
    parse_period,
    summarise,
    version_report,
)

#: Rows of the "did not respond" list shown (the API allows up to 10,000).
NO_RESPONSE_LIMIT = 200
#: Templates offered in the filter (an org has tens, not thousands).
MAX_TEMPLATES = 500


class BadFilter(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass(frozen=True, slots=True)
class Filters:
    raw_from: str
    raw_to: str
    group: str
    user_id: int | None
    template_id: int | None


def _id(raw: str | None, key: str, known: set[int]) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    found = positive_id(raw.strip())
    if found is None or found not in known:
        raise BadFilter(key)
    return found


def _period_key(exc: ReportError) -> str:
    text = str(exc)
    if "before" in text:
        return "analytics.bad.order"
    if "three years" in text:
        return "analytics.bad.range"
    return "analytics.bad.date"


def read_filters(
    params: Any, users: set[int], templates: set[int], tz: str, now: Any
) -> tuple[Filters, Period]:
    """The filters of the query string, checked: a :class:`BadFilter` names what is wrong."""
    group = params.get("group") or "day"
    if group not in GROUPS:
        raise BadFilter("analytics.bad.group")
    user_id = _id(params.get("user"), "analytics.bad.user", users)
    template_id = _id(params.get("template"), "analytics.bad.template", templates)
    if user_id is not None and template_id is not None:
        raise BadFilter("analytics.bad.both")
    raw_from = (params.get("from") or "").strip()[:40]
    raw_to = (params.get("to") or "").strip()[:40]
    try:
        period = parse_period(raw_from or None, raw_to or None, tz, now=now)
    except ReportError as exc:
        raise BadFilter(_period_key(exc)) from exc
    zone = ZoneInfo(period.tz)
    if not raw_from:
        raw_from = period.start.astimezone(zone).date().isoformat()
    if not raw_to:
        raw_to = (period.end.astimezone(zone) - timedelta(days=1)).date().isoformat()
    return Filters(raw_from, raw_to, group, user_id, template_id), period


def per_period(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items of one key (a user, or a template's versions) added up per period."""
    periods: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        periods.setdefault(item["period"], []).append(item)
    return [{"period": p, **summarise(rows)} for p, rows in sorted(periods.items())]


def versions(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (template, version) over the whole period: the A/B table."""
    keyed: dict[tuple, list[dict[str, Any]]] = {}
    for item in items:
        keyed.setdefault((item["template_id"], item["template_version"]), []).append(item)
    order = sorted(keyed, key=lambda k: tuple((x is None, x) for x in k))
    return [{"template_id": t, "template_version": v, **summarise(keyed[(t, v)])} for t, v in order]


class AnalyticsPages(WebResource):
    def routes(self) -> list[BaseRoute]:
        return [Route("/analytics", self.analytics, methods=["GET"])]

    @page_handler
    async def analytics(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        org_id = viewer.org["id"]
        async with self.db.connect() as conn:
            users = await orgs.list_users(conn, org_id)
            templates = await templates_store.list_page(conn, org_id, after=0, limit=MAX_TEMPLATES)
        names = {u["id"]: u["name"] for u in users}
        template_names = {t["id"]: t["name"] for t in templates}
        context: dict[str, Any] = {
            "users": users,
            "templates": templates,
            "groups": GROUPS,
            "user_names": names,
            "template_names": template_names,
        }
        try:
            filters, period = read_filters(
                request.query_params,
                set(names),
                set(template_names),
                viewer.org["timezone"] or "UTC",
                self.clock.now(),
            )
        except BadFilter as exc:
            params = request.query_params
            context["filters"] = Filters(
                (params.get("from") or "")[:40],
                (params.get("to") or "")[:40],
                params.get("group") if params.get("group") in GROUPS else "day",
                None,
                None,
            )
            return self.render(
                request, "analytics.html", viewer, status=400, problem=exc.key, **context
            )
        context.update(await self._report(viewer, filters, period))
        return self.render(request, "analytics.html", viewer, filters=filters, **context)

    async def _report(self, viewer: Viewer, f: Filters, period: Period) -> dict[str, Any]:
        org_id = viewer.org["id"]
        by = "user" if f.user_id is not None else "template" if f.template_id is not None else None
        only = f.user_id if by == "user" else f.template_id
        # Every read asks for what the page shows and no more: the filtered key alone
        # (``only``), and the A/B table as one row per version over the whole period
        # (:func:`version_report`) rather than a row per day of every template.  The
        # three reads are independent: on PostgreSQL they run at once, each on its own
        # connection, so the page takes as long as the slowest.
        report, silent, ab_items = await asyncio.gather(
            self.db.run_read(partial(email_report, only=only), org_id, period, f.group, by),
            self.db.run_read(
                partial(no_response_report, viewer_id=viewer.user["id"]),
                org_id,
                period,
                NO_RESPONSE_LIMIT,
            ),
            self.db.run_read(partial(version_report, template_id=f.template_id), org_id, period),
        )
        if by == "template":
            rows = per_period(report["items"])
        else:
            rows = report["items"] if by == "user" else report["totals"]
        for item in silent["items"]:
            item["name"] = viewer_name(viewer, item)
        labels = [r["period"] for r in rows]
        chart = bar_chart(
            labels,
            [
                [r["sent"] for r in rows],
                [r["opened"]["n"] for r in rows],
                [r["clicked"]["n"] for r in rows],
                [r["replied"]["n"] for r in rows],
            ],
        )
        return {
            "report": report,
            "rows": rows,
            "summary": summarise(rows),
            "received_shown": by != "template",  # incoming mail has no template
            "ab": versions(ab_items),
            "silent": silent,
            "no_response_limit": NO_RESPONSE_LIMIT,
            "chart": chart,
        }


def viewer_name(viewer: Viewer, item: dict[str, Any]) -> str:
    return person_name(item, viewer.org.get("locale") or "ja")
