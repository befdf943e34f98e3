"""Per-org tracking skip domains: links to these domains are never rewritten.

Revision ID: 0007_org_tracking_domains
Revises: 0006_tracking_speed
"""

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0007_org_tracking_domains"
down_revision = "0006_tracking_speed"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tracking_skip_domains", storage.types.JSONType, nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("orgs", schema=None) as batch_op:
        batch_op.drop_column("tracking_skip_domains")
