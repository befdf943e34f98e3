"""What the operator's database gauges read (``/metrics`` on http nodes, per scrape).

Queue depth and oldest age per runner, consumer lag, mail and events waiting for
a person: one aggregate query each, in one read-only connection
(:func:`read_db_gauges`).  :mod:`gateway.metrics` sets the gauges from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from storage import parked
from storage.campaigns import LIVE
from storage.inbound_store import ATTENTION_STATES, INGEST_CHANNELS
from storage.schema import consumer_offsets, events, inbound
from storage.schema_campaigns import campaign_recipients, campaigns
from storage.schema_sending import sends
from storage.schema_tracking import tracking_inbox
from storage.schema_webhooks import webhook_deliveries


def _age(now: datetime, oldest: Any) -> float:
    """Seconds since ``oldest`` (a datetime or an epoch float); 0 when the queue is empty."""
    if oldest is None:
        return 0.0
    if isinstance(oldest, int | float):
        return max(0.0, now.timestamp() - float(oldest))
    return max(0.0, (now - oldest).total_seconds())


def queue_figures(conn: Connection, now: datetime) -> dict[str, tuple[int, float]]:
    """Per runner: (items due, age in seconds of the oldest); one aggregate query each."""

    def one(column, *where, source=None) -> tuple[int, float]:
        q = select(func.count(), func.min(column)).where(*where)
        if source is not None:
            q = q.select_from(source)
        count, oldest = conn.execute(q).one()
        return int(count), _age(now, oldest)

    pending = inbound.c.state == "pending"
    return {
        "ingest": one(inbound.c.received_at, pending, inbound.c.channel.in_(INGEST_CHANNELS)),
        "bounces": one(inbound.c.received_at, pending, inbound.c.channel == "bounce"),
        "relay": one(
            sends.c.next_attempt_at,
            sends.c.state.in_(("queued", "deferred")),
            sends.c.next_attempt_at <= now,
        ),
        "verdicts": one(tracking_inbox.c.queued),
        # As the runner sees them: recipients of live campaigns (the index leads with the
        # campaign, and few campaigns are live at once).
        "campaigns": one(
            campaign_recipients.c.due_at,
            campaign_recipients.c.status == "pending",
            campaign_recipients.c.due_at <= now,
            campaigns.c.status.in_(LIVE),
            source=campaign_recipients.join(
                campaigns, campaigns.c.id == campaign_recipients.c.campaign_id
            ),
        ),
        "webhook_delivery": one(
            webhook_deliveries.c.next_attempt_at,
            webhook_deliveries.c.state == "pending",
            webhook_deliveries.c.next_attempt_at <= now,
        ),
    }


def consumer_lags(conn: Connection, consumers: list[str]) -> dict[str, int]:
    """Log head minus each consumer's offset (a consumer that never ran: the whole log)."""
    head = conn.execute(select(func.max(events.c.id))).scalar() or 0
    rows = conn.execute(
        select(consumer_offsets.c.consumer, consumer_offsets.c.position).where(
            consumer_offsets.c.consumer.in_(consumers)
        )
    )
    offsets = {name: pos for name, pos in rows}
    return {name: max(0, head - offsets.get(name, 0)) for name in consumers}


def attention_counts(conn: Connection) -> dict[str, int]:
    """Inbound rows parked for a person, by state (every state named, 0 when none)."""
    rows = conn.execute(
        select(inbound.c.state, func.count())
        .where(inbound.c.state.in_(ATTENTION_STATES))
        .group_by(inbound.c.state)
    )
    found = {state: int(n) for state, n in rows}
    return {state: found.get(state, 0) for state in ATTENTION_STATES}


def read_db_gauges(conn: Connection, now: datetime, consumers: list[str]) -> dict[str, Any]:
    """Every database gauge in one read-only connection."""
    return {
        "queues": queue_figures(conn, now),
        "lags": consumer_lags(conn, consumers),
        "attention": attention_counts(conn),
        "parked": parked.open_counts(conn),
    }
