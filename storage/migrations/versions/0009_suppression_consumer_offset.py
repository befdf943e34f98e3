"""The suppression consumer starts where bounce processing stopped suppressing by itself.

Until this revision ``apply_bounce`` suppressed addresses as it recorded the
bounce; from now on the ``suppression`` consumer (``sync/suppression.py``)
does it from the events.  Its offset starts at the log's current end, so it
does not apply old bounces a second time (which would re-suppress addresses
someone has lifted since).  On a new database that end is 0.

Revision ID: 0009_suppression_consumer_offset
Revises: 0008_ingest_spool
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_suppression_consumer_offset"
down_revision = "0008_ingest_spool"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        sa.text(
            "INSERT INTO consumer_offsets (consumer, position, updated_at)"
            " SELECT 'suppression', COALESCE(MAX(id), 0), CURRENT_TIMESTAMP FROM events"
        )
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM consumer_offsets WHERE consumer = 'suppression'"))
