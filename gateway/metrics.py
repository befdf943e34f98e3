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

from storage import gauges

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
PARKED_EVENTS = Gauge(
    "mailgate_parked_events",
    "Events a consumer could not apply and set aside, waiting for a person to replay or "
    "skip them (`mailgate consumer parked`, the dashboard's Syncs page); read at scrape time",
    ["consumer"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "mailgate_consumer_lag_events",
    "Events in the log a consumer has not applied yet (log head - its offset)",
    ["consumer"],
    registry=REGISTRY,
)


async def refresh_db_gauges(db: Any, now: datetime) -> None:
    """Set the queue and lag gauges from the database (called per scrape on http nodes)."""
    import sync

    figures = await db.run_read(gauges.read_db_gauges, now, [c.name for c in sync.CONSUMERS])
    for runner, (depth, oldest) in figures["queues"].items():
        QUEUE_DEPTH.labels(runner).set(depth)
        QUEUE_OLDEST.labels(runner).set(oldest)
    for consumer, lag in figures["lags"].items():
        CONSUMER_LAG.labels(consumer).set(lag)
    for state, count in figures["attention"].items():
        ATTENTION.labels(state).set(count)
    for consumer in sync.CONSUMERS:  # every consumer named, 0 when none is parked
        PARKED_EVENTS.labels(consumer.name).set(figures["parked"].get(consumer.name, 0))


def reply_class(code: int | None) -> str:
    """``2xx``/``4xx``/``5xx`` for an SMTP reply code; ``none`` when the relay gave none."""
    if code is None or not 100 <= code < 600:
        return "none"
    return f"{code // 100}xx"
