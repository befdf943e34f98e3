"""Quota gauges on ``/metrics``: used and limit per org and kind, read at scrape time."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Gauge

from gateway.metrics import REGISTRY
from gateway.org.plans import QUOTA_KINDS
from gateway.sending.usage import all_orgs
from storage.db import Database

QUOTA_USED = Gauge(
    "mailgate_quota_used",
    "Messages counted against today's quota (the org's local day)",
    ["org_id", "org", "kind"],
    registry=REGISTRY,
)
QUOTA_LIMIT = Gauge(
    "mailgate_quota_limit",
    "Today's quota limit",
    ["org_id", "org", "kind"],
    registry=REGISTRY,
)


async def refresh(db: Database, now: datetime) -> None:
    """Set the gauges from the database (one read per scrape; cheap for any number of orgs)."""
    rows = await db.run_read(all_orgs, now)
    for row in rows:
        for kind in QUOTA_KINDS:
            labels = (str(row["org_id"]), row["org"], kind)
            QUOTA_USED.labels(*labels).set(row[kind]["used"])
            QUOTA_LIMIT.labels(*labels).set(row[kind]["limit"])
