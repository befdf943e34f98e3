"""Where an org stands against its quotas right now (API, CLI and /metrics read this)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select

from gateway.sending import quota as rules
from gateway.sending.submit import active_users
from storage import quotas as quota_store
from storage.schema import orgs


def org_quota(conn: Connection, org: dict[str, Any], now: datetime) -> dict[str, dict[str, Any]]:
    """Per kind: used, limit, remaining, resets_at (ISO 8601 in the org's offset)."""
    day = rules.quota_day(now, ZoneInfo(org["timezone"]))
    used = quota_store.usage_for_day(conn, org["id"], day.day)
    users = active_users(conn, org["id"])
    out: dict[str, dict[str, Any]] = {}
    for kind in rules.KINDS:
        limit = rules.daily_limit(kind, org["plan"], users, org["mass_addon"])
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
    q = select(orgs).order_by(orgs.c.id)
    if org_ref is not None:
        cond = orgs.c.name == org_ref
        if org_ref.isdigit():
            cond = cond | (orgs.c.id == int(org_ref))
        q = q.where(cond)
    result = []
    for org in conn.execute(q).mappings():
        result.append(
            {
                "org_id": org["id"],
                "org": org["name"],
                "plan": org["plan"],
                "timezone": org["timezone"],
                **org_quota(conn, dict(org), now),
            }
        )
    return result
