"""SalesInbox: a deal's expected closing date (``deals.closing_date``).

The SalesInbox deals column puts mail about deals closing this month first
(seed 004: 今月完了予定); the deals table had no date to say so.  Existing
deals: no closing date (they sort with the rest, newest mail first).

Revision ID: 0014_inbox
Revises: 0013_rep_mail
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_inbox"
down_revision = "0013_rep_mail"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deals", sa.Column("closing_date", sa.Date(), nullable=True))


def downgrade() -> None:
    op.drop_column("deals", "closing_date")
