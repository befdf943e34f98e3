"""Counters for the pages still over 200 ms at 1,000,000 sends (issue #13).

Revision ID: 0017_page_counters
Revises: 0016_page_indexes

Three derived tables, kept on PostgreSQL by statement-level triggers with
transition tables (the mechanism of ``send_rollup``, 0006), backfilled here
from the rows already there:

- ``campaign_stats``: per campaign, how many recipients have each ``*_at`` set
  (``sent`` … ``complained``) and ``unopened`` (sent, not opened) — the numbers
  of ``storage.campaigns.stats``, which counted every recipient row per read.
  Every writer of ``campaign_recipients`` (the campaign start, the runner's
  ``queued``/``failed``, the Campaigns → CRM consumer, an operator with psql, a
  cascade) keeps them exact without knowing it.  The upsert joins
  ``campaigns``, so a cascade from a deleted campaign writes no orphan row.
- ``send_rollup_org``: ``send_rollup`` without the template/version/user
  dimensions (org, 15-minute UTC bucket): an org's report over a year sums
  ~35,000 rows instead of ~1 per send.  Local days, weeks and months are still
  cut from the quarter hours, so every zone (``+05:30`` too) stays right.
- ``send_rollup_version_day``: per org, UTC day, template and version (no
  user): the A/B table over a long period sums one row per version and whole
  UTC day inside it, and the period's ragged ends (a local day is not a UTC
  day) from ``send_rollup``'s quarter hours.

SQLite installs are small: the tables exist there (one schema) but stay empty,
and reads count the source rows as before.
"""

import sqlalchemy as sa
from alembic import op

import storage.types

revision = "0017_page_counters"
down_revision = "0016_page_indexes"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One signed row per recipient: +1 for rows now present, -1 for rows gone.
_RECIPIENT_CONTRIBUTION = """
    SELECT campaign_id,
           {sign} * (sent_at IS NOT NULL)::int AS sent,
           {sign} * (opened_at IS NOT NULL)::int AS opened,
           {sign} * (clicked_at IS NOT NULL)::int AS clicked,
           {sign} * (bounced_at IS NOT NULL)::int AS bounced,
           {sign} * (unsubscribed_at IS NOT NULL)::int AS unsubscribed,
           {sign} * (complained_at IS NOT NULL)::int AS complained,
           {sign} * (sent_at IS NOT NULL AND opened_at IS NULL)::int AS unopened
    FROM {rows}
"""
_STAT_COLUMNS = ("sent", "opened", "clicked", "bounced", "unsubscribed", "complained", "unopened")

_STATS_UPSERT = """
    INSERT INTO campaign_stats AS s
        (campaign_id, sent, opened, clicked, bounced, unsubscribed, complained, unopened)
    SELECT c.campaign_id, sum(c.sent), sum(c.opened), sum(c.clicked), sum(c.bounced),
           sum(c.unsubscribed), sum(c.complained), sum(c.unopened)
    FROM ({source}) AS c JOIN campaigns ON campaigns.id = c.campaign_id
    GROUP BY c.campaign_id
    HAVING sum(c.sent) <> 0 OR sum(c.opened) <> 0 OR sum(c.clicked) <> 0
        OR sum(c.bounced) <> 0 OR sum(c.unsubscribed) <> 0 OR sum(c.complained) <> 0
        OR sum(c.unopened) <> 0
    ORDER BY c.campaign_id
    ON CONFLICT (campaign_id) DO UPDATE SET
        sent = s.sent + excluded.sent,
        opened = s.opened + excluded.opened,
        clicked = s.clicked + excluded.clicked,
        bounced = s.bounced + excluded.bounced,
        unsubscribed = s.unsubscribed + excluded.unsubscribed,
        complained = s.complained + excluded.complained,
        unopened = s.unopened + excluded.unopened
"""

# The org rollup: one signed row per counted send, as send_rollup's.
_SEND_CONTRIBUTION = """
    SELECT org_id,
           to_timestamp(floor(extract(epoch FROM sent_at) / 900) * 900) AS bucket,
           {sign} AS sent,
           {sign} * (bounced_at IS NOT NULL)::int AS bounced,
           {sign} * (opened_at IS NOT NULL)::int AS opened,
           {sign} * (clicked_at IS NOT NULL)::int AS clicked,
           {sign} * (replied_at IS NOT NULL)::int AS replied
    FROM {rows} WHERE sent_at IS NOT NULL
"""

_ORG_UPSERT = """
    INSERT INTO send_rollup_org AS r (org_id, bucket, sent, bounced, opened, clicked, replied)
    SELECT org_id, bucket, sum(sent), sum(bounced), sum(opened), sum(clicked), sum(replied)
    FROM ({source}) AS c
    GROUP BY org_id, bucket
    HAVING sum(sent) <> 0 OR sum(bounced) <> 0 OR sum(opened) <> 0
        OR sum(clicked) <> 0 OR sum(replied) <> 0
    ORDER BY org_id, bucket
    ON CONFLICT (org_id, bucket) DO UPDATE SET
        sent = r.sent + excluded.sent,
        bounced = r.bounced + excluded.bounced,
        opened = r.opened + excluded.opened,
        clicked = r.clicked + excluded.clicked,
        replied = r.replied + excluded.replied
"""


