"""Append-only record of every bounce and complaint we recognised.

Suppression is decided from these rows (hard → at once; soft → after N within
a window), separately from recording them, as Mailman does.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, String, Table, Text

from storage.schema import metadata
from storage.types import ID, UTCDateTime, utcnow

bounces = Table(
    "bounces",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("inbound_id", ID),
    Column("send_id", ID),
    Column("email_norm", String(320), nullable=False),
    # the address as the report named it ("" when it named none, e.g. a redacted complaint)
    Column("reported_email", String(320), nullable=False, default=""),
    Column("kind", String(10), nullable=False),  # hard | soft | complaint
    Column("status", String(12), nullable=False, default=""),  # RFC 3463, e.g. 5.1.1
    Column("reply_code", String(3), nullable=False, default=""),
    Column("reason", String(40), nullable=False, default=""),
    Column("feedback_type", String(40), nullable=False, default=""),
    Column("diagnostic", Text, nullable=False, default=""),
    Column(
        "matched_by", String(12), nullable=False, default=""
    ),  # verp|header|message_id|recipient|smtp
    Column("at", UTCDateTime(), nullable=False, default=utcnow),
    Index("ix_bounces_org_email_at", "org_id", "email_norm", "at"),
)
