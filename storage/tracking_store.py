"""SQL of tracking: the inbox of raw hits, the sends a batch of hits belongs to, hit history,
status updates, reports.

Synchronous functions take a ``Connection`` and run inside
``Database.run_write`` (one transaction per batch of hits: the endpoint
process's append to the inbox, or a worker's judging of it); the async ones
serve the HTTP endpoints.  Reports read ``sends`` columns only — never the
event log — through ``ix_sends_org_sent``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.events import append_rows
from storage.lean import db_json, db_time, driver_sql
from storage.schema import contacts, leads, messages
from storage.schema_sending import sends
from storage.schema_tracking import (
    ROLLUP_BUCKET_SECONDS,
    send_rollup,
    send_rollup_org,
    send_rollup_version_day,
    tracking_hits,
    tracking_inbox,
)

#: What a hit needs to know about its send (and what the events carry).
HIT_SEND_COLUMNS = (
    sends.c.id,
    sends.c.org_id,
    sends.c.user_id,
    sends.c.kind,
    sends.c.to_email,
    sends.c.message_id,
    sends.c.module,
    sends.c.record_id,
    sends.c.template_id,
    sends.c.template_version,
    sends.c.campaign_id,
    sends.c.links,
    sends.c.status,
    sends.c.sent_at,
    sends.c.opened_at,
    sends.c.clicked_at,
    sends.c.unsubscribed_at,
)


def sends_for_hits(
    conn: Connection, ids: Iterable[int], with_links: Iterable[int] = ()
) -> dict[int, dict[str, Any]]:
    """The sends of a batch; ``links`` (a JSON decode each) only for ``with_links``."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    columns = [c for c in HIT_SEND_COLUMNS if c.name not in ("links", "unsubscribed_at")]
    names = [c.name for c in columns]
    rows = conn.execute(select(*columns).where(sends.c.id.in_(wanted))).all()
    out = {}
    for row in rows:  # plain tuples: RowMapping costs more than the query on a busy writer
        send = dict(zip(names, row, strict=True))
        send["links"] = None
        out[send["id"]] = send
    clicked = sorted(set(with_links) & out.keys())
    if clicked:
        q = select(sends.c.id, sends.c.links).where(sends.c.id.in_(clicked))
        for send_id, links in conn.execute(q):
            out[send_id]["links"] = links
    return out


def hits_since(
    conn: Connection, send_ids: Iterable[int], since: datetime
) -> dict[int, list[tuple[str, datetime, str, str, int | None]]]:
    """Recent hits of these sends as (kind, at, user_agent, ip, link_index)."""
    wanted = sorted(set(send_ids))
    out: dict[int, list[tuple[str, datetime, str, str, int | None]]] = {}
    if not wanted:
        return out
    q = select(
        tracking_hits.c.send_id,
        tracking_hits.c.kind,
        tracking_hits.c.at,
        tracking_hits.c.user_agent,
        tracking_hits.c.ip,
        tracking_hits.c.link_index,
    ).where(tracking_hits.c.send_id.in_(wanted), tracking_hits.c.at >= since)
    for send_id, *hit in conn.execute(q):
        out.setdefault(send_id, []).append(tuple(hit))
    return out


# The batch writer's statements run through ``exec_driver_sql`` with plain tuples:
# SQLAlchemy's per-row parameter processing (type decorators, JSON, dict keys) was
# most of the writer's time, and the writer shares the GIL with the endpoints.
# Values are therefore given in the driver's own terms: see :func:`db_time`,
# :func:`db_json`.

_HIT_COLUMNS = (
    "org_id",
    "send_id",
    "kind",
    "link_index",
    "at",
    "ip",
    "user_agent",
    "verdict",
    "reason",
)


# ``inline``: no RETURNING of the new ids, which nobody reads.
_INSERT_HIT = insert(tracking_hits).values({c: bindparam(c) for c in _HIT_COLUMNS}).inline()
_SEND_UPDATE = (
    update(sends)
    .where(sends.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        opened_at=bindparam("b_opened_at"),
        clicked_at=bindparam("b_clicked_at"),
    )
)
_SEND_UPDATE_ORDER = ("b_status", "b_opened_at", "b_clicked_at", "b_id")


