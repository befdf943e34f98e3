"""Email reports: sent, bounced, opened, clicked, received, replied per period and key.

Counts come from the ``sends`` status columns, which only *human* hits set
(:mod:`tracking.recorder`), so machine opens and clicks never inflate a
report.  Percentages follow the hosted CRM's email analytics: bounced is a
share of sent; opened, clicked and replied are shares of delivered (sent
minus bounced) — a bounced message cannot be opened.

Periods are calendar days, ISO weeks (starting Monday) or months in the
organization's time zone; ``from``/``to`` given as dates are inclusive local
days, given as ISO date-times they are exact instants (``to`` exclusive).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from storage import tracking_store
from storage.mailboxes import excluded_by_org

__all__ = [
    "GROUPS",
    "BYS",
    "ReportError",
    "Period",
    "parse_period",
    "period_label",
    "email_report",
    "no_response_report",
    "version_report",
    "summarise",
]

GROUPS = ("day", "week", "month")
BYS = ("template", "user")
_KEY_COLUMNS = {"template": ("template_id", "template_version"), "user": ("user_id",), None: ()}
_COUNTED = ("sent", "bounced", "opened", "clicked", "replied")
MAX_RANGE = timedelta(days=366 * 3)


class ReportError(ValueError):
    """A parameter the caller must fix (answered as 400)."""


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    tz: str


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _instant(raw: str, zone: ZoneInfo, *, end: bool) -> datetime:
    raw = raw.strip()
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            if end:
                day += timedelta(days=1)
            return datetime.combine(day, time(), zone).astimezone(UTC)
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReportError(f"not a date or ISO 8601 date-time: {raw!r}") from exc
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone)
    return at.astimezone(UTC)


def parse_period(
    raw_from: str | None, raw_to: str | None, tz: str, *, now: datetime | None = None
) -> Period:
    """The UTC half-open range of a report; the last 30 local days by default."""
    zone = _zone(tz)
    now = now or datetime.now(UTC)
    end = (
        _instant(raw_to, zone, end=True)
        if raw_to
        else _instant(now.astimezone(zone).date().isoformat(), zone, end=True)
    )
    start = _instant(raw_from, zone, end=False) if raw_from else end - timedelta(days=30)
    if start >= end:
        raise ReportError("from must be before to")
    if end - start > MAX_RANGE:
        raise ReportError("a report covers at most three years")
    return Period(start, end, tz)


def period_label(value: datetime, group: str, zone: ZoneInfo, *, local: bool) -> str:
    """``2026-11-23`` (day, and the Monday of a week) or ``2026-11`` (month)."""
    if not local:
        value = value.astimezone(zone)
    day = value.date()
    if group == "week":
        day -= timedelta(days=day.weekday())
    if group == "month":
        return f"{day.year:04d}-{day.month:02d}"
    return day.isoformat()


def _pct(n: int, of: int) -> float:
    return round(100.0 * n / of, 1) if of else 0.0


def _shape(counts: dict[str, int]) -> dict[str, Any]:
    sent, bounced = counts["sent"], counts["bounced"]
    delivered = sent - bounced
    return {
        "sent": sent,
        "delivered": delivered,
        "bounced": {"n": bounced, "pct": _pct(bounced, sent)},
        "opened": {"n": counts["opened"], "pct": _pct(counts["opened"], delivered)},
        "clicked": {"n": counts["clicked"], "pct": _pct(counts["clicked"], delivered)},
        "replied": {"n": counts["replied"], "pct": _pct(counts["replied"], delivered)},
        "received": counts.get("received"),
    }


def summarise(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of a report added up into one, percentages recomputed by the same rule."""
    counts = dict.fromkeys((*_COUNTED, "received"), 0)
    for item in items:
        counts["sent"] += item["sent"]
        for name in ("bounced", "opened", "clicked", "replied"):
            counts[name] += item[name]["n"]
        counts["received"] += item.get("received") or 0
    return _shape(counts)


