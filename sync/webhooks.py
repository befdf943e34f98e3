"""Webhook fan-out: queues one delivery per subscribed endpoint for every event.

The consumer reads every type; for each event it finds the org's *active*
endpoints subscribed to that type since before it (``after_event_id`` and
``since``: see :mod:`storage.schema_webhooks`), and queues a
``webhook_deliveries`` row for each, insert-or-ignore on (webhook, event).
It commits with its offset (:mod:`sync.consumer`), so each delivery is
queued exactly once, however many copies run.  Sending is the
``webhook_delivery`` runner's job (:mod:`sync.webhook_delivery`).

A disabled endpoint is not queued for: events that happen while it is
disabled are not delivered to it later (the log still has them:
``GET /api/v1/events?after=``), and enabling it starts its subscription
afresh, so a replay of the log does not queue them either.  Its deliveries
queued before it was disabled are kept and go out in order when it is
enabled again.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from storage import webhooks as store
from storage.events import Event, EventType, NewEvent
from sync.consumer import Consumer


def wanted(event: Event, endpoints: list[tuple[int, dict[str, int]]]) -> list[int]:
    """The endpoints (ids) that get ``event``: subscribed to its type since before it."""
    return [
        webhook_id
        for webhook_id, since in endpoints
        if event.type in since and event.id > since[event.type]
    ]


class WebhookFanout(Consumer):
    """Queues each event for the org's active endpoints subscribed to its type."""

    name = store.FANOUT
    types = frozenset(EventType)

    def apply_batch(self, conn: Connection, batch: Sequence[Event]) -> Sequence[NewEvent]:
        # Endpoints are read once per org per round (the round's transaction holds the
        # offset row that creating an endpoint also takes, so none appears mid-round).
        endpoints: dict[int, list[tuple[int, dict[str, int]]]] = {}
        for event in batch:
            if event.org_id not in endpoints:
                endpoints[event.org_id] = store.active_endpoints(conn, event.org_id)
            self._queue(conn, event, endpoints[event.org_id])
        return ()

    def _queue(
        self, conn: Connection, event: Event, endpoints: list[tuple[int, dict[str, int]]]
    ) -> None:
        now = self.clock.now()
        store.queue(
            conn,
            [
                {
                    "org_id": event.org_id,
                    "webhook_id": webhook_id,
                    "event_id": event.id,
                    "event_type": event.type,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "log": [],
                    "created_at": now,
                }
                for webhook_id in wanted(event, endpoints)
            ],
        )
