"""Tracking hits and the report indexes.

Revision ID: 0005_tracking
Revises: 0004_mailboxes
"""

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0005_tracking"
down_revision = "0004_mailboxes"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_REPORT_COLUMNS = [
    "template_id",
    "template_version",
    "user_id",
    "bounced_at",
    "opened_at",
    "clicked_at",
    "replied_at",
]


def upgrade() -> None:
    op.create_table(
        "tracking_hits",
        sa.Column("id", _ID, nullable=False),
        sa.Column("org_id", _ID, nullable=False),
        sa.Column("send_id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=5), nullable=False),
        sa.Column("link_index", sa.Integer(), nullable=True),
        sa.Column("at", storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=False),
        sa.Column("user_agent", sa.String(length=500), nullable=False),
        sa.Column("verdict", sa.String(length=7), nullable=False),
        sa.Column("reason", sa.String(length=24), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_tracking_hits_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tracking_hits")),
    )
    op.create_index("ix_tracking_hits_send_at", "tracking_hits", ["send_id", "at"])
    op.create_index("ix_tracking_hits_org_at", "tracking_hits", ["org_id", "at"])
    op.create_index(
        "ix_sends_org_sent",
        "sends",
        ["org_id", "sent_at"],
        postgresql_include=_REPORT_COLUMNS,
    )
    op.create_index(
        "ix_messages_org_direction_created", "messages", ["org_id", "direction", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_messages_org_direction_created", table_name="messages")
    op.drop_index("ix_sends_org_sent", table_name="sends")
    op.drop_index("ix_tracking_hits_org_at", table_name="tracking_hits")
    op.drop_index("ix_tracking_hits_send_at", table_name="tracking_hits")
    op.drop_table("tracking_hits")
