"""What the relay said about a send, written down: state, status, suppressions, events.

Synchronous functions over one ``Connection`` so a batch of outcomes commits
in one transaction (``Database.run_write``).  A permanent refusal at SMTP
time (5xx) is a hard bounce that never produces a DSN, so it suppresses the
address exactly as an asynchronous hard bounce does —
:func:`record_hard_bounce_at_smtp` is shared with bounce processing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection

from storage import sends as send_store
from storage.events import NewEvent, append_sync

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
    """The relay refused the recipient permanently: one more hard bounce, handled like all.

    It goes through bounce processing's :func:`~gateway.bounces.process.apply_bounce`
    (recorded in ``bounces``, send marked bounced/hard, address suppressed,
    ``email.bounced`` announced).  The event is appended at once, or added to
    ``pending_events`` when the caller appends a batch last.
    """
    from gateway.bounces.process import Policy, apply_bounce

    status = _ENHANCED.search(reply)
    new = apply_bounce(
        conn,
        org_id=send_row["org_id"],
        send=send_row,
        email=send_row["to_email"].lower(),
        kind="hard",
        policy=Policy(mail_domain=""),
        status=status.group(0) if status else "",
        reply_code=reply[:3] if reply[:3].isdigit() else "",
        reason="refused_at_smtp",
        diagnostic=reply,
        matched_by="smtp",
        reported_email=send_row["to_email"].lower(),
        event_extra=_event_data(send_row, type="hard", reply=reply[:500], stage="smtp"),
    )
    if pending_events is None:
        append_sync(conn, new)
    else:
        pending_events.extend(new)


_ENHANCED = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


def apply(
    conn: Connection, deliveries: Sequence[Delivery], now: datetime, policy: RetryPolicy
) -> None:
    """Write a batch of delivery results (one transaction for the whole batch).

    One executemany UPDATE per outcome kind, then every event in one insert:
    a relay outage turns a whole batch into deferrals, and that must cost no
    more than a batch of successes.
    """
    sent: list[tuple[int, str]] = []
    deferred: list[tuple[int, str, datetime]] = []
    failed: list[tuple[int, str]] = []
    bounced: list[Delivery] = []
    new: list[NewEvent] = []
    for d in deliveries:
        send = d.send
        if d.verdict == "sent":
            sent.append((send["id"], d.reply))
            new.append(
                NewEvent(
                    send["org_id"], "email.sent", _event_data(send, reply=d.reply[:500]), at=now
                )
            )
            continue
        if d.verdict == "deferred":
            when = policy.next_attempt(send["attempts"], send["created_at"], now)
            if when is not None:
                deferred.append((send["id"], d.reply, when))
                data = _event_data(
                    send,
                    reply=d.reply[:500],
                    attempts=send["attempts"],
                    next_attempt_at=when.isoformat(),
                )
                new.append(NewEvent(send["org_id"], "email.deferred", data, at=now))
                continue
            d.reply = f"gave up after {send['attempts']} attempts; last reply: {d.reply}"
            d.verdict = "failed"
            d.code = None  # a deadline is not a permanent refusal: no suppression
        failed.append((send["id"], d.reply))
        data = _event_data(send, reply=d.reply[:500], code=d.code)
        new.append(NewEvent(send["org_id"], "email.failed", data, at=now))
        if d.code is not None and 500 <= d.code < 600:
            bounced.append(d)
    send_store.mark_sent(conn, sent, now)
    send_store.mark_deferred(conn, deferred)
    send_store.mark_failed(conn, failed)
    for d in bounced:  # after mark_failed: the bounce sets status "bounced" over "failed"
        record_hard_bounce_at_smtp(conn, d.send, d.reply, pending_events=new)
    # Events last: they take the event-log lock on PostgreSQL.
    append_sync(conn, new)
