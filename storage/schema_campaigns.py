"""Tables of Campaigns: mailing lists and their members, campaigns and their recipients.

The newsletter side keeps its own people (``list_members``), as the hosted
Campaigns does: a member may come from a CRM record (by the CRM → Campaigns
sync, ``module``/``record_id`` set), by hand or by CSV (no record).  A member
removed from a list keeps its row with ``removed_at`` set: the sync must tell
"once removed, coming back" (skipped as a duplicate, seed 002) from "new".

A campaign's ``campaign_recipients`` are fixed when it is sent: one row per
address, with the quota day it was booked on (``due_at``) and, once the
campaign runner composed it, its ``send_id``.  The Campaigns → CRM consumer
moves each row's ``status`` from the send's events (human activity only) and
writes the CRM side: ``record_campaigns`` (a record's campaign history) and
registrations (``registered_*`` or ``not_registered_reason``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from storage.schema import metadata
from storage.types import ID, JSONType, UTCDateTime, utcnow

mailing_lists = Table(
    "mailing_lists",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("kind", String(10), nullable=False, default="list"),  # list | topic
    # Recipients of campaigns sent to this list who open or click may be registered
    # in the CRM (seed 000: only lists configured for registration count).
    Column("register", Boolean, nullable=False, default=False),
    Column("created_by", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    UniqueConstraint("org_id", "name", name="uq_mailing_lists_org_name"),
)

list_members = Table(
    "list_members",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("list_id", ID, ForeignKey("mailing_lists.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False),
    Column("email_norm", String(320), nullable=False),
    Column("first_name", String(100), nullable=False, default=""),
    Column("last_name", String(100), nullable=False, default=""),
    Column("company", String(300), nullable=False, default=""),
    # Other mapped fields (phone, title, account and deal fields …): {name: str}.
    Column("fields", JSONType, nullable=False, default=dict),
    Column("subscription", String(14), nullable=False, default="marketing"),  # | non_marketing
    Column("consent", String(10), nullable=False, default="none"),  # none | pending | confirmed
    Column("legal_basis", String(40)),  # GDPR: consent, contract, legitimate_interest …
    # subscribed | unsubscribed | bounced | complained
    Column("status", String(12), nullable=False, default="subscribed"),
    Column("status_at", UTCDateTime()),
    Column("module", String(10)),  # the CRM record it mirrors (leads | contacts), if any
    Column("record_id", ID),
    Column("source", String(10), nullable=False, default="manual"),  # manual | csv | sync
    Column("sync_id", ID),
    Column("removed_at", UTCDateTime()),  # removed from the list; the row is kept
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
    UniqueConstraint("list_id", "email_norm", name="uq_list_members_list_email"),
    Index("ix_list_members_record", "org_id", "module", "record_id"),
    Index("ix_list_members_org_email", "org_id", "email_norm"),
    # The sync finds a record's member of one list by it.
    Index("ix_list_members_list_record", "list_id", "module", "record_id"),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("name", String(200), nullable=False),
    Column("list_ids", JSONType, nullable=False, default=list),
    Column("template_id", ID, ForeignKey("templates.id", ondelete="SET NULL")),
    Column("template_version", Integer),
    Column("subject", Text, nullable=False, default=""),
    Column("html", Text, nullable=False, default=""),
    Column("text", Text),
    # The template's header/footer and module as they were when the campaign was
    # created or last changed (0013): the runner renders this snapshot, not a later edit.
    Column("header", Text),
    Column("footer", Text),
    Column("catalogue", String(20)),
    Column("from_email", String(320), nullable=False),
    Column("from_name", String(200), nullable=False, default=""),
    # {"opened": "leads"|"contacts"|None, "clicked": …}: who is registered in the CRM
    Column("register", JSONType),
    # draft | scheduled | sending | sent | cancelled
    Column("status", String(10), nullable=False, default="draft"),
    Column("send_at", UTCDateTime()),
    Column("defer_excess", Boolean, nullable=False, default=False),
    Column("recipients", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=False, default=0),
    Column("started_at", UTCDateTime()),
    Column("sent_at", UTCDateTime()),
    Column("claimed_until", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
)

campaign_recipients = Table(
    "campaign_recipients",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("campaign_id", ID, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("member_id", ID),
    Column("list_id", ID),  # the (first) list it was reached through
    Column("email", String(320), nullable=False),
    Column("email_norm", String(320), nullable=False),
    Column("first_name", String(100), nullable=False, default=""),
    Column("last_name", String(100), nullable=False, default=""),
    Column("company", String(300), nullable=False, default=""),
    Column("module", String(10)),  # the CRM record at send time, or registered since
    Column("record_id", ID),
    Column("due_at", UTCDateTime(), nullable=False),  # when the runner may compose it
    Column("send_id", ID),
    # pending (not composed yet) | queued | sent | opened | clicked | bounced |
    # unsubscribed | complained | failed
    Column("status", String(12), nullable=False, default="pending"),
    Column("sent_at", UTCDateTime()),
    Column("opened_at", UTCDateTime()),
    Column("clicked_at", UTCDateTime()),
    Column("bounced_at", UTCDateTime()),
    Column("unsubscribed_at", UTCDateTime()),
    Column("complained_at", UTCDateTime()),
    Column("registered_module", String(10)),
    Column("registered_id", ID),
    # already_in_crm | missing_fields | list_not_configured | no_activity | not_requested
    Column("not_registered_reason", String(30)),
    UniqueConstraint("campaign_id", "email_norm", name="uq_campaign_recipients_campaign_email"),
    Index("ix_campaign_recipients_due", "campaign_id", "status", "due_at"),
    Index("ix_campaign_recipients_send", "send_id"),
    # A campaign's page filtered by status, in page (id) order (0016).
    Index("ix_campaign_recipients_status", "campaign_id", "status", "id"),
)

#: A campaign's stats (0017, PostgreSQL): how many of its recipients have each ``*_at`` set,
#: and ``unopened`` (sent, not opened).  Statement-level triggers on
#: ``campaign_recipients`` keep it exact in the transaction of every write, whoever writes
#: (the start, the runner, the Campaigns → CRM consumer, psql), so the pages read one row
#: per campaign instead of counting 500,000 recipients.  SQLite installs are small: the
#: table stays empty there and the stats are counted (``storage.campaigns.stats_of``).
CAMPAIGN_STAT_COLUMNS = (
    "sent",
    "opened",
    "clicked",
    "bounced",
    "unsubscribed",
    "complained",
    "unopened",
)
campaign_stats = Table(
    "campaign_stats",
    metadata,
    Column("campaign_id", ID, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    *(Column(c, BigInteger, nullable=False, server_default="0") for c in CAMPAIGN_STAT_COLUMNS),
    PrimaryKeyConstraint("campaign_id", name="pk_campaign_stats"),
)

# A CRM record's campaign history (GET /api/v1/{module}/{id}/campaigns).
record_campaigns = Table(
    "record_campaigns",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("module", String(10), nullable=False),
    Column("record_id", ID, nullable=False),
    Column("campaign_id", ID, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(12), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    UniqueConstraint("module", "record_id", "campaign_id", name="uq_record_campaigns_rec_camp"),
    Index("ix_record_campaigns_record", "org_id", "module", "record_id"),
)

# The Campaigns → CRM sync's per-org settings (seed 001: the member status written into a
# chosen CRM field). {"leads": "status"|"title"|None, "contacts": "title"|None}.
campaign_crm_settings = Table(
    "campaign_crm_settings",
    metadata,
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True),
    Column("status_field", JSONType, nullable=False, default=dict),
    Column("updated_by", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
)
