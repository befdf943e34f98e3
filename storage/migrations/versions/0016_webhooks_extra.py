"""Schema changes of webhooks beyond 0012 (folded into 0012 before landing).

``webhooks.after_event_id`` (events queued for an endpoint start after it),
the previous secret kept signing for a while after a rotation, and an index
for paging an endpoint's delivery log newest first.

Revision ID: 0016_webhooks_extra
Revises: 0015_campaigns_crm_extra
"""

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0016_webhooks_extra"
down_revision = "0015_campaigns_crm_extra"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("webhooks") as batch:
        batch.add_column(
            sa.Column("after_event_id", _ID, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("previous_secret", sa.String(length=100), nullable=True))
        batch.add_column(
            sa.Column(
                "previous_secret_until", storage.types.UTCDateTime(timezone=True), nullable=True
            )
        )
    op.create_index(
        "ix_webhook_deliveries_log", "webhook_deliveries", ["webhook_id", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_log", table_name="webhook_deliveries")
    with op.batch_alter_table("webhooks") as batch:
        batch.drop_column("previous_secret_until")
        batch.drop_column("previous_secret")
        batch.drop_column("after_event_id")
