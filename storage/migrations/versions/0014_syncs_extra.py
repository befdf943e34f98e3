"""Schema changes of the CRM → Campaigns sync beyond 0012 (folded into 0012 before landing).

Revision ID: 0014_syncs_extra
Revises: 0013_campaigns_extra
"""

revision = "0014_syncs_extra"
down_revision = "0013_campaigns_extra"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
