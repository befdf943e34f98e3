"""From a recognised report to a record: tie it to a send, record it, emit its event.

The order of attribution follows Mailman: the VERP token of the address the
bounce came to; else our ``X-Mailgate-Send`` header or the Message-ID found in
the returned original; else the latest send to the bounced address.  What
cannot be recognised or attributed is kept (``inbound.state = 'held'``) for an
operator, never deleted.  Suppressing the address is not done here: the
suppression consumer (:mod:`sync.suppression`) decides it from the event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from gateway.bounces import BounceKind, BounceReport, classify, verp_token
from gateway.ingest.parse import parse
from storage import bounce_store, events, tracking_store
from storage.events import NewEvent
from storage.payloads import bounce_event
from tracking.unsubscribe import apply_unsubscribe

RECIPIENT_LOOKBACK = timedelta(days=30)


@dataclass
class Policy:
    """How bounce mail is read: the domain of our VERP return paths."""

    mail_domain: str


@dataclass
class Outcome:
    state: str  # done | held
    note: str
    org_id: int | None = None
    recorded: list[dict[str, Any]] = field(default_factory=list)


def find_send(
    conn: Connection, report: BounceReport, rcpt_to: list[str], mail_domain: str
) -> tuple[dict[str, Any] | None, str]:
    for address in rcpt_to:
        token = verp_token(address, mail_domain)
        if token:
            send = bounce_store.send_by_verp(conn, token)
            if send:
                return send, "verp"
    header = (report.original_headers.get("X-Mailgate-Send") or "").strip()
    if header.isdigit():
        send = bounce_store.send_by_id(conn, int(header))
        if send:
            return send, "header"
    if report.original_message_id:
        send = bounce_store.send_by_message_id(conn, report.original_message_id.strip("<>"))
        if send:
            return send, "message_id"
    since = bounce_store.now() - RECIPIENT_LOOKBACK
    for r in report.recipients:
        send = bounce_store.recent_send_to(conn, r.email, since)
        if send:
            return send, "recipient"
    return None, ""


def apply_bounce(
    conn: Connection,
    *,
    org_id: int,
    send: dict[str, Any] | None,
    email: str,
    kind: str,
    policy: Policy | None = None,
    status: str = "",
    reply_code: str = "",
    reason: str = "",
    diagnostic: str = "",
    feedback_type: str = "",
    matched_by: str = "",
    inbound_id: int | None = None,
    reported_email: str = "",
    event_extra: dict[str, Any] | None = None,
) -> list[NewEvent]:
    """Record one hard/soft bounce or complaint; returns the event to emit (the caller appends).

    Recording is all it does: the ``bounces`` row, the send's status, and an
    ``email.bounced`` / ``email.complained`` event.  Whether the address is
    suppressed is decided by the suppression consumer (:mod:`sync.suppression`)
    reading that event, as Mailman's BounceRunner records and a separate
    processor disables.  ``policy`` is no longer read here; it stays accepted
    for callers written before the split.
    """
    del policy
    now = bounce_store.now()
    send_id = send["id"] if send else None
    bounce_store.record(
        conn,
        org_id=org_id,
        inbound_id=inbound_id,
        send_id=send_id,
        email_norm=email,
        reported_email=reported_email[:320],
        kind=kind,
        status=status[:12],
        reply_code=reply_code[:3],
        reason=reason[:40],
        feedback_type=feedback_type[:40],
        diagnostic=diagnostic[:2000],
        matched_by=matched_by,
        at=now,
    )
    if send_id:
        if kind == "complaint":
            bounce_store.mark_send(conn, send_id, status="complained", complained_at=now)
        else:
            bounce_store.mark_send(
                conn, send_id, status="bounced", bounce_type=kind, bounced_at=now
            )
    event = bounce_event(
        org_id,
        send=send,
        email=email,
        kind=kind,
        at=now,
        status=status,
        reply_code=reply_code,
        reason=reason,
        diagnostic=diagnostic,
        feedback_type=feedback_type,
        matched_by=matched_by,
        extra=event_extra,
    )
    return [event]


def _targets(report: BounceReport, send: dict[str, Any], matched_by: str):
    """(address, report entry) pairs to act on.

    A VERP address names exactly one send, so exactly its recipient, whatever
    the report lists (a redacted complaint lists nobody).  Otherwise every
    recipient the report names, each checked against the send it matched.
    """
    by_email = {r.email: r for r in report.recipients}
    if matched_by == "verp" or not report.recipients:
        entry = by_email.get(send["to_email"]) or (
            report.recipients[0] if report.recipients else None
        )
        return [(send["to_email"], entry)]
    return list(by_email.items())


def _mailto_unsubscribe(conn: Connection, row: dict[str, Any], policy: Policy) -> Outcome | None:
    """A recipient used the ``mailto:`` of List-Unsubscribe (subject "unsubscribe")."""
    subject = parse(row["raw"]).subject.lower()
    if "unsubscribe" not in subject and "配信停止" not in subject:
        return None
    for address in row["rcpt_to"] or []:
        token = verp_token(address, policy.mail_domain)
        send = bounce_store.send_by_verp(conn, token) if token else None
        if send:
            full = tracking_store.send_for_unsubscribe(conn, send["id"])
            apply_unsubscribe(conn, full, "mailto")
            return Outcome("done", "unsubscribe by mailto", org_id=send["org_id"])
    return None


def process_one(conn: Connection, row: dict[str, Any], policy: Policy) -> Outcome:
    report = classify(row["raw"])
    if report.kind in (BounceKind.UNRECOGNISED, BounceKind.AUTOREPLY):
        done = _mailto_unsubscribe(conn, row, policy)
        if done is not None:
            return done
    if report.kind in (BounceKind.UNRECOGNISED,):
        return Outcome("held", f"unrecognised: {report.reason}"[:500])
    if report.kind == BounceKind.AUTOREPLY:
        return Outcome("done", "auto-reply (not a bounce)")
    send, matched_by = find_send(conn, report, row["rcpt_to"] or [], policy.mail_domain)
    if send is None:
        return Outcome("held", f"{report.kind.value}: no send found for it")
    org_id = send["org_id"]
    new_events: list[NewEvent] = []
    outcome = Outcome("done", f"{report.kind.value} via {matched_by}", org_id=org_id)
    for email, r in _targets(report, send, matched_by):
        if report.kind == BounceKind.COMPLAINT:
            kind = "complaint"
        elif r is not None and r.severity in ("hard", "soft"):
            kind = r.severity
        else:
            kind = "hard" if report.kind == BounceKind.HARD else "soft"
        new_events += apply_bounce(
            conn,
            org_id=org_id,
            send=send if email == send["to_email"] else None,
            email=email,
            kind=kind,
            policy=policy,
            status=r.status if r else "",
            reply_code=r.reply_code if r else "",
            reason=r.reason if r else "",
            diagnostic=r.diagnostic if r else "",
            feedback_type=report.feedback_type,
            matched_by=matched_by,
            inbound_id=row["id"],
            reported_email=r.email if r else "",
        )
        outcome.recorded.append({"email": email, "kind": kind})
    events.append_sync(conn, new_events)
    return outcome


def process_batch(conn: Connection, policy: Policy, limit: int = 100) -> int:
    """Claim up to ``limit`` kept bounce messages and process them; returns how many.

    Each message runs in its own savepoint: one that breaks is rolled back alone
    and kept as ``held`` for a human, and its neighbours in the batch still commit.
    """
    rows = bounce_store.claim_pending(conn, limit)
    for row in rows:
        try:
            with conn.begin_nested():
                outcome = process_one(conn, row, policy)
        except Exception as exc:  # noqa: BLE001 - keep it for a human rather than loop on it
            outcome = Outcome("held", f"error: {type(exc).__name__}: {exc}"[:500])
        bounce_store.finish(
            conn, row["id"], state=outcome.state, org_id=outcome.org_id, note=outcome.note
        )
    return len(rows)
