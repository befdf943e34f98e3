"""Tables of tracking: every open and click hit, with the verdict it got.

``sends`` keeps the per-recipient status (``opened_at``/``clicked_at`` are set
by *human* hits only), so reports aggregate ``sends`` and never scan this
table or the event log.  ``tracking_hits`` keeps every hit, machine ones
included, so a verdict can be audited or recomputed later, and feeds the
verdict rules (a burst, an open before a click) with the send's recent hits.

The report indexes live here too, declared on the other areas' tables:
``ix_sends_org_sent`` is what every report seeks (org, period); on PostgreSQL
it carries the aggregated columns (``INCLUDE``) so a report over a million
sends is an index-only scan.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
)

from storage.schema import messages, metadata
from storage.schema_sending import sends
from storage.types import ID, UTCDateTime, utcnow

tracking_hits = Table(
    "tracking_hits",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("send_id", ID, nullable=False),
    Column("kind", String(5), nullable=False),  # open | click
    Column("link_index", Integer),
    Column("at", UTCDateTime(), nullable=False, default=utcnow),
    Column("ip", String(45), nullable=False, default=""),
    Column("user_agent", String(500), nullable=False, default=""),
    Column("verdict", String(7), nullable=False),  # human | machine
    Column("reason", String(24), nullable=False),
    Index("ix_tracking_hits_send_at", "send_id", "at"),
    Index("ix_tracking_hits_org_at", "org_id", "at"),
)

#: Hits the endpoints accepted and no verdict has judged yet: the hand-over from
#: the HTTP process (``tracking`` runner: a bulk append of raw rows, no reads) to
#: the ``verdicts`` runner on a worker, which judges them once their burst window
#: has passed and moves them into ``tracking_hits`` in the same transaction.
#: ``at`` is the hit's time by the injected clock (what is stored and judged);
#: ``queued`` is the real clock's epoch seconds at the endpoint, shared by every
#: process, so the worker knows when a row has settled.  No foreign keys: a hit
#: of a deleted send is dropped when it is judged, and the endpoint's append
#: must not pay for a lookup.
tracking_inbox = Table(
    "tracking_inbox",
    metadata,
    Column("id", ID, primary_key=True),
    Column("kind", String(5), nullable=False),  # open | click
    Column("send_id", ID, nullable=False),
    Column("link_index", Integer),
    Column("at", UTCDateTime(), nullable=False),
    Column("ip", String(45), nullable=False),
    Column("user_agent", String(500), nullable=False),
    Column("queued", Float(), nullable=False),
)

#: Columns the email report aggregates; carried in the PostgreSQL index leaf.
REPORT_COLUMNS = (
    "template_id",
    "template_version",
    "user_id",
    "bounced_at",
    "opened_at",
    "clicked_at",
    "replied_at",
)

#: What "who did not respond" groups by, carried too (0016): an index-only scan as well.
NO_RESPONSE_COLUMNS = ("module", "record_id")

ix_sends_org_sent = Index(
    "ix_sends_org_sent",
    sends.c.org_id,
    sends.c.sent_at,
    postgresql_include=[*REPORT_COLUMNS, *NO_RESPONSE_COLUMNS],
)

ix_messages_org_direction_created = Index(
    "ix_messages_org_direction_created",
    messages.c.org_id,
    messages.c.direction,
    messages.c.created_at,
)

#: The email report's rollup (PostgreSQL): sends counted per org, 15-minute UTC
#: bucket of ``sent_at``, template, version and user.  Statement-level triggers on
#: ``sends`` (migration 0006) keep it exact on every insert, update and delete, so
#: a report over a million sends sums a few thousand rows.  15 minutes because
#: every time zone's offset is a multiple of it: a bucket never straddles a local
#: day.  Missing keys are stored as -1 (they are part of the unique key).
#: SQLite deployments are small and aggregate ``sends`` directly; the table stays
#: empty there.
send_rollup = Table(
    "send_rollup",
    metadata,
    Column("org_id", ID, nullable=False),
    Column("bucket", UTCDateTime(), nullable=False),
    Column("template_id", ID, nullable=False),
    Column("template_version", Integer, nullable=False),
    Column("user_id", ID, nullable=False),
    Column("sent", BigInteger, nullable=False, default=0),
    Column("bounced", BigInteger, nullable=False, default=0),
    Column("opened", BigInteger, nullable=False, default=0),
    Column("clicked", BigInteger, nullable=False, default=0),
    Column("replied", BigInteger, nullable=False, default=0),
    PrimaryKeyConstraint(
        "org_id", "bucket", "template_id", "template_version", "user_id", name="pk_send_rollup"
    ),
    # /analytics filtered by a user or a template reads that key's rows alone (0016).
    Index("ix_send_rollup_org_user", "org_id", "user_id", "bucket"),
    Index("ix_send_rollup_org_template", "org_id", "template_id", "bucket"),
)

#: ``send_rollup`` without the template/version/user keys (0017, PostgreSQL): per org and
#: 15-minute UTC bucket, kept by its own statement-level triggers on ``sends``.  The org's
#: report without a user or template filter sums it: one row per quarter hour (~35,000 a
#: year) where ``send_rollup`` holds about one per send when templates and users vary.
#: Local periods are still cut from quarter hours, so any zone's days stay exact.
send_rollup_org = Table(
    "send_rollup_org",
    metadata,
    Column("org_id", ID, nullable=False),
    Column("bucket", UTCDateTime(), nullable=False),
    *(
        Column(c, BigInteger, nullable=False, server_default="0")
        for c in ("sent", "bounced", "opened", "clicked", "replied")
    ),
    PrimaryKeyConstraint("org_id", "bucket", name="pk_send_rollup_org"),
)

#: The A/B table's rollup (0017, PostgreSQL): per org, UTC day (midnight), template and
#: version, no user; missing keys are -1 as in ``send_rollup``.  A period's whole UTC days
#: are summed from it (~150 versions × 400 days instead of ~1 row per send), its ragged
#: ends (a local day is not a UTC day) from ``send_rollup``'s quarter hours.
send_rollup_version_day = Table(
    "send_rollup_version_day",
    metadata,
    Column("org_id", ID, nullable=False),
    Column("day", UTCDateTime(), nullable=False),
    Column("template_id", ID, nullable=False),
    Column("template_version", Integer, nullable=False),
    *(
        Column(c, BigInteger, nullable=False, server_default="0")
        for c in ("sent", "bounced", "opened", "clicked", "replied")
    ),
    PrimaryKeyConstraint(
        "org_id", "day", "template_id", "template_version", name="pk_send_rollup_version_day"
    ),
)

#: Seconds per rollup bucket.
ROLLUP_BUCKET_SECONDS = 900

#: "Who did not respond" groups an org's sends by recipient record.
ix_sends_org_record = Index(
    "ix_sends_org_record",
    sends.c.org_id,
    sends.c.module,
    sends.c.record_id,
    postgresql_include=[
        "sent_at",
        "opened_at",
        "clicked_at",
        "replied_at",
        "bounced_at",
        "to_email",
    ],
)
