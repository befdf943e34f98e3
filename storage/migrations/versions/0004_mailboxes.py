"""IMAP mailboxes, folder checkpoints and sharing rules.

Revision ID: 0004_mailboxes
Revises: 0003_bounces
"""

revision = "0004_mailboxes"
down_revision = "0003_bounces"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
