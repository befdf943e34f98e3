"""Prometheus metrics, served at ``/metrics``: every series an operator alerts on.

Every metric is defined here, except the quota gauges
(:mod:`gateway.sending.metrics`).  Two kinds:

- **Counters and histograms of this process** (``*_total``, ``*_seconds``):
  incremented by the code that does the work, one line where it happens.
  Each process counts its own; Prometheus sums them across processes.
- **Gauges read from the database at scrape time** (queue depths and oldest
  age per runner, consumer lag, quotas): one cheap query each, refreshed by
  :func:`refresh_db_gauges` only in a process running the ``http`` role (the
  one that serves ``/metrics`` to Prometheus on its API port).  Every http node
  reports the same numbers, so aggregate them with ``max``, never ``sum``
  (docs/deploy.md).  A process without ``http`` (``--only worker`` with
  ``MAILGATE_OPS_LISTEN``) exports its own counters only.

Labels are bounded: outcomes, states, reply classes, runner and consumer
names, org ids and mailbox ids; never an address.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import Connection, func, select

REGISTRY = CollectorRegistry(auto_describe=True)

# -- receiving and filing ------------------------------------------------------

SMTP_REPLIES = Counter(
    "mailgate_smtp_messages",
    "Messages answered by the SMTP receiver, by reply class",
    ["reply"],
    registry=REGISTRY,
)
RECEIVED = Counter(
    "mailgate_received_messages",
    "Messages stored durably by a receiver (spool), by channel (dropbox, bounce, imap, pop)",
    ["channel"],
    registry=REGISTRY,
)
FILED = Counter(
    "mailgate_filed_messages",
    "Messages run through the filing pipeline, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
PARKED = Counter(
    "mailgate_inbound_parked",
    "Inbound mail set aside for a person (`mailgate inbound replay`): "
    "state refused (not ours after the 250) or failed (a step kept breaking)",
    ["state"],
    registry=REGISTRY,
)

# -- sending -------------------------------------------------------------------

SENDS = Counter(
    "mailgate_relay_attempts",
    "Delivery attempts at the relay, by org, resulting state (sent, deferred, failed) "
    "and the relay's reply class (2xx, 4xx, 5xx, none: no reply)",
    ["org_id", "state", "reply_class"],
    registry=REGISTRY,
)
RELAY_LATENCY = Histogram(
    "mailgate_relay_latency_seconds",
    "Seconds one send took at the relay (connect if needed, MAIL, RCPT, DATA)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
BOUNCES = Counter(
    "mailgate_bounces",
    "Bounces and complaints recorded against our sends, by org and kind (hard, soft, complaint)",
    ["org_id", "kind"],
    registry=REGISTRY,
)

# -- tracking ------------------------------------------------------------------

TRACKING_HITS = Counter(
    "mailgate_tracking_hits",
    "Tracking hits by stage: queued (appended to the inbox by an http node), "
    "recorded (judged into tracking_hits by a worker), dropped (shed or given up on)",
    ["stage"],
    registry=REGISTRY,
)

# -- webhooks and mailboxes ----------------------------------------------------

WEBHOOK_ATTEMPTS = Counter(
    "mailgate_webhook_attempts",
    "Webhook delivery attempts, by outcome (delivered, rejected, timeout, unreachable, refused)",
    ["outcome"],
    registry=REGISTRY,
)
MAILBOX_POLL_ERRORS = Counter(
    "mailgate_mailbox_poll_errors",
    "Failed polls of a connected IMAP/POP3 mailbox, by mailbox, protocol and error kind",
    ["mailbox_id", "protocol", "kind"],
    registry=REGISTRY,
)

# -- read from the database at scrape time (http nodes only) ---------------------

QUEUE_DEPTH = Gauge(
    "mailgate_queue_depth",
    "Items waiting for a runner (due now), read from the database at scrape time",
    ["runner"],
    registry=REGISTRY,
)
QUEUE_OLDEST = Gauge(
    "mailgate_queue_oldest_seconds",
    "Age of the oldest item waiting for a runner (0 when none), read at scrape time",
    ["runner"],
    registry=REGISTRY,
)
ATTENTION = Gauge(
    "mailgate_attention_items",
    "Inbound mail waiting for a person (dashboard: Attention; `mailgate inbound replay`), "
    "by state: failed, refused (filing), held (bounce mail); read at scrape time",
    ["state"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "mailgate_consumer_lag_events",
    "Events in the log a consumer has not applied yet (log head - its offset)",
    ["consumer"],
    registry=REGISTRY,
)


def _age(now: datetime, oldest: Any) -> float:
    """Seconds since ``oldest`` (a datetime or an epoch float); 0 when the queue is empty."""
    if oldest is None:
        return 0.0
    if isinstance(oldest, int | float):
        return max(0.0, now.timestamp() - float(oldest))
    return max(0.0, (now - oldest).total_seconds())


def queue_figures(conn: Connection, now: datetime) -> dict[str, tuple[int, float]]:
    """Per runner: (items due, age in seconds of the oldest); one aggregate query each."""
    from storage.campaigns import LIVE
    from storage.inbound_store import INGEST_CHANNELS
    from storage.schema import inbound
    from storage.schema_campaigns import campaign_recipients, campaigns
    from storage.schema_sending import sends
    from storage.schema_tracking import tracking_inbox
    from storage.schema_webhooks import webhook_deliveries

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
    from storage.schema import consumer_offsets, events

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
    from storage.inbound_store import ATTENTION_STATES
    from storage.schema import inbound

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
    }


async def refresh_db_gauges(db: Any, now: datetime) -> None:
    """Set the queue and lag gauges from the database (called per scrape on http nodes)."""
    import sync

    figures = await db.run_read(read_db_gauges, now, [c.name for c in sync.CONSUMERS])
    for runner, (depth, oldest) in figures["queues"].items():
        QUEUE_DEPTH.labels(runner).set(depth)
        QUEUE_OLDEST.labels(runner).set(oldest)
    for consumer, lag in figures["lags"].items():
        CONSUMER_LAG.labels(consumer).set(lag)
    for state, count in figures["attention"].items():
        ATTENTION.labels(state).set(count)


def reply_class(code: int | None) -> str:
    """``2xx``/``4xx``/``5xx`` for an SMTP reply code; ``none`` when the relay gave none."""
    if code is None or not 100 <= code < 600:
        return "none"
    return f"{code // 100}xx"
