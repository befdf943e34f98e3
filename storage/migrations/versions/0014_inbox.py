"""SalesInbox: a deal's expected closing date (``deals.closing_date``).

The SalesInbox deals column puts mail about deals closing this month first
(seed 004: 今月完了予定); the deals table had no date to say so.  Existing
deals: no closing date (they sort with the rest, newest mail first).  The
index finds a sender's contacts' deals without scanning the org's deals.

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
    op.create_index("ix_deals_org_contact", "deals", ["org_id", "contact_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_deals_org_contact", table_name="deals")
    op.drop_column("deals", "closing_date")
