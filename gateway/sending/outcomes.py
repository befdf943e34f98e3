"""What the relay said about a send, written down: state, status, suppressions, events.

Synchronous functions over one ``Connection`` so a batch of outcomes commits
in one transaction (``Database.run_write``).  A permanent refusal at SMTP
time (5xx) is a hard bounce that never produces a DSN, so it suppresses the
address exactly as an asynchronous hard bounce does —
:func:`record_hard_bounce_at_smtp` is shared with bounce processing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, update

from storage import sends as send_store
from storage.events import NewEvent, append_sync
from storage.schema_sending import sends
from storage.suppressions import suppress
from storage.types import utcnow

Verdict = Literal["sent", "deferred", "failed"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with a cap, and a deadline after which a send fails."""

    base: float = 60.0
    cap: float = 3600.0
    give_up_after: float = 3 * 86400.0

    def next_attempt(self, attempts: int, created_at: datetime, now: datetime) -> datetime | None:
        """When to try again after ``attempts`` tries; None once the deadline has passed."""
        if (now - created_at).total_seconds() >= self.give_up_after:
            return None
        delay = min(self.base * 2 ** max(attempts - 1, 0), self.cap)
        delay *= random.uniform(0.9, 1.1)  # noqa: S311 - spreading retries, not security
        return now + timedelta(seconds=delay)


@dataclass(slots=True)
class Delivery:
    """One attempt's result: the verdict and the relay's reply (``"421 4.3.0 …"``)."""

    send: dict[str, Any]
    verdict: Verdict
    reply: str
    code: int | None = None


def _event_data(send: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "send_id": send["id"],
        "to": send["to_email"],
        "kind": send["kind"],
        "module": send["module"],
        "record_id": send["record_id"],
        "user_id": send["user_id"],
        "message_id": send["message_id"],
        **extra,
    }


def record_hard_bounce_at_smtp(
    conn: Connection,
    send_row: dict[str, Any],
    reply: str,
    *,
    pending_events: list[NewEvent] | None = None,
) -> None:
    """The relay refused the recipient permanently: bounced (hard), suppressed, announced.

    The ``email.bounced`` event is appended at once, or added to
    ``pending_events`` when the caller appends a batch last.
    """
    now = utcnow()
    conn.execute(
        update(sends)
        .where(sends.c.id == send_row["id"])
        .values(status="bounced", bounce_type="hard", bounced_at=now)
    )
    suppress(
        conn,
        send_row["org_id"],
        send_row["to_email"].lower(),
        "hard_bounce",
        detail=reply,
        send_id=send_row["id"],
        insert_ignore=_insert_ignore(conn),
    )
    event = NewEvent(
        send_row["org_id"],
        "email.bounced",
        _event_data(send_row, type="hard", reply=reply[:500], stage="smtp"),
    )
    if pending_events is None:
        append_sync(conn, [event])
    else:
        pending_events.append(event)


def _insert_ignore(conn: Connection):
    def make(table):
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table).on_conflict_do_nothing()

    return make


def apply(
    conn: Connection, deliveries: Sequence[Delivery], now: datetime, policy: RetryPolicy
) -> None:
    """Write a batch of delivery results (one transaction for the whole batch)."""
    sent = [d for d in deliveries if d.verdict == "sent"]
    send_store.mark_sent(conn, [(d.send["id"], d.reply, now) for d in sent])
    new: list[NewEvent] = [
        NewEvent(d.send["org_id"], "email.sent", _event_data(d.send, reply=d.reply[:500]), at=now)
        for d in sent
    ]
    for d in deliveries:
        if d.verdict == "deferred":
            when = policy.next_attempt(d.send["attempts"], d.send["created_at"], now)
            if when is not None:
                send_store.mark_deferred(conn, d.send["id"], d.reply, when)
                new.append(
                    NewEvent(
                        d.send["org_id"],
                        "email.deferred",
                        _event_data(
                            d.send,
                            reply=d.reply[:500],
                            attempts=d.send["attempts"],
                            next_attempt_at=when.isoformat(),
                        ),
                        at=now,
                    )
                )
                continue
            d.reply = f"gave up after {d.send['attempts']} attempts; last reply: {d.reply}"
            d.verdict = "failed"
            d.code = None  # a deadline is not a permanent refusal: no suppression
        if d.verdict == "failed":
            send_store.mark_failed(conn, d.send["id"], d.reply)
            new.append(
                NewEvent(
                    d.send["org_id"],
                    "email.failed",
                    _event_data(d.send, reply=d.reply[:500], code=d.code),
                    at=now,
                )
            )
            if d.code is not None and 500 <= d.code < 600:
                record_hard_bounce_at_smtp(conn, d.send, d.reply, pending_events=new)
    # Events last: they take the event-log lock on PostgreSQL.
    append_sync(conn, new)
