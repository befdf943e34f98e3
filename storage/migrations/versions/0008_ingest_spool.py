"""The ingest spool: inbound rows remember where IMAP mail came from.

SMTP and the IMAP poller now store raw mail in ``inbound`` (state ``pending``)
and the ingest runner files it afterwards; a polled message's mailbox, folder
and UID travel with it in ``origin`` so the runner can record its location.

Revision ID: 0008_ingest_spool
Revises: 0007_org_tracking_domains
"""

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0008_ingest_spool"
down_revision = "0007_org_tracking_domains"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", storage.types.JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.drop_column("origin")
