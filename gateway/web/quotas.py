"""The quotas landing page ``/``: today's figures per kind, the 80 % / 100 % warnings, a
30-day history chart, and for operators of the installation every org at a glance.

Operators are the users whose email is listed in ``MAILGATE_OPERATORS``; the
list of orgs is theirs alone (an org admin is not an operator).  The history's
limit line is today's limit: a past day's limit is not stored (it follows the
plan and the number of active users at the time).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.sending.usage import all_orgs, org_history, org_quota
from gateway.web.base import Viewer, WebResource, page_handler
from gateway.web.charts import bar_chart

HISTORY_DAYS = 30


def warning_of(viewer: Viewer, kind: str, used: int, limit: int) -> str | None:
    label = viewer.t(f"quotas.kind.{kind}")
    if limit and used >= limit:
        return viewer.t("quotas.warn100", kind=label)
    if limit and used >= 0.8 * limit:
        return viewer.t("quotas.warn80", kind=label)
    return None


def quota_rows(viewer: Viewer, status: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each kind's figures and its warning (80 % / 100 %), ready for the template."""
    rows = []
    for kind, q in status.items():
        share = q["used"] / q["limit"] if q["limit"] else (1.0 if q["used"] else 0.0)
        label = viewer.t(f"quotas.kind.{kind}")
        warning = warning_of(viewer, kind, q["used"], q["limit"])
        rows.append({"kind": kind, "label": label, "share": share, "warning": warning, **q})
    return rows


class QuotaPages(WebResource):
    def routes(self) -> list[BaseRoute]:
        return [Route("/", self.quotas, methods=["GET"])]

    @page_handler
    async def quotas(self, request: Request) -> Response:
        viewer = await self.viewer(request)
        now = self.clock.now()
        operator = viewer.is_operator
        async with self.db.connect() as conn:
            status = await conn.run_sync(org_quota, viewer.org, now)
            history = await conn.run_sync(org_history, viewer.org, now, HISTORY_DAYS)
            everyone = await conn.run_sync(all_orgs, now) if operator else None
        rows = quota_rows(viewer, status)
        for row in rows:
            days = history[row["kind"]]
            row["history"] = days
            row["chart"] = bar_chart(
                [d[5:] for d, _ in days], [[n for _, n in days]], limit=row["limit"]
            )
        orgs = None
        if everyone is not None:
            orgs = [
                {
                    **o,
                    "kinds": [
                        {
                            "kind": kind,
                            **o[kind],
                            "warning": warning_of(viewer, kind, o[kind]["used"], o[kind]["limit"]),
                        }
                        for kind in status
                    ],
                }
                for o in everyone
            ]
        return self.render(request, "quotas.html", viewer, quotas=rows, orgs=orgs)
