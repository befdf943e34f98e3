"""Report speed: the send rollup kept by triggers (PostgreSQL), the no-response index.

Revision ID: 0006_tracking_speed
Revises: 0005_tracking

``send_rollup`` holds per (org, 15-minute UTC bucket of ``sent_at``, template,
version, user) the counts the email report shows.  Three statement-level
triggers on ``sends`` add each statement's net change (new rows minus old
rows, aggregated, upserted in key order so concurrent writers lock rollup
rows in the same order); a statement that changes no counted column touches
nothing.  Whoever writes ``sends`` (sending, bounces, replies, the hit
writer, an operator with psql) keeps the rollup exact without knowing it.
"""

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0006_tracking_speed"
down_revision = "0005_tracking"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One signed row per counted send: +1 for rows now present, -1 for rows gone.
_CONTRIBUTION = """
    SELECT org_id,
           to_timestamp(floor(extract(epoch FROM sent_at) / 900) * 900) AS bucket,
           coalesce(template_id, -1) AS template_id,
           coalesce(template_version, -1) AS template_version,
           coalesce(user_id, -1) AS user_id,
           {sign} AS sent,
           {sign} * (bounced_at IS NOT NULL)::int AS bounced,
           {sign} * (opened_at IS NOT NULL)::int AS opened,
           {sign} * (clicked_at IS NOT NULL)::int AS clicked,
           {sign} * (replied_at IS NOT NULL)::int AS replied
    FROM {rows} WHERE sent_at IS NOT NULL
"""

_UPSERT = """
    INSERT INTO send_rollup AS r
        (org_id, bucket, template_id, template_version, user_id,
         sent, bounced, opened, clicked, replied)
    SELECT org_id, bucket, template_id, template_version, user_id,
           sum(sent), sum(bounced), sum(opened), sum(clicked), sum(replied)
    FROM ({source}) AS c
    GROUP BY org_id, bucket, template_id, template_version, user_id
    HAVING sum(sent) <> 0 OR sum(bounced) <> 0 OR sum(opened) <> 0
        OR sum(clicked) <> 0 OR sum(replied) <> 0
    ORDER BY org_id, bucket, template_id, template_version, user_id
    ON CONFLICT (org_id, bucket, template_id, template_version, user_id) DO UPDATE SET
        sent = r.sent + excluded.sent,
        bounced = r.bounced + excluded.bounced,
        opened = r.opened + excluded.opened,
        clicked = r.clicked + excluded.clicked,
        replied = r.replied + excluded.replied
"""

_NEW = _CONTRIBUTION.format(sign="1", rows="new_rows")
_OLD = _CONTRIBUTION.format(sign="-1", rows="old_rows")

_FUNCTION = f"""
CREATE FUNCTION send_rollup_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_UPSERT.format(source=_NEW)};
    ELSIF TG_OP = 'DELETE' THEN
        {_UPSERT.format(source=_OLD)};
    ELSE
        {_UPSERT.format(source=_NEW + " UNION ALL " + _OLD)};
    END IF;
    RETURN NULL;
END
$$
"""

_TRIGGERS = {
    "insert": "REFERENCING NEW TABLE AS new_rows",
    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "REFERENCING OLD TABLE AS old_rows",
}


def upgrade() -> None:
    op.create_table(
        "send_rollup",
        sa.Column("org_id", _ID, nullable=False),
        sa.Column("bucket", storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("template_id", _ID, nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("sent", sa.BigInteger(), nullable=False),
        sa.Column("bounced", sa.BigInteger(), nullable=False),
        sa.Column("opened", sa.BigInteger(), nullable=False),
        sa.Column("clicked", sa.BigInteger(), nullable=False),
        sa.Column("replied", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "org_id", "bucket", "template_id", "template_version", "user_id", name="pk_send_rollup"
        ),
    )
    op.create_index(
        "ix_sends_org_record",
        "sends",
        ["org_id", "module", "record_id"],
        postgresql_include=[
            "sent_at",
            "opened_at",
            "clicked_at",
            "replied_at",
            "bounced_at",
            "to_email",
        ],
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    for event, referencing in _TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER send_rollup_{event} AFTER {event.upper()} ON sends "
            f"{referencing} FOR EACH STATEMENT EXECUTE FUNCTION send_rollup_apply()"
        )
    op.execute(_UPSERT.format(source=_CONTRIBUTION.format(sign="1", rows="sends")))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for event in _TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS send_rollup_{event} ON sends")
        op.execute("DROP FUNCTION IF EXISTS send_rollup_apply()")
    op.drop_index("ix_sends_org_record", table_name="sends")
    op.drop_table("send_rollup")
