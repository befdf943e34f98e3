"""SQL of webhooks: endpoints, their delivery queues, and the claim one deliverer holds.

Queueing (the ``webhooks`` consumer, :data:`FANOUT`) inserts deliveries
insert-or-ignore on (webhook, event) in the consumer's own transaction, so
each event is queued once per endpoint however often a round is retried.

Delivering: an endpoint is claimed whole under a lease (``claimed_until``;
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, SQLite's single writer otherwise),
so only one deliverer posts to it at a time and its events go out in order.
Deliveries go in id order, each only once its ``next_attempt_at`` has come:
a failing head holds the endpoint back.  The deliverer reads them in batches
(:func:`due_batch`) and writes 2xx in groups (:func:`record_delivered`).
Each outcome is written only while the writer still holds the claim
(``claimed_until`` is the value it set), so a deliverer whose lease ran out
cannot overwrite the work of the one that took over.

Creating an endpoint holds the fan-out consumer's offset row
(:func:`storage.consumers.hold`) while it reads the log's last id: a fan-out
round in progress finishes first, a later one sees the new endpoint, so no
event after ``after_event_id`` can slip past it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from storage import consumers, events
from storage.events import Event
from storage.inserts import insert_ignore
from storage.schema import events as events_table
from storage.schema_webhooks import webhook_deliveries as deliveries
from storage.schema_webhooks import webhooks

#: The fan-out consumer's name (its ``consumer_offsets`` key).
FANOUT = "webhooks"
#: Attempts kept in a delivery's ``log`` (the oldest are dropped past it).
LOG_LIMIT = 50

VIEW_COLUMNS = (
    webhooks.c.id,
    webhooks.c.url,
    webhooks.c.events,
    webhooks.c.state,
    webhooks.c.failing_since,
    webhooks.c.disabled_at,
    webhooks.c.last_error,
    webhooks.c.created_at,
)


# -- endpoints (the API) --------------------------------------------------------


def create(
    conn: Connection,
    *,
    org_id: int,
    url: str,
    types: Sequence[str],
    secret: str,
    created_by: int | None,
    now: datetime,
) -> int:
    """A new active endpoint that gets the events appended after this moment; its id."""
    consumers.hold(conn, FANOUT, now)
    after = events.last_id(conn)
    res = conn.execute(
        insert(webhooks)
        .values(
            org_id=org_id,
            url=url,
            events=list(types),
            secret=secret,
            state="active",
            created_by=created_by,
            created_at=now,
            after_event_id=after,
        )
        .returning(webhooks.c.id)
    )
    return res.scalar_one()


def get(conn: Connection, org_id: int, webhook_id: int) -> dict[str, Any] | None:
    """One endpoint of the org, without its secrets."""
    q = select(*VIEW_COLUMNS).where(webhooks.c.org_id == org_id, webhooks.c.id == webhook_id)
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def list_page(conn: Connection, org_id: int, *, after: int, limit: int) -> list[dict[str, Any]]:
    """The org's endpoints with id > ``after`` in id order, without their secrets."""
    q = (
        select(*VIEW_COLUMNS)
        .where(webhooks.c.org_id == org_id, webhooks.c.id > after)
        .order_by(webhooks.c.id)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


def change(
    conn: Connection, org_id: int, webhook_id: int, values: dict[str, Any], now: datetime
) -> bool:
    """Set ``url`` / ``events``; False when the org has no such endpoint.

    A type newly subscribed to starts at the log's last id (``since``): the
    events of that type from before are not queued, now nor on a replay.
    """
    if not values:
        return get(conn, org_id, webhook_id) is not None
    if "events" in values:
        found = conn.execute(
            select(webhooks.c.events, webhooks.c.since).where(
                webhooks.c.org_id == org_id, webhooks.c.id == webhook_id
            )
        ).first()
        if found is None:
            return False
        added = set(values["events"]) - set(found.events or ())
        if added:
            consumers.hold(conn, FANOUT, now)  # no fan-out round straddles the change
            last = events.last_id(conn)
            values = {**values, "since": {**(found.since or {}), **dict.fromkeys(added, last)}}
    res = conn.execute(
        update(webhooks)
        .where(webhooks.c.org_id == org_id, webhooks.c.id == webhook_id)
        .values(**values)
    )
    return res.rowcount == 1


def enable(conn: Connection, org_id: int, webhook_id: int, now: datetime) -> bool:
    """A disabled endpoint is active again; its kept deliveries are due at once, in order.

    The failure clock starts over (``failing_since`` cleared) and the head's
    backoff is lifted, so delivery resumes without waiting out the old delay.
    An endpoint already active is left as it is (a turn may hold it).
    """
    consumers.hold(conn, FANOUT, now)  # no fan-out round straddles the switch
    last = events.last_id(conn)
    types = conn.execute(
        select(webhooks.c.events).where(webhooks.c.org_id == org_id, webhooks.c.id == webhook_id)
    ).scalar()
    res = conn.execute(
        update(webhooks)
        .where(
            webhooks.c.org_id == org_id, webhooks.c.id == webhook_id, webhooks.c.state != "active"
        )
        .values(
            state="active",
            disabled_at=None,
            failing_since=None,
            claimed_until=None,
            # What happened while it was disabled is not queued, now nor on a replay.
            since=dict.fromkeys(types or (), last),
        )
    )
    if res.rowcount != 1:
        return get(conn, org_id, webhook_id) is not None
    conn.execute(
        update(deliveries)
        .where(deliveries.c.webhook_id == webhook_id, deliveries.c.state == "pending")
        .where(deliveries.c.next_attempt_at > now)
        .values(next_attempt_at=now)
    )
    return True


def disable_by_hand(conn: Connection, org_id: int, webhook_id: int, now: datetime) -> bool:
    """An admin pauses the endpoint: nothing is queued or sent until it is enabled."""
    res = conn.execute(
        update(webhooks)
        .where(
            webhooks.c.org_id == org_id, webhooks.c.id == webhook_id, webhooks.c.state == "active"
        )
        .values(state="disabled", disabled_at=now, claimed_until=None)
    )
    return res.rowcount == 1 or get(conn, org_id, webhook_id) is not None


def rotate_secret(
    conn: Connection, org_id: int, webhook_id: int, secret: str, keep_old_until: datetime
) -> bool:
    """A new signing secret; the old one signs too until ``keep_old_until``."""
    res = conn.execute(
        update(webhooks)
        .where(webhooks.c.org_id == org_id, webhooks.c.id == webhook_id)
        .values(
            secret=secret,
            previous_secret=webhooks.c.secret,
            previous_secret_until=keep_old_until,
        )
    )
    return res.rowcount == 1


def remove(conn: Connection, org_id: int, webhook_id: int, now: datetime) -> bool:
    """Delete an endpoint and its deliveries; False when the org has no such endpoint.

    Holds the fan-out offset first, so no fan-out round is queueing for it meanwhile.
    """
    if get(conn, org_id, webhook_id) is None:
        return False
    consumers.hold(conn, FANOUT, now)
    conn.execute(delete(deliveries).where(deliveries.c.webhook_id == webhook_id))
    conn.execute(delete(webhooks).where(webhooks.c.org_id == org_id, webhooks.c.id == webhook_id))
    return True


def delivery_page(
    conn: Connection, org_id: int, webhook_id: int, *, after: int, limit: int
) -> list[dict[str, Any]]:
    """An endpoint's deliveries with id > ``after``, in event order (its delivery log)."""
    q = (
        select(deliveries)
        .where(
            deliveries.c.org_id == org_id,
            deliveries.c.webhook_id == webhook_id,
            deliveries.c.id > after,
        )
        .order_by(deliveries.c.id)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


# -- fan-out (the consumer) -----------------------------------------------------


def active_endpoints(conn: Connection, org_id: int) -> list[tuple[int, dict[str, int]]]:
    """(id, {subscribed type: the event id its subscription starts after}) of the org's
    active endpoints."""
    q = select(webhooks.c.id, webhooks.c.events, webhooks.c.after_event_id, webhooks.c.since).where(
        webhooks.c.org_id == org_id, webhooks.c.state == "active"
    )
    return [
        (r.id, {t: max(r.after_event_id, (r.since or {}).get(t, 0)) for t in r.events or ()})
        for r in conn.execute(q)
    ]


def queue(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert deliveries (org_id, webhook_id, event_id, event_type, next_attempt_at, created_at)
    unless that endpoint already has that event."""
    if rows:
        conn.execute(insert_ignore(deliveries, conn.dialect.name), list(rows))


# -- delivering (the runner) ----------------------------------------------------


def _head_id(webhook_id: Any):
    """The id of the endpoint's oldest pending delivery (its own alias: it nests)."""
    queued = deliveries.alias("queued")
    return (
        select(func.min(queued.c.id))
        .where(queued.c.webhook_id == webhook_id, queued.c.state == "pending")
        # Explicit: auto-correlation only looks one level up, and this sits two levels
        # below ``webhooks`` in :func:`_claimable` (it would take every endpoint's min).
        .correlate(webhooks)
        .scalar_subquery()
    )


def _claimable(now: datetime):
    """Active, unclaimed (or lease run out), and its head delivery due."""
    head_due = exists().where(
        deliveries.c.webhook_id == webhooks.c.id,
        deliveries.c.id == _head_id(webhooks.c.id),
        deliveries.c.next_attempt_at <= now,
    )
    return and_(
        webhooks.c.state == "active",
        or_(webhooks.c.claimed_until.is_(None), webhooks.c.claimed_until < now),
        head_due,
    )


def any_due(conn: Connection, now: datetime) -> bool:
    """Whether some endpoint could be claimed now (a read, before taking the writer)."""
    return conn.execute(select(exists().where(_claimable(now)))).scalar() or False


def claim_due(
    conn: Connection, now: datetime, limit: int, lease: timedelta
) -> list[dict[str, Any]]:
    """Claim up to ``limit`` endpoints with a due head, under a lease until ``now + lease``.

    Returns each one's id, org_id, url, secrets to sign with and ``claimed_until``.
    """
    # Oldest queued head first: endpoints are served in the order their events came.
    pick = (
        select(webhooks.c.id)
        .where(_claimable(now))
        .order_by(_head_id(webhooks.c.id), webhooks.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    ids = list(conn.execute(pick).scalars())
    if not ids:
        return []
    until = now + lease
    stmt = (
        update(webhooks)
        .where(webhooks.c.id.in_(ids), _claimable(now))
        .values(claimed_until=until)
        .returning(
            webhooks.c.id,
            webhooks.c.org_id,
            webhooks.c.url,
            webhooks.c.secret,
            webhooks.c.previous_secret,
            webhooks.c.previous_secret_until,
            webhooks.c.claimed_until,
        )
    )
    rows = [dict(r) for r in conn.execute(stmt).mappings()]
    rows.sort(key=lambda r: r["id"])
    return rows


def _held(webhook_id: int, claimed_until: datetime):
    return and_(webhooks.c.id == webhook_id, webhooks.c.claimed_until == claimed_until)


def due_batch(
    conn: Connection, webhook_id: int, now: datetime, *, after: int, limit: int
) -> list[tuple[dict[str, Any], Event]]:
    """The endpoint's next pending deliveries after id ``after``, with their events, in order.

    One query for up to ``limit`` of them; the batch stops before the first
    one not yet due (a waiting delivery holds back those after it).  With
    ``after`` the last id this turn posted, the first row is the head.
    """
    q = (
        select(deliveries, events_table.c.type.label("ev_type"), events_table.c.at.label("ev_at"))
        .add_columns(events_table.c.org_id.label("ev_org"), events_table.c.data.label("ev_data"))
        .join(events_table, events_table.c.id == deliveries.c.event_id)
        .where(
            deliveries.c.webhook_id == webhook_id,
            deliveries.c.state == "pending",
            deliveries.c.id > after,
        )
        .order_by(deliveries.c.id)
        .limit(limit)
    )
    found: list[tuple[dict[str, Any], Event]] = []
    for row in conn.execute(q).mappings():
        if row["next_attempt_at"] > now:
            break
        event = Event(row["event_id"], row["ev_type"], row["ev_at"], row["ev_org"], row["ev_data"])
        found.append((dict(row), event))
    return found


def _count_attempt(
    conn: Connection,
    delivery: dict[str, Any],
    at: datetime,
    status: int | None,
    entry: dict[str, Any],
    **outcome: Any,
) -> None:
    """One more attempt on a pending delivery, its log entry appended (the last 50 kept)."""
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery["id"], deliveries.c.state == "pending")
        .values(
            attempts=deliveries.c.attempts + 1,
            last_status=status,
            last_attempt_at=at,
            log=[*(delivery["log"] or []), entry][-LOG_LIMIT:],
            **outcome,
        )
    )


#: Marks one pending delivery delivered (run once per row of a group: one executemany).
_MARK_DELIVERED = (
    update(deliveries)
    .where(deliveries.c.id == bindparam("d_id"), deliveries.c.state == "pending")
    .values(
        state="delivered",
        attempts=deliveries.c.attempts + 1,
        last_status=bindparam("d_status"),
        last_attempt_at=bindparam("d_at"),
        delivered_at=bindparam("d_at"),
        last_error=None,
        log=bindparam("d_log", type_=deliveries.c.log.type),
    )
)


@dataclass(frozen=True, slots=True)
class Delivered:
    """A 2xx not yet written: which delivery, when it was answered, and its log entry."""

    delivery: dict[str, Any]
    at: datetime
    status: int
    entry: dict[str, Any]


def record_delivered(
    conn: Connection,
    *,
    webhook_id: int,
    held: datetime,
    group: Sequence[Delivered],
    renew_to: datetime,
) -> bool:
    """A group of 2xx: each delivery done, the endpoint no longer failing, its claim renewed.

    Two statements for the whole group (the claim check with its renewal, and
    one executemany).  False (nothing written) when the claim is no longer held.
    """
    res = conn.execute(
        update(webhooks)
        .where(_held(webhook_id, held))
        .values(failing_since=None, last_error=None, claimed_until=renew_to)
    )
    if res.rowcount != 1:
        return False
    if group:
        conn.execute(
            _MARK_DELIVERED,
            [
                {
                    "d_id": d.delivery["id"],
                    "d_status": d.status,
                    "d_at": d.at,
                    "d_log": [*(d.delivery["log"] or []), d.entry][-LOG_LIMIT:],
                }
                for d in group
            ],
        )
    return True


def record_failed(
    conn: Connection,
    delivery: dict[str, Any],
    *,
    held: datetime,
    at: datetime,
    status: int | None,
    error: str,
    next_attempt_at: datetime,
    entry: dict[str, Any],
) -> datetime | None:
    """A failed attempt: the head waits until ``next_attempt_at``, the claim is let go.

    Returns when the endpoint's current run of failures began (None: not held).
    """
    q = select(webhooks.c.failing_since).where(_held(delivery["webhook_id"], held))
    found = conn.execute(q).first()
    if found is None:
        return None
    since = found.failing_since or at
    conn.execute(
        update(webhooks)
        .where(_held(delivery["webhook_id"], held))
        .values(failing_since=since, last_error=error, claimed_until=None)
    )
    _count_attempt(
        conn, delivery, at, status, entry, last_error=error, next_attempt_at=next_attempt_at
    )
    return since


def disable(conn: Connection, webhook_id: int, at: datetime) -> int | None:
    """Disable a still active endpoint; how many deliveries it has pending (None: was not)."""
    res = conn.execute(
        update(webhooks)
        .where(webhooks.c.id == webhook_id, webhooks.c.state == "active")
        .values(state="disabled", disabled_at=at, claimed_until=None)
    )
    if res.rowcount != 1:
        return None
    q = select(func.count()).where(
        deliveries.c.webhook_id == webhook_id, deliveries.c.state == "pending"
    )
    return conn.execute(q).scalar_one()


def release(conn: Connection, held: Iterable[tuple[int, datetime]]) -> None:
    """Let go of claims still held (a clean stop, or the end of an endpoint's turn)."""
    for webhook_id, until in held:
        conn.execute(update(webhooks).where(_held(webhook_id, until)).values(claimed_until=None))
