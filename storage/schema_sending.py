"""Tables of sending: templates, sends (the send queue), suppressions, quota counters.

A ``sends`` row is one message to one recipient.  It is at once the durable
send queue (``state``, ``next_attempt_at``, ``claimed_until`` — workers claim
rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and the per-recipient
status that tracking, bounces and reports update (``status`` and the
``*_at`` columns).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from storage.schema import metadata
from storage.types import ID, Blob, JSONType, UTCDateTime, utcnow

templates = Table(
    "templates",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("module", String(20), nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("subject", Text, nullable=False),
    Column("html", Text, nullable=False),
    Column("text", Text),
    Column("header", Text),
    Column("footer", Text),
    Column("created_by", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow),
)

# Every saved version, so sends can name the exact one (A/B by version in reports).
template_versions = Table(
    "template_versions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("template_id", ID, ForeignKey("templates.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("subject", Text, nullable=False),
    Column("html", Text, nullable=False),
    Column("text", Text),
    Column("header", Text),
    Column("footer", Text),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    UniqueConstraint("template_id", "version", name="uq_template_versions_tpl_version"),
)

sends = Table(
    "sends",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("kind", String(10), nullable=False),  # individual | mass
    Column("module", String(10)),  # leads | contacts (the recipient record)
    Column("record_id", ID),
    Column("to_email", String(320), nullable=False),
    Column("from_email", String(320), nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("template_id", ID, ForeignKey("templates.id", ondelete="SET NULL")),
    Column("template_version", Integer),
    Column("campaign_id", ID),
    Column("message_id", String(998), nullable=False),  # our Message-ID header
    Column("verp_token", String(64), nullable=False, unique=True),
    Column("links", JSONType, nullable=False, default=list),  # tracked URLs by index
    # Carbon copies (addresses): one message to To and CC, counted as 1 + len(cc) (0013).
    Column("cc_emails", JSONType, nullable=False, server_default="[]"),
    # Reply in thread: the filed message (messages.id) this send answers (0013).
    Column("reply_to_pk", ID),
    # Sent from a deal: the deal the copy is also filed on (0013).
    Column("deal_id", ID),
    Column("raw", Blob),  # the composed message, kept until delivered
    # queue state: queued | sending | sent | deferred | failed | cancelled
    Column("state", String(10), nullable=False, default="queued"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("claimed_until", UTCDateTime()),
    Column("last_reply", Text),
    # recipient status: sent | opened | clicked | bounced | unsubscribed | complained | replied …
    Column("status", String(12), nullable=False, default="queued"),
    Column("sent_at", UTCDateTime()),
    Column("opened_at", UTCDateTime()),
    Column("clicked_at", UTCDateTime()),
    Column("replied_at", UTCDateTime()),
    Column("bounced_at", UTCDateTime()),
    Column("bounce_type", String(4)),  # hard | soft
    Column("complained_at", UTCDateTime()),
    Column("unsubscribed_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Index("ix_sends_queue", "state", "next_attempt_at"),
    Index("ix_sends_org_created", "org_id", "created_at"),
    Index("ix_sends_org_message_id", "org_id", "message_id"),
    Index("ix_sends_org_to", "org_id", "to_email"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("email_norm", String(320), nullable=False),
    # hard_bounce | soft_bounce | complaint | unsubscribe | manual
    Column("reason", String(12), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("send_id", ID),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    UniqueConstraint("org_id", "email_norm", name="uq_suppressions_org_email"),
)

# One row per org, kind and local day: incremented atomically under the quota check.
quota_usage = Table(
    "quota_usage",
    metadata,
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(10), primary_key=True),  # individual | mass
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD in the org's time zone
    Column("used", Integer, nullable=False, default=0),
    Column("warned", Boolean, nullable=False, default=False),
)

# Shared From addresses of an org (support@ …): at most 10 per license.
org_addresses = Table(
    "org_addresses",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("email_norm", String(320), nullable=False),
    Column("name", String(200), nullable=False, default=""),
    UniqueConstraint("org_id", "email_norm", name="uq_org_addresses_org_email"),
)
