"""What the relay said about a send, written down: state, status, bounces, alerts, events.

Synchronous functions over one ``Connection`` so a group of outcomes commits
in one transaction (``Database.run_write``).  Which SMTP stage a permanent
refusal (5xx) came at decides what it means:

- the reply to ``RCPT``, or after ``DATA`` naming the recipient, is about the
  recipient: the send fails and it is a bounce that never produces a DSN, hard
  or soft by the same policy as an asynchronous one
  (:func:`record_bounce_at_smtp`, shared with bounce processing);
- anything else -- the greeting, ``AUTH`` (530), ``MAIL FROM`` (553), or a
  refusal after ``DATA`` that does not name the recipient -- is the relay
  refusing *us*.  Suppressing the recipients would wipe a whole list for a
  wrong password, so nobody is: the send waits for the operator (retried until
  the deadline) or, after ``DATA``, fails, and a ``relay.refused`` alert says why.
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

from gateway.bounces import reasons
from gateway.bounces.addresses import comparable
from storage import sends, suppressions
from storage.events import EventType, NewEvent, append_sync
from storage.payloads import REPLY_LIMIT, relay_refused, send_event, send_fields


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


class Stage(StrEnum):
    """Where in the SMTP session the relay answered."""

    SESSION = "session"  # the greeting, EHLO, STARTTLS, AUTH
    SENDER = "sender"  # MAIL FROM
    RECIPIENT = "recipient"  # RCPT TO
    DATA = "data"  # the reply to the message


@dataclass(slots=True)
class Delivery:
    """One attempt's result: the verdict, the relay's reply (``"421 4.3.0 …"``) and its stage."""

    send: dict[str, Any]
    verdict: Verdict
    reply: str
    code: int | None = None
    stage: Stage | None = None
    #: The CC addresses the relay accepted (None: not known, take the send's ``cc_emails``).
    cc: list[str] | None = None

    @property
    def permanent(self) -> bool:
        return self.code is not None and 500 <= self.code < 600

    @property
    def about_recipient(self) -> bool:
        """A reply to ``RCPT``, or one after ``DATA`` that names the recipient's address."""
        if self.stage is Stage.RECIPIENT:
            return True
        if self.stage is not Stage.DATA:
            return False
        to = comparable(self.send["to_email"])
        return to in self.reply.lower() or self.send["to_email"].lower() in self.reply.lower()

    @property
    def refused_us(self) -> bool:
        """A permanent refusal of our session, sender or message: not the recipient's fault."""
        return self.permanent and not self.about_recipient


def claim(
    conn: Connection, now: datetime, limit: int, lease: timedelta
) -> tuple[list[dict[str, Any]], int]:
    """Claim due sends, and fail those whose address was suppressed since they were queued.

    The send API checks suppressions at enqueue, but a send deferred or retried
    for hours must not go out to an address that hard-bounced or complained in
    the meantime: it fails here with the suppression's reason and an
    ``email.failed``.  Returns the sends to deliver and how many were claimed.
    """
    rows = sends.claim_due(conn, now, limit, lease)
    by_org: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_org.setdefault(row["org_id"], []).append(row)
    stopped: dict[int, str] = {}
    for org_id, org_rows in by_org.items():
        addresses = {comparable(r["to_email"]) for r in org_rows}
        addresses |= {comparable(c) for r in org_rows for c in r.get("cc_emails") or ()}
        found = suppressions.suppressed_among(conn, org_id, addresses)
        for row in org_rows:
            reason = found.get(comparable(row["to_email"]))
            if reason is not None:
                stopped[row["id"]] = f"not sent: the address is suppressed ({reason})"
            elif row.get("cc_emails"):  # a CC suppressed since: left out, the rest goes
                row["cc_emails"] = [c for c in row["cc_emails"] if comparable(c) not in found]
    if stopped:
        sends.mark_suppressed(conn, list(stopped.items()))
        append_sync(
            conn,
            [
                send_event(EventType.EMAIL_FAILED, r, at=now, reply=stopped[r["id"]], code=None)
                for r in rows
                if r["id"] in stopped
            ],
        )
    return [r for r in rows if r["id"] not in stopped], len(rows)


