"""The rep's whole mail (issue #12).

``messages.shared`` (mail with an excluded domain is filed but seen only by its
owner), an index on a user's own mail, sends with CC / reply-in-thread / deal,
POP3 mailboxes (``mailboxes.protocol`` and the UIDLs each has seen, with why
one was passed over), the
SalesInbox org setting with a deal's expected closing date (its "closing this
month" ordering) and an index from a contact to its deals, and users' dropbox
search scope and deactivation time.  Existing rows: shared, IMAP, keep unknown
senders, search both, no closing date.

Revision ID: 0013_rep_mail
Revises: 0012_campaigns
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import storage.types

revision = "0013_rep_mail"
down_revision = "0012_campaigns"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.add_column(
        "messages", sa.Column("shared", sa.Boolean(), server_default=sa.true(), nullable=False)
    )
    op.create_index("ix_messages_user", "messages", ["user_id", "id"], unique=False)
    op.add_column("sends", sa.Column("cc_emails", _JSON, server_default="[]", nullable=False))
    op.add_column("sends", sa.Column("reply_to_pk", _ID, nullable=True))
    op.add_column("sends", sa.Column("deal_id", _ID, nullable=True))
    op.add_column(
        "mailboxes",
        sa.Column("protocol", sa.String(length=6), server_default="imap", nullable=False),
    )
    op.create_table(
        "mailbox_pop_seen",
        sa.Column("mailbox_id", _ID, nullable=False),
        sa.Column("uidl", sa.String(length=70), nullable=False),
        sa.Column("seen_at", storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("skipped", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_mailbox_pop_seen_mailbox_id_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("mailbox_id", "uidl", name="pk_mailbox_pop_seen"),
    )
    op.add_column(
        "orgs",
        sa.Column("inbox_keep_unknown", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.add_column(
        "users",
        sa.Column("dropbox_search", sa.String(length=10), server_default="both", nullable=False),
    )
    op.add_column(
        "users",
        sa.Column("deactivated_at", storage.types.UTCDateTime(timezone=True), nullable=True),
    )
    op.add_column("deals", sa.Column("closing_date", sa.Date(), nullable=True))
    op.create_index("ix_deals_org_contact", "deals", ["org_id", "contact_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_deals_org_contact", table_name="deals")
    op.drop_column("deals", "closing_date")
    op.drop_column("users", "deactivated_at")
    op.drop_column("users", "dropbox_search")
    op.drop_column("orgs", "inbox_keep_unknown")
    op.drop_table("mailbox_pop_seen")
    op.drop_column("mailboxes", "protocol")
    op.drop_column("sends", "deal_id")
    op.drop_column("sends", "reply_to_pk")
    op.drop_column("sends", "cc_emails")
    op.drop_index("ix_messages_user", table_name="messages")
    op.drop_column("messages", "shared")
