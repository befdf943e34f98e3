"""Schema changes of webhooks beyond 0012 (folded into 0012 before landing).

Revision ID: 0016_webhooks_extra
Revises: 0015_campaigns_crm_extra
"""

revision = "0016_webhooks_extra"
down_revision = "0015_campaigns_crm_extra"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
