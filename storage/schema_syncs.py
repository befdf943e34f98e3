"""Tables of the CRM → Campaigns sync: each sync's configuration and its run history.

A sync mirrors one CRM tab (leads or contacts) into one mailing list.  It is
applied by a consumer of the event log (``sync/``), never called by the code
that changes records; ``full_requested_at`` asks that consumer for a full
resync (on creation, ``POST …/run``, and resume).  Every run, full or a
round of changes, keeps its counts and each skipped record with its reason
(seed 002's history: total, added, updated, skipped).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, ForeignKey, Index, Integer, String, Table

from storage.schema import metadata
from storage.types import ID, JSONType, UTCDateTime, utcnow

syncs = Table(
    "syncs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", ID, ForeignKey("users.id", ondelete="SET NULL")),
    Column("module", String(10), nullable=False),  # leads | contacts
    Column("list_id", ID, ForeignKey("mailing_lists.id", ondelete="CASCADE"), nullable=False),
    Column("subscription", String(14), nullable=False),  # for newly added members only
    Column("consent", String(10), nullable=False, default="none"),  # none | pending | confirmed
    Column("legal_basis", String(40)),
    Column("update_empty_only", Boolean, nullable=False, default=False),
    Column("do_not_mail", String(7), nullable=False, default="exclude"),  # exclude | remove
    Column("exclude_converted", Boolean, nullable=False, default=True),
    Column("field_map", JSONType, nullable=False, default=dict),  # member field → CRM field
    Column("filter", JSONType),  # a saved selection of the tab, or None: every record
    Column("state", String(8), nullable=False, default="active"),  # active | paused
    Column("full_requested_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),
    Index("ix_syncs_org_state", "org_id", "state"),
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("org_id", ID, ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
    Column("sync_id", ID, ForeignKey("syncs.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(6), nullable=False),  # full | change
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("total", Integer, nullable=False, default=0),
    Column("added", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("removed", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=False, default=0),
    Column("skipped_reasons", JSONType, nullable=False, default=dict),  # {reason: count}
    Index("ix_sync_runs_sync", "sync_id", "id"),
)

# Why each skipped record of a run was skipped.
sync_skips = Table(
    "sync_skips",
    metadata,
    Column("id", ID, primary_key=True),
    Column("run_id", ID, ForeignKey("sync_runs.id", ondelete="CASCADE"), nullable=False),
    Column("org_id", ID, nullable=False),
    Column("module", String(10), nullable=False),
    Column("record_id", ID, nullable=False),
    Column("email", String(320)),
    # role_address | do_not_mail | converted | invalid_email | duplicate
    Column("reason", String(20), nullable=False),
    Index("ix_sync_skips_run", "run_id", "id"),
)
