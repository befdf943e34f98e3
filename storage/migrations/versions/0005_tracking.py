"""Tracking hits and reports.

Revision ID: 0005_tracking
Revises: 0004_mailboxes
"""

revision = "0005_tracking"
down_revision = "0004_mailboxes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
