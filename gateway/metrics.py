"""Prometheus metrics, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

SMTP_REPLIES = Counter(
    "mailgate_smtp_messages",
    "Messages answered by the SMTP receiver, by reply class",
    ["reply"],
    registry=REGISTRY,
)
FILED = Counter(
    "mailgate_filed_messages",
    "Messages run through the filing pipeline, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "mailgate_webhook_attempts",
    "Webhook delivery attempts, by outcome (delivered, rejected, timeout, unreachable, refused)",
    ["outcome"],
    registry=REGISTRY,
)
