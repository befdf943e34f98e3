"""API tokens can be told apart, listed and revoked.

``hint`` keeps the first characters of a token (``mg_AbCd…``) so a person can
tell which one a listing means without the token ever being stored; ``label``
says where it came from (``user create``, ``demo``, ``api``).  Revoking
deletes the row: only the hash was ever kept, so nothing is left to leak.

Revision ID: 0010_api_tokens
Revises: 0009_suppression_consumer_offset
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_api_tokens"
down_revision = "0009_suppression_consumer_offset"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("hint", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("label", sa.String(length=100), nullable=False, server_default="")
        )
        batch_op.create_index(batch_op.f("ix_api_tokens_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_user_id"))
        batch_op.drop_column("label")
        batch_op.drop_column("hint")
