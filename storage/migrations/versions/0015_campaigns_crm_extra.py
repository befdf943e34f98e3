"""Schema changes of the Campaigns → CRM sync beyond 0012: its per-org settings.

``campaign_crm_settings`` holds, per org, the CRM field each module's
campaign member status is written into (seed 001).

Revision ID: 0015_campaigns_crm_extra
Revises: 0014_syncs_extra
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import storage.types

revision = "0015_campaigns_crm_extra"
down_revision = "0014_syncs_extra"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_crm_settings",
        sa.Column("org_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "status_field",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "updated_by", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("updated_at", storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.id"],
            name=op.f("fk_campaign_crm_settings_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["updated_by"],
            ["users.id"],
            name=op.f("fk_campaign_crm_settings_updated_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_campaign_crm_settings")),
    )


def downgrade() -> None:
    op.drop_table("campaign_crm_settings")
