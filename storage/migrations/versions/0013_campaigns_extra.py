"""Schema changes of Campaigns (lists, members, campaigns, sending) beyond 0012 (folded into 0012 before landing).

Revision ID: 0013_campaigns_extra
Revises: 0012_campaigns
"""

revision = "0013_campaigns_extra"
down_revision = "0012_campaigns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
