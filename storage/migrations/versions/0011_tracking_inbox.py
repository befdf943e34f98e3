"""The tracking inbox: accepted hits waiting for their verdict.

The HTTP process appends raw hits here and answers; the ``verdicts`` runner
on a worker judges them and moves them into ``tracking_hits``.

Revision ID: 0011_tracking_inbox
Revises: 0010_api_tokens
"""

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0011_tracking_inbox"
down_revision = "0010_api_tokens"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tracking_inbox",
        sa.Column("id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=5), nullable=False),
        sa.Column("send_id", _ID, nullable=False),
        sa.Column("link_index", sa.Integer(), nullable=True),
        sa.Column("at", storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=False),
        sa.Column("user_agent", sa.String(length=500), nullable=False),
        sa.Column("queued", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tracking_inbox")),
    )


def downgrade() -> None:
    op.drop_table("tracking_inbox")
