"""Tables of webhooks: an org's endpoints and, per endpoint, its queue of deliveries.

The ``webhooks`` consumer reads the event log and adds one delivery per
matching endpoint (in the consumer's transaction: each event is queued once
per endpoint); the delivery runner posts each endpoint's deliveries in event
order, one at a time, retrying with backoff until a 2xx.  The delivery rows
are also the endpoint's delivery log.

``after_event_id`` is the log's last id when the endpoint was made: only later
events are queued for it.  ``since`` (``{type: event id}``) moves that start
for one type: a type subscribed to later, or every type when the endpoint is
enabled again, starts at the log's last id of that moment.  The fan-out so
decides from what the endpoint is *now* and still queues exactly what it
queued then, which is what makes a replay from offset zero queue nothing new.
``previous_secret`` still signs (beside the new one) until
``previous_secret_until`` after a rotation, so receivers can switch without
dropping deliveries.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from storage.schema import metadata
from storage.types import ID, JSONType, UTCDateTime, utcnow

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("events", JSONType, nullable=False, default=list),  # event types subscribed to
    Column("secret", String(100), nullable=False),  # whsec_…; shown once
    Column("state", String(10), nullable=False, default="active"),  # active | disabled
    Column("created_by", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("failing_since", UTCDateTime()),
    Column("disabled_at", UTCDateTime()),
    Column("last_error", Text),
    Column("claimed_until", UTCDateTime()),  # one deliverer per endpoint at a time
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("after_event_id", ID, nullable=False, default=0, server_default=text("0")),
    Column("since", JSONType, nullable=False, default=dict, server_default=text("'{}'")),
    Column("previous_secret", String(100)),
    Column("previous_secret_until", UTCDateTime()),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, nullable=False),
    Column("webhook_id", ID, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", ID, nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("state", String(10), nullable=False, default="pending"),  # pending | delivered | dropped
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("last_attempt_at", UTCDateTime()),
    Column("delivered_at", UTCDateTime()),
    Column("log", JSONType, nullable=False, default=list),  # each attempt: at, status, error, ms
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_hook_event"),
    Index("ix_webhook_deliveries_queue", "webhook_id", "state", "id"),
    Index("ix_webhook_deliveries_log", "webhook_id", "id"),
)
