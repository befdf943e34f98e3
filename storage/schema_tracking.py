"""Tables of tracking: every open and click hit, with the verdict it got.

``sends`` keeps the per-recipient status (``opened_at``/``clicked_at`` are set
by *human* hits only), so reports aggregate ``sends`` and never scan this
table or the event log.  ``tracking_hits`` keeps every hit, machine ones
included, so a verdict can be audited or recomputed later, and feeds the
verdict rules (a burst, an open before a click) with the send's recent hits.

The report indexes live here too, declared on the other areas' tables:
``ix_sends_org_sent`` is what every report seeks (org, period); on PostgreSQL
it carries the aggregated columns (``INCLUDE``) so a report over a million
sends is an index-only scan.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table

from storage.schema import messages, metadata
from storage.schema_sending import sends
from storage.types import ID, UTCDateTime, utcnow

tracking_hits = Table(
    "tracking_hits",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("send_id", ID, nullable=False),
    Column("kind", String(5), nullable=False),  # open | click
    Column("link_index", Integer),
    Column("at", UTCDateTime(), nullable=False, default=utcnow),
    Column("ip", String(45), nullable=False, default=""),
    Column("user_agent", String(500), nullable=False, default=""),
    Column("verdict", String(7), nullable=False),  # human | machine
    Column("reason", String(24), nullable=False),
    Index("ix_tracking_hits_send_at", "send_id", "at"),
    Index("ix_tracking_hits_org_at", "org_id", "at"),
)

#: Columns the email report aggregates; carried in the PostgreSQL index leaf.
REPORT_COLUMNS = (
    "template_id",
    "template_version",
    "user_id",
    "bounced_at",
    "opened_at",
    "clicked_at",
    "replied_at",
)

ix_sends_org_sent = Index(
    "ix_sends_org_sent",
    sends.c.org_id,
    sends.c.sent_at,
    postgresql_include=list(REPORT_COLUMNS),
)

ix_messages_org_direction_created = Index(
    "ix_messages_org_direction_created",
    messages.c.org_id,
    messages.c.direction,
    messages.c.created_at,
)
