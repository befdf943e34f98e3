"""What the relay said about a send, written down: state, status, suppressions, events.

Synchronous functions over one ``Connection`` so a group of outcomes commits
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
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection

from storage import sends as send_store
from storage.events import EventType, NewEvent, append_sync
from storage.payloads import REPLY_LIMIT, send_event, send_fields


class Verdict(StrEnum):
    """What one attempt came to: accepted, to be retried, or given up on."""

    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"


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
        event_extra=send_fields(send_row)
        | {"type": "hard", "reply": reply[:REPLY_LIMIT], "stage": "smtp"},
    )
    if pending_events is None:
        append_sync(conn, new)
    else:
        pending_events.extend(new)


_ENHANCED = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


def apply(
    conn: Connection, deliveries: Sequence[Delivery], now: datetime, policy: RetryPolicy
) -> None:
    """Write a group of delivery results in the caller's transaction.

    The relay commits its outcomes in small groups as they come in, so what the
    relay accepted is on record soon after, not once a whole claimed batch is
    through.  One UPDATE per outcome kind, then every event in one insert: a
    relay outage turns a group into deferrals, and that must cost no more than
    a group of successes.
    """
    sent: list[tuple[int, str]] = []
    deferred: list[tuple[int, str, datetime]] = []
    failed: list[tuple[int, str]] = []
    bounced: list[Delivery] = []
    new: list[NewEvent] = []
    for d in deliveries:
        send = d.send
        if d.verdict is Verdict.SENT:
            sent.append((send["id"], d.reply))
            new.append(send_event(EventType.EMAIL_SENT, send, at=now, reply=d.reply))
            continue
        if d.verdict is Verdict.DEFERRED:
            when = policy.next_attempt(send["attempts"], send["created_at"], now)
            if when is not None:
                deferred.append((send["id"], d.reply, when))
                new.append(
                    send_event(
                        EventType.EMAIL_DEFERRED,
                        send,
                        at=now,
                        reply=d.reply,
                        attempts=send["attempts"],
                        next_attempt_at=when.isoformat(),
                    )
                )
                continue
            d.reply = f"gave up after {send['attempts']} attempts; last reply: {d.reply}"
            d.verdict = Verdict.FAILED
            d.code = None  # a deadline is not a permanent refusal: no suppression
        failed.append((send["id"], d.reply))
        new.append(send_event(EventType.EMAIL_FAILED, send, at=now, reply=d.reply, code=d.code))
        if d.code is not None and 500 <= d.code < 600:
            bounced.append(d)
    send_store.mark_sent(conn, sent, now)
    send_store.mark_deferred(conn, deferred)
    send_store.mark_failed(conn, failed)
    for d in bounced:  # after mark_failed: the bounce sets status "bounced" over "failed"
        record_hard_bounce_at_smtp(conn, d.send, d.reply, pending_events=new)
    # Events last: they take the event-log lock on PostgreSQL.
    append_sync(conn, new)