# The A/B table's daily rollup: one signed row per counted send, by UTC day and version.
_VERSION_CONTRIBUTION = """
    SELECT org_id,
           to_timestamp(floor(extract(epoch FROM sent_at) / 86400) * 86400) AS day,
           coalesce(template_id, -1) AS template_id,
           coalesce(template_version, -1) AS template_version,
           {sign} AS sent,
           {sign} * (bounced_at IS NOT NULL)::int AS bounced,
           {sign} * (opened_at IS NOT NULL)::int AS opened,
           {sign} * (clicked_at IS NOT NULL)::int AS clicked,
           {sign} * (replied_at IS NOT NULL)::int AS replied
    FROM {rows} WHERE sent_at IS NOT NULL
"""

_VERSION_UPSERT = """
    INSERT INTO send_rollup_version_day AS r
        (org_id, day, template_id, template_version, sent, bounced, opened, clicked, replied)
    SELECT org_id, day, template_id, template_version,
           sum(sent), sum(bounced), sum(opened), sum(clicked), sum(replied)
    FROM ({source}) AS c
    GROUP BY org_id, day, template_id, template_version
    HAVING sum(sent) <> 0 OR sum(bounced) <> 0 OR sum(opened) <> 0
        OR sum(clicked) <> 0 OR sum(replied) <> 0
    ORDER BY org_id, day, template_id, template_version
    ON CONFLICT (org_id, day, template_id, template_version) DO UPDATE SET
        sent = r.sent + excluded.sent,
        bounced = r.bounced + excluded.bounced,
        opened = r.opened + excluded.opened,
        clicked = r.clicked + excluded.clicked,
        replied = r.replied + excluded.replied
"""


def _function(name: str, upsert: str, contribution: str) -> str:
    new = contribution.format(sign="1", rows="new_rows")
    old = contribution.format(sign="-1", rows="old_rows")
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {upsert.format(source=new)};
    ELSIF TG_OP = 'DELETE' THEN
        {upsert.format(source=old)};
    ELSE
        {upsert.format(source=new + " UNION ALL " + old)};
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

#: (function, table it watches, upsert, contribution)
_KEPT = (
    ("campaign_stats_apply", "campaign_recipients", _STATS_UPSERT, _RECIPIENT_CONTRIBUTION),
    ("send_rollup_org_apply", "sends", _ORG_UPSERT, _SEND_CONTRIBUTION),
    ("send_rollup_version_day_apply", "sends", _VERSION_UPSERT, _VERSION_CONTRIBUTION),
)
_COUNTED = ("sent", "bounced", "opened", "clicked", "replied")


def upgrade() -> None:
    op.create_table(
        "campaign_stats",
        sa.Column("campaign_id", _ID, nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False, server_default="0") for c in _STAT_COLUMNS),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("campaign_id", name="pk_campaign_stats"),
    )
    op.create_table(
        "send_rollup_org",
        sa.Column("org_id", _ID, nullable=False),
        sa.Column("bucket", storage.types.UTCDateTime(timezone=True), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False, server_default="0") for c in _COUNTED),
        sa.PrimaryKeyConstraint("org_id", "bucket", name="pk_send_rollup_org"),
    )
    op.create_table(
        "send_rollup_version_day",
        sa.Column("org_id", _ID, nullable=False),
        sa.Column("day", storage.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("template_id", _ID, nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False, server_default="0") for c in _COUNTED),
        sa.PrimaryKeyConstraint(
            "org_id", "day", "template_id", "template_version", name="pk_send_rollup_version_day"
        ),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    for function, table, upsert, contribution in _KEPT:
        op.execute(_function(function, upsert, contribution))
        for event, referencing in _TRIGGERS.items():
            # The trigger takes its lock on the table first: no write lands between the
            # backfill's snapshot and the trigger (DDL is transactional on PostgreSQL).
            op.execute(
                f"CREATE TRIGGER {function.removesuffix('_apply')}_{event} "
                f"AFTER {event.upper()} ON {table} "
                f"{referencing} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            )
    # Backfill from the rows already there.
    op.execute(
        _STATS_UPSERT.format(
            source=_RECIPIENT_CONTRIBUTION.format(sign="1", rows="campaign_recipients")
        )
    )
    op.execute(
        "INSERT INTO send_rollup_org (org_id, bucket, sent, bounced, opened, clicked, replied) "
        "SELECT org_id, bucket, sum(sent), sum(bounced), sum(opened), sum(clicked), sum(replied) "
        "FROM send_rollup GROUP BY org_id, bucket ORDER BY org_id, bucket"
    )
    op.execute(
        "INSERT INTO send_rollup_version_day (org_id, day, template_id, template_version, "
        "sent, bounced, opened, clicked, replied) "
        "SELECT org_id, to_timestamp(floor(extract(epoch FROM bucket) / 86400) * 86400), "
        "template_id, template_version, "
        "sum(sent), sum(bounced), sum(opened), sum(clicked), sum(replied) "
        "FROM send_rollup GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function, table, _, _ in _KEPT:
            for event in _TRIGGERS:
                op.execute(
                    f"DROP TRIGGER IF EXISTS {function.removesuffix('_apply')}_{event} ON {table}"
                )
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.drop_table("send_rollup_version_day")
    op.drop_table("send_rollup_org")
    op.drop_table("campaign_stats")
