"""The SalesInbox (seed 004 §3): ``GET /api/v1/inbox`` and ``/api/v1/inbox-settings``.

The inbox is the asking user's own polled mail (their mailbox), so nobody else
sees it — an admin neither: there is no ``user_id`` to ask for.  Columns are
decided when read (:mod:`storage.inbox`), from the sender and the CRM as it
is now.  When the org stops keeping mail from senders not in the CRM
(``keep_unknown`` false) the mail already kept stays filed (a sender added to
the CRM later still brings theirs to the right column), but the
``not_in_crm`` column is hidden: the org said it does not want that list.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.clock import Clock
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import read_json
from gateway.http.resource import Resource
from gateway.mailview.parts import clean_text
from storage import inbox
from storage.db import Database
from storage.inbox import Cursor, InboxColumn, Page

#: Items per column page: by default, and at most.
DEFAULT_LIMIT, MAX_LIMIT = 25, 200
#: A column's ``next``: the last item's id, ``m``-prefixed while still among this
#: month's closing deals (the deals column's first group).
_CURSOR = re.compile(r"(m?)([1-9][0-9]{0,18})")


def month_of(now: datetime, timezone: str) -> tuple[date, date]:
    """The first day of ``now``'s month in the org's time zone, and of the next month."""
    try:
        local = now.astimezone(ZoneInfo(timezone)).date()
    except (ZoneInfoNotFoundError, ValueError):
        local = now.date()
    first = local.replace(day=1)
    nxt = first.replace(year=first.year + 1, month=1) if first.month == 12 else None
    return first, nxt or first.replace(month=first.month + 1)


def cursor_text(cursor: Cursor | None) -> str | None:
    if cursor is None:
        return None
    return f"{'m' if cursor.rank else ''}{cursor.id}"


def parse_cursor(raw: str) -> Cursor:
    m = _CURSOR.fullmatch(raw)
    if m is None or int(m.group(2)) > 2**63 - 1:
        raise ApiError(422, "invalid_parameter", "before must be a column's next value")
    return Cursor(1 if m.group(1) else 0, int(m.group(2)))


def _param_error(message: str) -> ApiError:
    return ApiError(422, "invalid_parameter", message)


def parse_column(raw: str | None) -> InboxColumn | None:
    if raw is None:
        return None
    try:
        return InboxColumn(raw)
    except ValueError:
        names = ", ".join(c.value for c in InboxColumn)
        raise _param_error(f"column must be one of {names}") from None


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw[:6]) <= MAX_LIMIT:
        raise _param_error(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _item(
    row: dict[str, Any],
    records: dict[str, list[dict[str, Any]]],
    deals: dict[str, list[dict[str, Any]]] | None,
) -> dict[str, Any]:
    item = {
        "id": row["id"],
        "subject": clean_text(row["subject"]),
        "from": row["from_addr"],
        "from_name": clean_text(row["from_name"]),
        "date": row["date"],
        "filed_at": row["created_at"],
        "seen": bool(row["seen"]),
        "records": records.get(row["from_addr"], []),
    }
    if deals is not None:
        item["closing_this_month"] = bool(row["rank"])
        item["deals"] = deals.get(row["from_addr"], [])
    return item


def _column(
    page: Page,
    records: dict[str, list[dict[str, Any]]],
    deals: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    with_deals = deals if page.column is InboxColumn.DEALS else None
    return {
        "count": page.count,
        "items": [_item(r, records, with_deals) for r in page.rows],
        "next": cursor_text(page.next),
    }


async def read_inbox(
    db: Database,
    user: dict[str, Any],
    now: datetime,
    column: InboxColumn | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: Cursor | None = None,
) -> dict[str, Any]:
    """The overview (every shown column's first page) or, with ``column``, one page of one:
    the one reading of the SalesInbox, for the API and the dashboard.  A column the org
    turned off is a ``409 column_off`` :class:`ApiError`."""
    org_id = user["org_id"]
    async with db.connect() as conn:
        org = await inbox.inbox_org(conn, org_id)
        shown = [c for c in InboxColumn if org.keep_unknown or c is not InboxColumn.NOT_IN_CRM]
        if column is not None and column not in shown:
            raise ApiError(
                409,
                "column_off",
                "the organization does not keep mail from senders not in the CRM "
                "(PUT /api/v1/inbox-settings)",
            )
        this_month = month_of(now, org.timezone)
        pages = await inbox.read_columns(
            conn,
            org_id,
            user["id"],
            [column] if column else shown,
            domains=org.domains,
            this_month=this_month,
            limit=limit,
            before=cursor,
        )
        senders = [r["from_addr"] for p in pages for r in p.rows]
        records = await inbox.sender_records(conn, org_id, senders)
        deal_pages = [p for p in pages if p.column is InboxColumn.DEALS]
        in_deals = [r["from_addr"] for p in deal_pages for r in p.rows]
        deals = await inbox.sender_deals(conn, org_id, in_deals)
    shaped = {p.column.value: _column(p, records, deals) for p in pages}
    if column is not None:
        return {"column": column.value, **shaped[column.value]}
    return {"columns": shaped, "keep_unknown": org.keep_unknown}


class InboxApi(Resource):
    """``GET /api/v1/inbox`` (the columns), ``GET|PUT /api/v1/inbox-settings`` (the org's)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        super().__init__(db)
        self.clock = clock

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/inbox", self.get_inbox, methods=["GET"]),
            Route("/api/v1/inbox-settings", self.get_settings, methods=["GET"]),
            Route("/api/v1/inbox-settings", self.put_settings, methods=["PUT"]),
        ]

    async def get_inbox(self, request: Request) -> Response:
        """The overview (every column's first page) or, with ``column``, one page of one."""
        user = await self.user(request)
        params = request.query_params
        column = parse_column(params.get("column"))
        limit = parse_limit(params.get("limit"))
        before = params.get("before")
        if before is not None and column is None:
            raise _param_error("before pages one column: give column= too")
        cursor = parse_cursor(before) if before is not None else None
        return JSON(await read_inbox(self.db, user, self.clock.now(), column, limit, cursor))

    async def get_settings(self, request: Request) -> Response:
        user = await self.user(request)
        async with self.db.connect() as conn:
            org = await inbox.inbox_org(conn, user["org_id"])
        return JSON({"keep_unknown": org.keep_unknown})

    async def put_settings(self, request: Request) -> Response:
        """``{"keep_unknown": bool}`` (admins): whether polled mail from unknown senders is kept.

        Takes effect with the next ingest batch (it reads the org row per batch).
        Turning it off deletes nothing: what was kept stays filed, and the
        ``not_in_crm`` column is hidden until it is turned on again.
        """
        user = await self.user(request)
        if not user["is_admin"]:
            raise ApiError(403, "forbidden", "only an admin changes the SalesInbox settings")
        body = await read_json(request)
        unknown = sorted(set(body) - {"keep_unknown"})
        if unknown:
            raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
        keep = body.get("keep_unknown")
        if not isinstance(keep, bool):
            raise ApiError(422, "invalid_field", "keep_unknown must be true or false")
        async with self.db.begin() as conn:
            await inbox.set_keep_unknown(conn, user["org_id"], keep)
        return JSON({"keep_unknown": keep})
