"""Scale-out and faults (issue #14) and the dashboard's parked events (issue #13).

``parked_events``: events a consumer could not apply, set aside with their
error so the consumer moves past them; replayed or skipped by a person.
``mailboxes.poller`` / ``poll_lease_until``: one poller per mailbox across
every ``imap`` process, under a lease that runs out when its holder dies.

Revision ID: 0015_scale_out
Revises: 0014_dashboard
"""

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0015_scale_out"
down_revision = "0014_dashboard"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "parked_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("event_id", _ID, nullable=False),
        sa.Column("org_id", _ID, nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("parked_at", storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolution", sa.String(length=10), nullable=True),
        sa.Column("resolved_at", storage.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_parked_events")),
        sa.UniqueConstraint("consumer", "event_id", name="uq_parked_events_consumer_event"),
    )
    op.create_index(
        "ix_parked_events_open", "parked_events", ["consumer", "resolution"], unique=False
    )
    op.create_index("ix_parked_events_org", "parked_events", ["org_id"], unique=False)
    op.add_column("mailboxes", sa.Column("poller", sa.String(length=100), nullable=True))
    op.add_column(
        "mailboxes",
        sa.Column("poll_lease_until", storage.types.UTCDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("mailboxes") as batch:
        batch.drop_column("poll_lease_until")
        batch.drop_column("poller")
    op.drop_index("ix_parked_events_org", table_name="parked_events")
    op.drop_index("ix_parked_events_open", table_name="parked_events")
    op.drop_table("parked_events")
