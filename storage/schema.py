"""Tables of the core: organizations, users, CRM records, filed mail, the event log.

Core ``Table`` objects, not ORM classes: the hot paths (filing, event appends)
are bulk statements, and every query names its ``org_id`` explicitly so org
isolation is visible in the SQL.  Other areas (sending, tracking, bounces,
mailboxes) add their tables to the same ``metadata`` in their own modules.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    true,
)

from storage.types import ID, Blob, JSONType, UTCDateTime, utcnow

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _created() -> Column:
    return Column("created_at", UTCDateTime(), nullable=False, default=utcnow)


def _updated() -> Column:
    return Column("updated_at", UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow)


orgs = Table(
    "orgs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("plan", String(20), nullable=False),
    Column("timezone", String(64), nullable=False, default="Asia/Tokyo"),
    Column("locale", String(8), nullable=False, default="ja"),
    Column("mass_addon", Integer, nullable=False, default=0),
    # The org's own mail domains: colleagues there never become leads.
    Column("domains", JSONType, nullable=False, default=list),
    # Links to these domains (and subdomains) are sent untracked; NULL: none.
    Column("tracking_skip_domains", JSONType, nullable=True),
    # SalesInbox: keep polled mail whose sender is not in the CRM (migration 0013).
    Column("inbox_keep_unknown", Boolean, nullable=False, server_default=true()),
    _created(),
)

users = Table(
    "users",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("email", String(320), nullable=False),
    Column("email_norm", String(320), nullable=False),
    Column("name", String(200), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("dropbox_token", String(64), nullable=False, unique=True),
    # What an unknown recipient of dropbox mail becomes: lead, contact or none.
    Column("dropbox_setting", String(10), nullable=False, default="lead"),
    # Which records dropbox mail is matched against: leads, contacts or both (0013).
    Column("dropbox_search", String(10), nullable=False, server_default="both"),
    # When the user was deactivated (``active`` false): their seat no longer counts (0013).
    Column("deactivated_at", UTCDateTime()),
    # The dashboard password, Argon2id (``gateway.web.security``); NULL: no dashboard login.
    Column("password_hash", String(200)),
    _created(),
    UniqueConstraint("org_id", "email_norm", name="uq_users_org_email"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # Only a SHA-256 of the token is kept: a database leak does not leak API access.
    Column("token_hash", String(64), nullable=False, unique=True),
    # The token's first characters, to tell tokens apart in a listing (migration 0010).
    Column("hint", String(16), nullable=False, server_default=""),
    # Where it came from: "user create", "demo", "api" …
    Column("label", String(100), nullable=False, server_default=""),
    _created(),
    Index("ix_api_tokens_user_id", "user_id"),
)

user_senders = Table(
    "user_senders",
    metadata,
    Column("id", ID, primary_key=True),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("email_norm", String(320), nullable=False),
    _created(),
    UniqueConstraint("user_id", "email_norm", name="uq_user_senders_user_email"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(300), nullable=False),
    Column("owner_id", ID, ForeignKey("users.id", ondelete="SET NULL")),
    _created(),
    _updated(),
)

leads = Table(
    "leads",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("first_name", String(100), nullable=False, default=""),
    Column("last_name", String(100), nullable=False, default=""),
    Column("email", String(320)),
    Column("email_norm", String(320)),
    Column("company", String(300), nullable=False, default=""),
    Column("phone", String(50), nullable=False, default=""),
    Column("title", String(100), nullable=False, default=""),
    Column("status", String(30), nullable=False, default="new"),
    Column("source", String(30), nullable=False, default="api"),
    Column("owner_id", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("converted_at", UTCDateTime()),
    Column("converted_contact_id", ID),
    Column("converted_account_id", ID),
    Column("converted_deal_id", ID),
    # Never send marketing mail (set by hand, or by an unsubscribe/complaint in Campaigns).
    Column("do_not_mail", Boolean, nullable=False, default=False, server_default=false()),
    _created(),
    _updated(),
    # The SalesInbox's per-sender look-up reads only the index on PostgreSQL (0016).
    Index("ix_leads_org_email", "org_id", "email_norm", postgresql_include=["converted_at"]),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("first_name", String(100), nullable=False, default=""),
    Column("last_name", String(100), nullable=False, default=""),
    Column("email", String(320)),
    Column("email_norm", String(320)),
    Column("account_id", ID, ForeignKey("accounts.id", ondelete="SET NULL")),
    Column("phone", String(50), nullable=False, default=""),
    Column("title", String(100), nullable=False, default=""),
    Column("source", String(30), nullable=False, default="api"),
    Column("owner_id", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("do_not_mail", Boolean, nullable=False, default=False, server_default=false()),
    _created(),
    _updated(),
    # The SalesInbox's per-sender look-up reads only the index on PostgreSQL (0016).
    Index("ix_contacts_org_email", "org_id", "email_norm", postgresql_include=["id"]),
    # An account's contacts (the sync re-syncs them when the account changes).
    Index("ix_contacts_account_id", "account_id"),
)

deals = Table(
    "deals",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(300), nullable=False),
    Column("account_id", ID, ForeignKey("accounts.id", ondelete="SET NULL")),
    Column("contact_id", ID, ForeignKey("contacts.id", ondelete="SET NULL"), index=True),
    Column("stage", String(50), nullable=False, default="qualification"),
    Column("amount", Numeric(16, 2)),
    Column("owner_id", ID, ForeignKey("users.id", ondelete="SET NULL")),
    # When the deal is expected to close: the SalesInbox puts this month's first (migration 0013).
    Column("closing_date", Date),
    _created(),
    _updated(),
    # A contact's deals within the org (the SalesInbox asks per sender; migration 0013).
    Index("ix_deals_org_contact", "org_id", "contact_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", ID, ForeignKey("users.id", ondelete="SET NULL")),
    # Dedupe keys: the same mail seen twice (dropbox + IMAP, a resend) is filed once.
    Column("message_id", String(998)),
    Column("content_hash", String(64), nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("from_addr", String(320), nullable=False, default=""),
    Column("from_name", String(300), nullable=False, default=""),
    Column("to_addrs", JSONType, nullable=False, default=list),
    Column("cc_addrs", JSONType, nullable=False, default=list),
    Column("date", UTCDateTime()),
    Column("direction", String(10), nullable=False),
    Column("source", String(10), nullable=False),
    Column("in_reply_to", String(998)),
    Column("references", JSONType, nullable=False, default=list),
    Column("text_body", Text, nullable=False, default=""),
    Column("html_body", Text, nullable=False, default=""),
    Column("defects", JSONType, nullable=False, default=list),
    Column("size", Integer, nullable=False),
    Column("send_id", ID),
    Column("seen", Boolean, nullable=False, default=False),
    Column("raw", Blob, nullable=False),
    # False: it involves one of the org's excluded domains, so only its owner sees it
    # (seed 004: excluded from sharing, not from filing; migration 0013).
    Column("shared", Boolean, nullable=False, server_default=true()),
    _created(),
    UniqueConstraint("org_id", "message_id", name="uq_messages_org_message_id"),
    # A user's own mail, newest first (SalesInbox, the live signals); on PostgreSQL it
    # carries what the SalesInbox filters and classifies by: no heap page per message (0016).
    Index(
        "ix_messages_user",
        "user_id",
        "id",
        postgresql_include=["org_id", "direction", "source", "from_addr"],
    ),
    UniqueConstraint("org_id", "content_hash", name="uq_messages_org_content_hash"),
)

message_links = Table(
    "message_links",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("message_id", ID, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("module", String(10), nullable=False),  # leads | contacts | deals
    Column("record_id", ID, nullable=False),
    UniqueConstraint("message_id", "module", "record_id", name="uq_message_links_msg_rec"),
    Index("ix_message_links_record", "org_id", "module", "record_id"),
)

# Mail whose filing failed or is waiting: kept with the stage that failed so an
# operator can replay it.  Nothing that got a 250 is ever dropped.
inbound = Table(
    "inbound",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE")),
    Column("user_id", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("channel", String(10), nullable=False),  # dropbox | bounce | imap
    Column("mail_from", String(998), nullable=False, default=""),
    Column("rcpt_to", JSONType, nullable=False, default=list),
    # pending (spooled, not yet handled) | failed (a step kept breaking) | refused (the
    # authoritative dropbox check said no after the 250) | held (bounce mail) | done
    Column("state", String(10), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("failed_stage", String(30)),
    Column("last_error", Text),
    Column("raw", Blob, nullable=False),
    Column("received_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("claimed_until", UTCDateTime()),
    # IMAP mail: where it lives (mailbox_id, folder, kind, uidvalidity, uid, seen)
    Column("origin", JSONType),
    Index("ix_inbound_state", "state", "id"),
)

events = Table(
    "events",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("type", String(40), nullable=False),
    Column("at", UTCDateTime(), nullable=False, default=utcnow),
    Column("data", JSONType, nullable=False, default=dict),
    Index("ix_events_org_id", "org_id", "id"),
)

# Where each consumer (CRM sync, Campaigns sync, webhooks) stands in the event log.
consumer_offsets = Table(
    "consumer_offsets",
    metadata,
    Column("consumer", String(100), primary_key=True),
    Column("position", ID, nullable=False, default=0),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow),
)

# Events a consumer could not apply (migration 0015): set aside with their error so the
# consumer moves on past them; replayed (applied again) or skipped by a person.
parked_events = Table(
    "parked_events",
    metadata,
    Column("id", ID, primary_key=True),
    Column("consumer", String(100), nullable=False),
    Column("event_id", ID, nullable=False),
    Column("org_id", ID),
    Column("event_type", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("parked_at", UTCDateTime(), nullable=False),
    # NULL while parked; replayed | skipped once a person acted.
    Column("resolution", String(10)),
    Column("resolved_at", UTCDateTime()),
    UniqueConstraint("consumer", "event_id", name="uq_parked_events_consumer_event"),
    Index("ix_parked_events_open", "consumer", "resolution"),
    Index("ix_parked_events_org", "org_id"),
)