def insert_hits(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Rows in ``_HIT_COLUMNS`` order, times already through :func:`db_time`."""
    if rows:
        sql = driver_sql(conn, "insert_hit", _INSERT_HIT, _HIT_COLUMNS)
        conn.exec_driver_sql(sql, list(rows))


def append_events(conn: Connection, rows: Sequence[tuple[int, str, Any, str]]) -> None:
    """(org_id, type, db time, json text) rows: see :func:`storage.events.append_rows`."""
    append_rows(conn, rows)


def update_send_statuses(conn: Connection, changes: Sequence[tuple[Any, ...]]) -> None:
    """(status, opened_at, clicked_at, id) tuples, times through :func:`db_time`."""
    if changes:
        sql = driver_sql(conn, "update_send", _SEND_UPDATE, _SEND_UPDATE_ORDER)
        conn.exec_driver_sql(sql, list(changes))


# The inbox: the HTTP process appends raw hits, the ``verdicts`` runner takes them.

_INBOX_COLUMNS = ("kind", "send_id", "link_index", "at", "ip", "user_agent", "queued")
_INSERT_INBOX = insert(tracking_inbox).values({c: bindparam(c) for c in _INBOX_COLUMNS}).inline()
#: The advisory lock one judging transaction holds (PostgreSQL): a verdict reads the
#: send's earlier hits, so two workers judging neighbouring hits at once could each
#: miss the other's.  Any constant unique to this use.
VERDICTS_LOCK = 0x6D67_7472


def append_inbox(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Raw hits in ``_INBOX_COLUMNS`` order (``at`` through :func:`db_time`): one statement."""
    if rows:
        sql = driver_sql(conn, "insert_inbox", _INSERT_INBOX, _INBOX_COLUMNS)
        conn.exec_driver_sql(sql, list(rows))


def take_judging_turn(conn: Connection) -> bool:
    """Whether this transaction may judge the inbox now (False: another worker is at it)."""
    if conn.dialect.name != "postgresql":
        return True  # SQLite: the write transaction (BEGIN IMMEDIATE) already excludes others
    return bool(
        conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": VERDICTS_LOCK}).scalar()
    )


def settled_inbox(
    conn: Connection, queued_before: float, limit: int
) -> list[tuple[int, str, int, int | None, datetime, str, str]]:
    """The oldest hits queued before ``queued_before``, in arrival order, as
    (id, kind, send_id, link_index, at, ip, user_agent)."""
    q = (
        select(
            tracking_inbox.c.id,
            tracking_inbox.c.kind,
            tracking_inbox.c.send_id,
            tracking_inbox.c.link_index,
            tracking_inbox.c.at,
            tracking_inbox.c.ip,
            tracking_inbox.c.user_agent,
        )
        .where(tracking_inbox.c.queued <= queued_before)
        .order_by(tracking_inbox.c.id)
        .limit(limit)
    )
    return [tuple(row) for row in conn.execute(q)]  # type: ignore[misc]


def remove_inbox(conn: Connection, ids: Sequence[int]) -> None:
    """Take judged (or dropped) hits out of the inbox, by id: a row another process
    committed late with a smaller id is not swept away unseen."""
    for start in range(0, len(ids), 5000):
        conn.execute(
            delete(tracking_inbox).where(tracking_inbox.c.id.in_(ids[start : start + 5000]))
        )


def oldest_queued(conn: Connection) -> float | None:
    """When the oldest hit still in the inbox was queued (epoch seconds), if any."""
    q = select(tracking_inbox.c.queued).order_by(tracking_inbox.c.id).limit(1)
    return conn.execute(q).scalar()


def mark_unsubscribed(conn: Connection, send_id: int, at: datetime) -> bool:
    """Set the send unsubscribed once; True when this call did it."""
    res = conn.execute(
        update(sends)
        .where(sends.c.id == send_id, sends.c.unsubscribed_at.is_(None))
        .values(unsubscribed_at=at, status="unsubscribed")
    )
    return bool(res.rowcount)


async def send_for_link(conn: AsyncConnection, send_id: int) -> dict[str, Any] | None:
    q = select(sends.c.id, sends.c.org_id, sends.c.links, sends.c.to_email).where(
        sends.c.id == send_id
    )
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


def send_for_unsubscribe(conn: Connection, send_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(*HIT_SEND_COLUMNS).where(sends.c.id == send_id)).mappings().first()
    return dict(row) if row else None


async def human_hits(conn: AsyncConnection, org_id: int, send_id: int) -> list[dict[str, Any]]:
    """One send's human opens and clicks, per kind and link: ``count``, ``first``, ``last``.

    Machine hits (prefetching proxies, scanners: :mod:`tracking.verdicts`) are left
    out, as every report leaves them out.  Clicks come per ``link_index``; opens
    have none.
    """
    q = (
        select(
            tracking_hits.c.kind,
            tracking_hits.c.link_index,
            func.count().label("count"),
            func.min(tracking_hits.c.at).label("first"),
            func.max(tracking_hits.c.at).label("last"),
        )
        .where(
            tracking_hits.c.org_id == org_id,
            tracking_hits.c.send_id == send_id,
            tracking_hits.c.verdict == "human",
        )
        .group_by(tracking_hits.c.kind, tracking_hits.c.link_index)
        .order_by(tracking_hits.c.kind, tracking_hits.c.link_index)
    )
    return [dict(r) for r in (await conn.execute(q)).mappings()]


# Reports -----------------------------------------------------------------------------

_KEYS = {
    "template": (sends.c.template_id, sends.c.template_version),
    "user": (sends.c.user_id,),
    None: (),
}


def _bucket_pg(column, group: str, tz: str):
    return func.date_trunc(group, func.timezone(tz, column))


def email_counts(
    conn: Connection,
    org_id: int,
    start: datetime,
    end: datetime,
    *,
    group: str | None,
    by: str | None,
    tz: str,
    only: int | None = None,
) -> list[dict[str, Any]]:
    """Counts per (period, key) of sends sent in [start, end).

    PostgreSQL buckets in SQL (``date_trunc`` in the org's zone); other engines
    return one row per send and the caller buckets (small deployments).
    ``group`` None: one period, the whole range (``period`` is None).  ``only``
    keeps the rows of one key of ``by`` (a user id, or a template id with all
    its versions): the dashboard filters in SQL instead of reading every key.
    """
    keys = _KEYS[by]
    counts = (
        func.count().label("sent"),
        func.count(sends.c.bounced_at).label("bounced"),
        func.count(sends.c.opened_at).label("opened"),
        func.count(sends.c.clicked_at).label("clicked"),
        func.count(sends.c.replied_at).label("replied"),
    )
    where = and_(sends.c.org_id == org_id, sends.c.sent_at >= start, sends.c.sent_at < end)
    if only is not None:
        where = and_(where, keys[0] == only)
    if conn.dialect.name == "postgresql" and _on_bucket(start) and _on_bucket(end):
        return _rollup_counts(conn, org_id, start, end, group=group, by=by, tz=tz, only=only)
    if conn.dialect.name == "postgresql":
        if group is None:
            q = select(literal_column("NULL").label("period"), *keys, *counts).where(where)
            q = q.group_by(*keys)
        else:
            bucket = _bucket_pg(sends.c.sent_at, group, tz).label("period")
            q = select(bucket, *keys, *counts).where(where).group_by(bucket, *keys)
        return [dict(r) for r in conn.execute(q).mappings()]
    q = select(
        sends.c.sent_at.label("period"),
        *keys,
        literal_column("1").label("sent"),
        (sends.c.bounced_at.is_not(None)).label("bounced"),
        (sends.c.opened_at.is_not(None)).label("opened"),
        (sends.c.clicked_at.is_not(None)).label("clicked"),
        (sends.c.replied_at.is_not(None)).label("replied"),
    ).where(where)
    return [dict(r) for r in conn.execute(q).mappings()]


def _on_bucket(at: datetime) -> bool:
    return at.timestamp() % ROLLUP_BUCKET_SECONDS == 0


_ROLLUP_KEYS = {
    "template": ("template_id", "template_version"),
    "user": ("user_id",),
    None: (),
}


def _rollup_counts(
    conn: Connection,
    org_id: int,
    start: datetime,
    end: datetime,
    *,
    group: str | None,
    by: str | None,
    tz: str,
    only: int | None = None,
) -> list[dict[str, Any]]:
    """:func:`email_counts` from ``send_rollup`` (PostgreSQL; period on bucket bounds).

    Sums a few rows per quarter hour instead of counting every send; the -1 of
    a missing key turns back into NULL.  Without ``by``, ``send_rollup_org`` (one
    row per org and quarter hour) answers; the A/B table (``by`` template, no
    ``group``) over at least one whole UTC day, :func:`_version_counts`.  With ``only`` the rollup's
    ``(org_id, user_id | template_id, bucket)`` indexes (0016) read that key's
    rows alone.
    """
    if group is None and by == "template" and (days := _whole_utc_days(start, end)):
        return _version_counts(conn, org_id, start, end, days, only=only)
    # The org's own report (no key, no filter) sums the org rollup (0017): one row per
    # quarter hour, where send_rollup holds about one per send when templates and
    # users vary; the zone conversion and truncation run once per quarter hour.
    r = send_rollup_org.c if by is None else send_rollup.c
    keys = [func.nullif(r[name], -1).label(name) for name in _ROLLUP_KEYS[by]]
    sums = [func.sum(r[name]).label(name) for name in _COUNTED]
    where = and_(r.org_id == org_id, r.bucket >= start, r.bucket < end)
    if only is not None:
        where = and_(where, r[_ROLLUP_KEYS[by][0]] == only)
    if group is None:
        q = select(literal_column("NULL").label("period"), *keys, *sums).where(where)
        q = q.group_by(*keys).having(func.sum(r.sent) > 0)
    else:
        bucket = _bucket_pg(r.bucket, group, tz).label("period")
        q = select(bucket, *keys, *sums).where(where).group_by(bucket, *keys)
        q = q.having(func.sum(r.sent) > 0)
    return [dict(row) for row in conn.execute(q).mappings()]


_COUNTED = ("sent", "bounced", "opened", "clicked", "replied")
_DAY = 86400


def _whole_utc_days(start: datetime, end: datetime) -> tuple[datetime, datetime] | None:
    """The first and last UTC midnight of [start, end) with a whole day between, if any."""
    first = -(-int(start.timestamp()) // _DAY) * _DAY
    last = int(end.timestamp()) // _DAY * _DAY
    if first >= last:
        return None
    return datetime.fromtimestamp(first, UTC), datetime.fromtimestamp(last, UTC)


def _version_counts(
    conn: Connection,
    org_id: int,
    start: datetime,
    end: datetime,
    days: tuple[datetime, datetime],
    *,
    only: int | None,
) -> list[dict[str, Any]]:
    """The A/B table's counts (one row per template version over [start, end)): the whole
    UTC days from ``send_rollup_version_day`` (0017), the ragged ends before the first and
    after the last UTC midnight (the period's bounds are local midnights) from
    ``send_rollup``'s quarter hours.  ~150 versions × 400 days instead of ~1 row per send."""
    first, last = days
    v, r = send_rollup_version_day.c, send_rollup.c
    whole = select(v.template_id, v.template_version, *(v[n] for n in _COUNTED)).where(
        v.org_id == org_id, v.day >= first, v.day < last
    )
    ends = select(r.template_id, r.template_version, *(r[n] for n in _COUNTED)).where(
        r.org_id == org_id,
        or_(and_(r.bucket >= start, r.bucket < first), and_(r.bucket >= last, r.bucket < end)),
    )
    if only is not None:
        whole = whole.where(v.template_id == only)
        ends = ends.where(r.template_id == only)
    both = union_all(whole, ends).subquery("both_parts")
    keys = [func.nullif(both.c[n], -1).label(n) for n in ("template_id", "template_version")]
    q = (
        select(literal_column("NULL").label("period"), *keys,
               *(func.sum(both.c[n]).label(n) for n in _COUNTED))
        .group_by(both.c.template_id, both.c.template_version)
        .having(func.sum(both.c.sent) > 0)
    )  # fmt: skip
    return [dict(row) for row in conn.execute(q).mappings()]


def received_counts(
    conn: Connection,
    org_id: int,
    start: datetime,
    end: datetime,
    *,
    group: str,
    by_user: bool,
    tz: str,
    only_user: int | None = None,
) -> list[dict[str, Any]]:
    """Incoming mail filed in [start, end), per period (and user; ``only_user``: theirs)."""
    keys = (messages.c.user_id,) if by_user else ()
    where = and_(
        messages.c.org_id == org_id,
        messages.c.direction == "incoming",
        messages.c.created_at >= start,
        messages.c.created_at < end,
    )
    if only_user is not None:
        where = and_(where, messages.c.user_id == only_user)
    if conn.dialect.name == "postgresql":
        bucket = _bucket_pg(messages.c.created_at, group, tz).label("period")
        q = (
            select(bucket, *keys, func.count().label("received"))
            .where(where)
            .group_by(bucket, *keys)
        )
    else:
        q = select(
            messages.c.created_at.label("period"), *keys, literal_column("1").label("received")
        ).where(where)
    return [dict(r) for r in conn.execute(q).mappings()]


@dataclass(frozen=True, slots=True)
class SendsSeen:
    """Which of the org's sends a viewer's no-response list may count: every send but
    those whose To or a CC sits in one of the org's ``excluded`` domains (or a
    subdomain), which are their sender's own (``sharing.involves_excluded``; seed 004).

    ``excluded`` are the org's domains as stored (normalised: lower case, IDNA).  The
    SQL compares the lower-cased To address and each CC's JSON text by its end
    (``@domain`` or ``.domain``), so ``notexample.jp`` is not ``example.jp``.
    """

    viewer_id: int
    excluded: tuple[str, ...]

    def clause(self, s=sends):
        """True for the sends of ``s`` (a ``sends`` alias) the viewer may count."""
        if not self.excluded:
            return true()
        involved = []
        for domain in self.excluded:
            for form in _domain_forms(domain):
                esc = _like_escape(form)
                for sep in ("@", "."):
                    involved.append(func.lower(s.c.to_email).like(f"%{sep}{esc}", escape="\\"))
                    involved.append(
                        func.lower(cast(s.c.cc_emails, Text)).like(f'%{sep}{esc}"%', escape="\\")
                    )
        return or_(s.c.user_id.is_(None), s.c.user_id == self.viewer_id, ~or_(*involved))


def _domain_forms(domain: str) -> list[str]:
    """The stored (IDNA) form of a domain and, for an internationalised one, its Unicode
    form: a send's address may hold either."""
    forms = [domain]
    try:
        uni = domain.encode("ascii").decode("idna")
    except UnicodeError:
        return forms
    if uni != domain:
        forms.append(uni.lower())
    return forms


def _like_escape(text_: str) -> str:
    return text_.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: Memory for the no-response grouping (PostgreSQL): a period's sends are grouped by
#: record in a hash table instead of sorted on disk (4 MB, the server default, spills
#: past ~50,000 records).
NO_RESPONSE_WORK_MEM = "32MB"
#: How long the newest-first walk may take before the grouping answers instead
#: (PostgreSQL ``statement_timeout``, in a savepoint): the walk is fast when the
#: records that did not respond are common among the newest sends (the usual case),
#: and slow when they are rare.
NO_RESPONSE_WALK_MS = 120


def no_response(
    conn: Connection,
    org_id: int,
    start: datetime,
    end: datetime,
    *,
    limit: int,
    seen: SendsSeen | None = None,
) -> list[dict[str, Any]]:
    """Leads/contacts sent mail in [start, end) with no human open, click or reply since.

    Bounced-only recipients are included (they did not respond either); the
    ``bounced`` count tells them apart.  Every send of the org counts, whoever
    sent it: sends are mail sent from the CRM, which sharing modes do not hide —
    except, with ``seen``, a send to an excluded domain, which counts for its
    sender alone (as if the others' did not exist: a record mailed only there is
    not on a colleague's list, and its address and counts are not shown).
    Newest last send first, then by record id.

    Two ways to the same rows: on PostgreSQL :func:`no_response_walk` (reads the
    newest sends first and stops at ``limit``: milliseconds however long the
    period), given :data:`NO_RESPONSE_WALK_MS`; if it needs longer, or on SQLite,
    :func:`no_response_grouped` (groups every send of the period).
    """
    if conn.dialect.name == "postgresql":
        try:
            with conn.begin_nested():  # a timeout rolls back to here, and the SET with it
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {NO_RESPONSE_WALK_MS}")
                # The walk's plan hangs on the period's bounds: a cached generic plan
                # (asyncpg prepares statements; PostgreSQL switches after five runs)
                # hash-joined every send of the period (seconds) instead of walking.
                conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
                rows = no_response_walk(conn, org_id, start, end, limit=limit, seen=seen)
                conn.exec_driver_sql("SET LOCAL statement_timeout = DEFAULT")
                conn.exec_driver_sql("SET LOCAL plan_cache_mode = DEFAULT")
            return rows
        except DBAPIError as exc:
            if "statement timeout" not in str(exc):
                raise
    return no_response_grouped(conn, org_id, start, end, limit=limit, seen=seen)


def _mailed(
    start: datetime, end: datetime, org_id: int, s=sends, seen: SendsSeen | None = None
) -> tuple:
    mailed = (
        s.c.org_id == org_id,
        s.c.sent_at >= start,
        s.c.sent_at < end,
        s.c.module.in_(("leads", "contacts")),
        s.c.record_id.is_not(None),
    )
    if seen is None or not seen.excluded:
        return mailed
    return (*mailed, seen.clause(s))


def no_response_walk(
    conn: Connection,
    org_id: int,
    start: datetime,
    end: datetime,
    *,
    limit: int,
    seen: SendsSeen | None = None,
) -> list[dict[str, Any]]:
    """:func:`no_response` newest first: each send of the period without a response
    that is its record's last in the period, kept unless another of the record's sends
    in the period got one.  Reads ``ix_sends_org_sent`` backwards and probes
    ``ix_sends_org_record`` per candidate (both index-only on PostgreSQL), so the
    work grows with how far back ``limit`` records are found, not with the period.
    With ``seen`` (an org with excluded domains), the sends the viewer may not count
    are skipped on both sides (a heap look-up per candidate and probe)."""
    other = sends.alias("other")
    hidden_other = () if seen is None or not seen.excluded else (seen.clause(other),)
    later_or_answered = exists().where(
        *hidden_other,
        other.c.org_id == org_id,
        other.c.module == sends.c.module,
        other.c.record_id == sends.c.record_id,
        other.c.sent_at >= start,
        other.c.sent_at < end,
        or_(
            other.c.sent_at > sends.c.sent_at,
            other.c.opened_at.is_not(None),
            other.c.clicked_at.is_not(None),
            other.c.replied_at.is_not(None),
        ),
    )
    found: dict[tuple[str, int], dict[str, Any]] = {}
    want = limit
    while True:
        q = (
            select(sends.c.module, sends.c.record_id, sends.c.sent_at.label("last_sent_at"))
            .where(
                *_mailed(start, end, org_id, seen=seen),
                sends.c.opened_at.is_(None),
                sends.c.clicked_at.is_(None),
                sends.c.replied_at.is_(None),
                ~later_or_answered,
            )
            .order_by(sends.c.sent_at.desc(), sends.c.record_id)
            .limit(want)
        )
        rows = conn.execute(q).mappings().all()
        found = {}
        for r in rows:  # two unanswered sends of a record at the same instant: one row
            found.setdefault((r["module"], r["record_id"]), dict(r))
        if len(found) >= limit or len(rows) < want:
            break
        want += limit
    out = list(found.values())[:limit]
    _add_counts(conn, org_id, start, end, out, seen=seen)
    _add_names(conn, org_id, out)
    return out


def no_response_grouped(
    conn: Connection,
    org_id: int,
    start: datetime,
    end: datetime,
    *,
    limit: int,
    seen: SendsSeen | None = None,
) -> list[dict[str, Any]]:
    """:func:`no_response` by grouping every send of the period by record.  The
    grouping reads only what ``ix_sends_org_sent`` carries (index-only on PostgreSQL);
    each kept record's address is read afterwards."""
    responded = func.count(sends.c.opened_at) + func.count(sends.c.clicked_at)
    responded = responded + func.count(sends.c.replied_at)
    q = (
        select(
            sends.c.module,
            sends.c.record_id,
            func.count().label("sent"),
            func.count(sends.c.bounced_at).label("bounced"),
            func.max(sends.c.sent_at).label("last_sent_at"),
        )
        .where(*_mailed(start, end, org_id, seen=seen))
        .group_by(sends.c.record_id, sends.c.module)
        .having(responded == 0)
        .order_by(func.max(sends.c.sent_at).desc(), sends.c.record_id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{NO_RESPONSE_WORK_MEM}'")
    rows = [dict(r) for r in conn.execute(q).mappings()]
    _add_counts(conn, org_id, start, end, rows, counts=False, seen=seen)
    _add_names(conn, org_id, rows)
    return rows


def _add_counts(
    conn: Connection,
    org_id: int,
    start: datetime,
    end: datetime,
    rows: list[dict[str, Any]],
    *,
    counts: bool = True,
    seen: SendsSeen | None = None,
) -> None:
    """Each record's address (the greatest ``to_email`` of its sends in the period)
    and, with ``counts``, its sends and bounces there (``ix_sends_org_record``)."""
    for module in ("leads", "contacts"):
        ids = [r["record_id"] for r in rows if r["module"] == module]
        if not ids:
            continue
        q = (
            select(
                sends.c.record_id,
                func.max(sends.c.to_email).label("email"),
                func.count().label("sent"),
                func.count(sends.c.bounced_at).label("bounced"),
            )
            .where(*_mailed(start, end, org_id, seen=seen), sends.c.module == module)
            .where(sends.c.record_id.in_(ids))
            .group_by(sends.c.record_id)
        )
        found = {r["record_id"]: r for r in conn.execute(q).mappings()}
        for r in rows:
            if r["module"] == module and r["record_id"] in found:
                got = found[r["record_id"]]
                r["email"] = got["email"]
                if counts:
                    r["sent"], r["bounced"] = int(got["sent"]), int(got["bounced"])


def _add_names(conn: Connection, org_id: int, rows: list[dict[str, Any]]) -> None:
    for module, table in (("leads", leads), ("contacts", contacts)):
        ids = [r["record_id"] for r in rows if r["module"] == module]
        if not ids:
            continue
        q = select(table.c.id, table.c.first_name, table.c.last_name).where(
            table.c.org_id == org_id, table.c.id.in_(ids)
        )
        names = {r.id: (r.last_name, r.first_name) for r in conn.execute(q)}
        for r in rows:
            if r["module"] == module and r["record_id"] in names:
                r["last_name"], r["first_name"] = names[r["record_id"]]


__all__ = [
    "append_events",
    "db_json",
    "db_time",
    "email_counts",
    "hits_since",
    "insert_hits",
    "mark_unsubscribed",
    "no_response",
    "received_counts",
    "send_for_link",
    "send_for_unsubscribe",
    "sends_for_hits",
    "SendsSeen",
    "update_send_statuses",
]
