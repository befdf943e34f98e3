"""The dashboard's indexes (issue #13: every page < 200 ms with 1,000,000 sends).

``ix_sends_org_sent`` (PostgreSQL) carries ``module`` and ``record_id`` too, so
"who did not respond" over a period is an index-only scan like the report;
both never change after a send is queued, so no update that was HOT stops
being HOT.  ``ix_messages_user`` (PostgreSQL) carries what the SalesInbox
classifies by (``from_addr``) and filters on, so sorting a rep's mail into
columns reads the index, not one heap page per message; the leads' and
contacts' ``(org_id, email_norm)`` carry what its per-sender look-ups read.  The rollup gets one
index per filter of ``/analytics`` (a user, a template), and a campaign's
recipients one per status filter of its page, in page order.

Revision ID: 0016_page_indexes
Revises: 0015_scale_out
"""

from alembic import op

revision = "0016_page_indexes"
down_revision = "0015_scale_out"
branch_labels = None
depends_on = None

_REPORT_COLUMNS = [
    "template_id",
    "template_version",
    "user_id",
    "bounced_at",
    "opened_at",
    "clicked_at",
    "replied_at",
]
_NO_RESPONSE_COLUMNS = ["module", "record_id"]
_INBOX_COLUMNS = ["org_id", "direction", "source", "from_addr"]
#: The SalesInbox's look-ups of a sender: what each reads beyond the key.
_SENDER_INDEXES = [
    ("leads", "ix_leads_org_email", ["converted_at"]),
    ("contacts", "ix_contacts_org_email", ["id"]),
]


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgresql():
        op.drop_index("ix_sends_org_sent", table_name="sends")
        op.create_index(
            "ix_sends_org_sent",
            "sends",
            ["org_id", "sent_at"],
            postgresql_include=_REPORT_COLUMNS + _NO_RESPONSE_COLUMNS,
        )
        op.drop_index("ix_messages_user", table_name="messages")
        op.create_index(
            "ix_messages_user", "messages", ["user_id", "id"], postgresql_include=_INBOX_COLUMNS
        )
        for table, name, include in _SENDER_INDEXES:
            op.drop_index(name, table_name=table)
            op.create_index(name, table, ["org_id", "email_norm"], postgresql_include=include)
    op.create_index("ix_send_rollup_org_user", "send_rollup", ["org_id", "user_id", "bucket"])
    op.create_index(
        "ix_send_rollup_org_template", "send_rollup", ["org_id", "template_id", "bucket"]
    )
    op.create_index(
        "ix_campaign_recipients_status", "campaign_recipients", ["campaign_id", "status", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_campaign_recipients_status", table_name="campaign_recipients")
    op.drop_index("ix_send_rollup_org_template", table_name="send_rollup")
    op.drop_index("ix_send_rollup_org_user", table_name="send_rollup")
    if _postgresql():
        for table, name, _ in _SENDER_INDEXES:
            op.drop_index(name, table_name=table)
            op.create_index(name, table, ["org_id", "email_norm"])
        op.drop_index("ix_messages_user", table_name="messages")
        op.create_index("ix_messages_user", "messages", ["user_id", "id"])
        op.drop_index("ix_sends_org_sent", table_name="sends")
        op.create_index(
            "ix_sends_org_sent", "sends", ["org_id", "sent_at"], postgresql_include=_REPORT_COLUMNS
        )
