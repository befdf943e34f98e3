"""POP3: why a message left on the server was not filed (too large for the ingest limit).

``mailbox_pop_seen.skipped`` is NULL for mail that was stored for filing; a
reason for mail the poller passed over on purpose, so ``GET
/api/v1/mailboxes/{id}`` can say so and the next poll does not try again.

Revision ID: 0014_pop3
Revises: 0013_rep_mail
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_pop3"
down_revision = "0013_rep_mail"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox_pop_seen", schema=None) as batch_op:
        batch_op.add_column(sa.Column("skipped", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailbox_pop_seen", schema=None) as batch_op:
        batch_op.drop_column("skipped")