def record_bounce_at_smtp(
    conn: Connection,
    send_row: dict[str, Any],
    reply: str,
    *,
    pending_events: list[NewEvent] | None = None,
) -> str:
    """The relay refused the recipient permanently: a bounce, judged and handled like all.

    Hard or soft by the bounce policy (:func:`gateway.bounces.reasons.decide`):
    an unknown user is hard, a full mailbox (552) or a policy refusal (554
    5.7.1) soft.  It goes through bounce processing's
    :func:`~gateway.bounces.process.apply_bounce` (recorded in ``bounces``, send
    marked bounced, ``email.bounced`` announced; the suppression consumer
    decides the rest).  The event is appended at once, or added to
    ``pending_events`` when the caller appends a batch last.  Returns the kind.
    """
    from gateway.bounces.process import apply_bounce

    found = _ENHANCED.search(reply)
    status = found.group(0) if found else ""
    reply_code = reply[:3] if reply[:3].isdigit() else ""
    reason, kind = reasons.decide(status, reply_code, reply[4:], permanent=True)
    email = comparable(send_row["to_email"])
    new = apply_bounce(
        conn,
        org_id=send_row["org_id"],
        send=send_row,
        email=email,
        kind=kind,
        status=status,
        reply_code=reply_code,
        reason=reason,
        diagnostic=reply,
        matched_by="smtp",
        reported_email=email,
        event_extra=send_fields(send_row)
        | {"type": kind, "reply": reply[:REPLY_LIMIT], "stage": "smtp"},
    )
    if pending_events is None:
        append_sync(conn, new)
    else:
        pending_events.extend(new)
    return kind


_ENHANCED = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


def apply(
    conn: Connection, deliveries: Sequence[Delivery], now: datetime, policy: RetryPolicy
) -> None:
    """Write a group of delivery results in the caller's transaction.

    The relay commits its outcomes in small groups as they come in, so what the
    relay accepted is on record soon after, not once a whole claimed batch is
    through.  One UPDATE per outcome kind, then every event in one insert: a
    relay outage turns a group into deferrals, and that must cost no more than
    a group of successes.  A relay refusing us raises one ``relay.refused`` per
    org, stage and reply in the group, not one per send.
    """
    sent: list[tuple[int, str]] = []
    deferred: list[tuple[int, str, datetime]] = []
    failed: list[tuple[int, str]] = []
    bounced: list[Delivery] = []
    refusals: dict[tuple[int, Stage | None, str], list[Delivery]] = {}
    new: list[NewEvent] = []
    for d in deliveries:
        send = d.send
        if d.verdict is Verdict.SENT:
            sent.append((send["id"], d.reply))
            cc = d.cc if d.cc is not None else list(send.get("cc_emails") or ())
            new.append(send_event(EventType.EMAIL_SENT, send, at=now, reply=d.reply, cc=cc))
            continue
        if d.refused_us:
            refusals.setdefault((send["org_id"], d.stage, d.reply), []).append(d)
            if d.stage is not Stage.DATA:  # the operator's to fix: the mail waits for it
                d.verdict = Verdict.DEFERRED
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
            d.code = None  # a deadline is not a permanent refusal: no bounce
        failed.append((send["id"], d.reply))
        new.append(send_event(EventType.EMAIL_FAILED, send, at=now, reply=d.reply, code=d.code))
        if d.permanent and d.about_recipient:
            bounced.append(d)
    sends.mark_sent(conn, sent, now)
    sends.mark_deferred(conn, deferred)
    sends.mark_failed(conn, failed)
    for d in bounced:  # after mark_failed: the bounce sets status "bounced" over "failed"
        record_bounce_at_smtp(conn, d.send, d.reply, pending_events=new)
    for (org_id, stage, reply), group in refusals.items():
        new.append(
            relay_refused(
                org_id,
                stage=str(stage or Stage.SESSION),
                code=group[0].code,
                reply=reply,
                send_ids=[d.send["id"] for d in group],
                action="failed" if stage is Stage.DATA else "deferred",
                at=now,
            )
        )
    # Events last: they take the event-log lock on PostgreSQL.
    append_sync(conn, new)
