"""Schema changes of the Campaigns → CRM sync beyond 0012 (folded into 0012 before landing).

Revision ID: 0015_campaigns_crm_extra
Revises: 0014_syncs_extra
"""

revision = "0015_campaigns_crm_extra"
down_revision = "0014_syncs_extra"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