def email_report(
    conn, org_id: int, period: Period, group: str, by: str | None, *, only: int | None = None
) -> dict[str, Any]:
    """The report body (sync: runs in ``Database.run_read``).

    ``only``: the items of one key of ``by`` (a user id; a template id, all its
    versions), counted in SQL; the totals then cover that key alone too (and count
    no received mail for a template: incoming mail has none).
    """
    if group not in GROUPS:
        raise ReportError(f"group must be one of {', '.join(GROUPS)}")
    if by is not None and by not in BYS:
        raise ReportError(f"by must be one of {', '.join(BYS)}")
    zone = _zone(period.tz)
    local = conn.dialect.name == "postgresql"  # buckets come back as local timestamps
    key_cols = _KEY_COLUMNS[by]
    if only is not None and by is None:
        raise ReportError("only needs by")
    rows = tracking_store.email_counts(
        conn, org_id, period.start, period.end, group=group, by=by, tz=period.tz, only=only
    )
    # Incoming mail has no template: one template's report has none to count.
    received = (
        []
        if by == "template" and only is not None
        else tracking_store.received_counts(
            conn,
            org_id,
            period.start,
            period.end,
            group=group,
            by_user=by == "user",
            tz=period.tz,
            only_user=only if by == "user" else None,
        )
    )
    items: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_COUNTED, 0))
    totals: dict[str, dict[str, int]] = defaultdict(
        lambda: dict.fromkeys((*_COUNTED, "received"), 0)
    )
    for row in rows:
        label = period_label(row["period"], group, zone, local=local)
        key = (label, *(row[c] for c in key_cols))
        for name in _COUNTED:
            n = int(row[name])
            items[key][name] += n
            totals[label][name] += n
    received_by_key: dict[tuple, int] = defaultdict(int)
    for row in received:
        label = period_label(row["period"], group, zone, local=local)
        n = int(row["received"])
        totals[label]["received"] += n
        if by == "user":
            received_by_key[(label, row["user_id"])] += n
            items[(label, row["user_id"])]  # a user who only received mail still gets a row
    out_items = []
    for key in sorted(items, key=lambda k: tuple((x is None, x) for x in k)):
        counts = dict(items[key])
        counts["received"] = received_by_key.get(key, 0) if by == "user" else None
        item = {"period": key[0], **dict(zip(key_cols, key[1:], strict=True)), **_shape(counts)}
        out_items.append(item)
    out_totals = [{"period": label, **_shape(totals[label])} for label in sorted(totals)]
    return {
        "from": period.start.astimezone(zone).isoformat(),
        "to": period.end.astimezone(zone).isoformat(),
        "timezone": period.tz,
        "group": group,
        "by": by,
        "items": out_items,
        "totals": out_totals,
    }


def version_report(
    conn, org_id: int, period: Period, *, template_id: int | None = None
) -> list[dict[str, Any]]:
    """Each (template, version) over the whole period, in the shape of ``by=template``
    items (``period`` None): the A/B table without a row per day of every template.
    ``template_id``: that template's versions only.  Sends without a template count
    under ``None``, as in the report."""
    rows = tracking_store.email_counts(
        conn,
        org_id,
        period.start,
        period.end,
        group=None,
        by="template",
        tz=period.tz,
        only=template_id,
    )
    items: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_COUNTED, 0))
    for row in rows:
        key = (row["template_id"], row["template_version"])
        for name in _COUNTED:
            items[key][name] += int(row[name])
    return [
        {"period": None, "template_id": t, "template_version": v, **_shape(items[(t, v)])}
        for t, v in sorted(items, key=lambda k: tuple((x is None, x) for x in k))
    ]


def no_response_report(
    conn, org_id: int, period: Period, limit: int, *, viewer_id: int
) -> dict[str, Any]:
    """Records mailed in the period that did not respond, as ``viewer_id`` may see them.

    Sends are mail sent from the CRM, public to everyone who sees the record, except a
    send whose To or a CC sits in one of the org's excluded domains: its sender's own
    (seed 004; the event log's rule), so it counts on its sender's list alone.
    """
    zone = _zone(period.tz)
    excluded = tuple(sorted(excluded_by_org(conn, [org_id]).get(org_id, [])))
    seen = tracking_store.SendsSeen(viewer_id, excluded) if excluded else None
    rows = tracking_store.no_response(
        conn, org_id, period.start, period.end, limit=limit + 1, seen=seen
    )
    items = [
        {
            "module": r["module"],
            "id": r["record_id"],
            "email": r["email"],
            "last_name": r.get("last_name"),
            "first_name": r.get("first_name"),
            "sent": r["sent"],
            "bounced": r["bounced"],
            "last_sent_at": r["last_sent_at"].astimezone(zone).isoformat(),
        }
        for r in rows[:limit]
    ]
    return {
        "from": period.start.astimezone(zone).isoformat(),
        "to": period.end.astimezone(zone).isoformat(),
        "items": items,
        "truncated": len(rows) > limit,
    }
