"""Schema changes of Campaigns (lists, members, campaigns, sending) beyond 0012.

The campaign keeps a snapshot of its template's header, footer and module
(the merge-field catalogue), so a template edited after the campaign was
made does not change what the runner sends.

Revision ID: 0013_campaigns_extra
Revises: 0012_campaigns
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_campaigns_extra"
down_revision = "0012_campaigns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("header", sa.Text(), nullable=True))
        batch.add_column(sa.Column("footer", sa.Text(), nullable=True))
        batch.add_column(sa.Column("catalogue", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("catalogue")
        batch.drop_column("footer")
        batch.drop_column("header")
