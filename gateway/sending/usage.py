"""Where an org stands against its quotas right now (API, CLI and /metrics read this)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection

from gateway.org.plans import QUOTA_KINDS, daily_limit
from gateway.sending import quota as rules
from storage import orgs, quotas


def org_quota(conn: Connection, org: dict[str, Any], now: datetime) -> dict[str, dict[str, Any]]:
    """Per kind: used, limit, remaining, resets_at (ISO 8601 in the org's offset)."""
    day = rules.quota_day(now, ZoneInfo(org["timezone"]))
    used = quotas.usage_for_day(conn, org["id"], day.day)
    users = orgs.active_users(conn, org["id"])
    out: dict[str, dict[str, Any]] = {}
    for kind in QUOTA_KINDS:
        limit = daily_limit(kind, org["plan"], users, org["mass_addon"])
        n = used.get(kind, 0)
        out[kind] = {
            "used": n,
            "limit": limit,
            "remaining": max(limit - n, 0),
            "resets_at": day.resets_at.isoformat(),
            "day": day.day,
        }
    return out


def all_orgs(conn: Connection, now: datetime, org_ref: str | None = None) -> list[dict[str, Any]]:
    """Every org's quota (or the one named by id or name), for ops."""
    return [
        {
            "org_id": org["id"],
            "org": org["name"],
            "plan": org["plan"],
            "timezone": org["timezone"],
            **org_quota(conn, org, now),
        }
        for org in orgs.orgs_by_ref(conn, org_ref)
    ]


def org_history(
    conn: Connection, org: dict[str, Any], now: datetime, days: int = 30
) -> dict[str, list[tuple[str, int]]]:
    """Per kind, ``(local day, used)`` for the last ``days`` local days, oldest first, today
    last; a day without sends is 0."""
    today = date.fromisoformat(rules.quota_day(now, ZoneInfo(org["timezone"])).day)
    span = [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]
    used = quotas.usage_history(conn, org["id"], span[0], span[-1])
    return {kind: [(d, used.get(kind, {}).get(d, 0)) for d in span] for kind in QUOTA_KINDS}
