"""Tables of the IMAP integration: connected mailboxes, where each poll resumes,
which filed message came from which server UID, and who shares their mail.

The password column holds a Fernet token (see ``gateway.receive.mailboxes.secrets``),
never the password: a database dump does not leak mailbox access without the
server's secret key.
"""

from __future__ import annotations

from sqlalchemy import (
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

mailboxes = Table(
    "mailboxes",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # imap | pop3: which client polls it (migration 0013).
    Column("protocol", String(6), nullable=False, server_default="imap"),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("login", String(320), nullable=False),
    Column("password_enc", Text, nullable=False),
    Column("security", String(10), nullable=False, default="tls"),
    Column("sent_folder", String(300)),  # per-account override of SPECIAL-USE \Sent
    Column("bounce", Boolean, nullable=False, default=False),
    Column("backfill_days", Integer, nullable=False, default=30),
    # pending | backfilling | ok | error
    Column("state", String(12), nullable=False, default="pending"),
    Column("error_kind", String(20)),
    Column("error_message", Text),
    Column("progress", JSONType, nullable=False, default=dict),  # folder -> [done, total]
    Column("last_ok_at", UTCDateTime()),
    # Bumped whenever connection settings change, so a running poller restarts.
    Column("version", Integer, nullable=False, default=1),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    # Which process polls it and until when (migration 0015): one poller per mailbox across
    # every ``imap`` process; a dead holder's lease runs out and another process takes over.
    Column("poller", String(100)),
    Column("poll_lease_until", UTCDateTime()),
    UniqueConstraint("user_id", "host", "login", name="uq_mailboxes_user_host_login"),
    Index("ix_mailboxes_org", "org_id"),
)

mailbox_folders = Table(
    "mailbox_folders",
    metadata,
    Column("mailbox_id", ID, ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False),
    Column("folder", String(300), nullable=False),
    Column("uidvalidity", ID, nullable=False),
    Column("last_uid", ID, nullable=False),
    Column("highestmodseq", ID),  # CONDSTORE: flags changed after this are read back
    PrimaryKeyConstraint("mailbox_id", "folder", name="pk_mailbox_folders"),
)

# Which filed message sits at which UID: needed to set \Seen on the server.
mailbox_messages = Table(
    "mailbox_messages",
    metadata,
    Column("id", ID, primary_key=True),
    Column("mailbox_id", ID, ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False),
    Column("message_pk", ID, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("folder", String(300), nullable=False),
    Column("uidvalidity", ID, nullable=False),
    Column("uid", ID, nullable=False),
    # The CRM user read it and the server has not been told yet.
    Column("seen_pending", Boolean, nullable=False, default=False),
    UniqueConstraint(
        "mailbox_id", "folder", "uidvalidity", "uid", name="uq_mailbox_messages_location"
    ),
    Index("ix_mailbox_messages_message", "message_pk"),
)

# POP3 has no UIDVALIDITY or flags: what a POP3 mailbox has seen is its set of UIDLs.
# The row is written in the spool transaction that stores the message, so a restart
# neither refetches nor skips (migration 0013).
mailbox_pop_seen = Table(
    "mailbox_pop_seen",
    metadata,
    Column("mailbox_id", ID, ForeignKey("mailboxes.id", ondelete="CASCADE"), nullable=False),
    Column("uidl", String(70), nullable=False),
    Column("seen_at", UTCDateTime(), nullable=False, default=utcnow),
    # NULL: stored for filing; else why it was passed over (too large).
    Column("skipped", String(200)),
    PrimaryKeyConstraint("mailbox_id", "uidl", name="pk_mailbox_pop_seen"),
)

# A user's sharing mode; no row means "public" (what the dropbox always did).
sharing = Table(
    "sharing",
    metadata,
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("mode", String(10), nullable=False, default="public"),  # private|custom|public
    Column("delegated", Boolean, nullable=False, default=False),  # the user may change it
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow),
    Index("ix_sharing_org", "org_id"),
)

sharing_records = Table(
    "sharing_records",
    metadata,
    Column("user_id", ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("module", String(10), nullable=False),
    Column("record_id", ID, nullable=False),
    PrimaryKeyConstraint("user_id", "module", "record_id", name="pk_sharing_records"),
    Index("ix_sharing_records_record", "module", "record_id"),
)

excluded_domains = Table(
    "excluded_domains",
    metadata,
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("domain", String(255), nullable=False),
    PrimaryKeyConstraint("org_id", "domain", name="pk_excluded_domains"),
)
