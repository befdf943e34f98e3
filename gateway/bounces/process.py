"""From a recognised report to a record: tie it to a send, record it, emit its event.

Only the VERP token of the address the report came to attributes it to a send:
the token is the random ``sends.verp_token`` in that send's return path, which
nobody but the relays on the way and the recipient ever saw.  Anything the
report says inside -- the addresses it names, our ``X-Mailgate-Send`` header or
the Message-ID of the returned original -- anyone who can reach our SMTP port
can write, so it is never grounds to suppress: a report only ever acts on the
address its send went to, and a report without a valid token is kept
(``inbound.state = 'held'``) with those hints for a human.  Mail that cannot be
recognised is kept the same way, never deleted.  Suppressing the address is not
done here: the suppression consumer (:mod:`sync.suppression`) decides it from
the event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from gateway.bounces import BouncedRecipient, BounceKind, BounceReport, classify, mime, verp_token
from gateway.bounces.addresses import ADDRESS_RE, comparable
from gateway.ingest.parse import parse
from gateway.metrics import BOUNCES
from storage import bounce_store, events, tracking_store
from storage.events import NewEvent
from storage.payloads import bounce_event
from tracking.unsubscribe import apply_unsubscribe

#: Times one kept report is tried before it is held for a human (a report that
#: breaks its whole transaction, not just its savepoint, must not loop forever).
MAX_ATTEMPTS = 3


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


def find_send(conn: Connection, rcpt_to: list[str], mail_domain: str) -> dict[str, Any] | None:
    """The send whose VERP return path the report came to; None without a valid token."""
    for address in rcpt_to:
        token = verp_token(address, mail_domain)
        if token:
            send = bounce_store.send_by_verp(conn, token)
            if send:
                return send
    return None


#: Where a report fetched from a bounce mailbox (no SMTP envelope of ours) says which
#: address it was delivered to: the report's own headers, never the returned original's.
DELIVERY_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")


def return_paths(row: dict[str, Any]) -> list[str]:
    """The addresses a kept report was delivered to: its SMTP envelope, or, for mail fetched
    from a bounce mailbox, its own delivery headers.

    Either way only a valid VERP token in one of them attributes it, and whoever can
    write these can as well send to that VERP address over SMTP: the token is the secret.
    """
    if row["rcpt_to"]:
        return list(row["rcpt_to"])
    msg = mime.parse(bytes(row["raw"]))
    found: list[str] = []
    for name in DELIVERY_HEADERS:
        for value in msg.get_all(name) or []:
            text = mime.decode_header_value(value)
            found += [m.group(1) for m in ADDRESS_RE.finditer(text)]  # tokens keep their case
    return found


def untrusted_hints(report: BounceReport) -> str:
    """What the report claims about whom it concerns, for the human who reads held mail."""
    hints = []
    header = (report.original_headers.get("X-Mailgate-Send") or "").strip()
    if header:
        hints.append(f"X-Mailgate-Send {header[:40]}")
    if report.original_message_id:
        hints.append(f"Message-ID {report.original_message_id[:200]}")
    named = [r.email for r in report.recipients[:5]]
    if named:
        hints.append("names " + ", ".join(named))
    return "; ".join(hints) or "nothing"


def _clean(text: str) -> str:
    """Text as every database stores it: PostgreSQL refuses NUL in text and JSON."""
    return text.replace("\x00", "")


def apply_bounce(
    conn: Connection,
    *,
    org_id: int,
    send: dict[str, Any],
    email: str,
    kind: str,
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
    """Record one hard/soft bounce or complaint of ``send``, for ``email`` (its address in
    the comparison form); returns the event to emit (the caller appends).

    Recording is all it does: the ``bounces`` row, the send's status, and an
    ``email.bounced`` / ``email.complained`` event.  Whether the address is
    suppressed is decided by the suppression consumer (:mod:`sync.suppression`)
    reading that event, as Mailman's BounceRunner records and a separate
    processor disables.
    """
    now = bounce_store.now()
    send_id = send["id"]
    BOUNCES.labels(str(org_id), kind).inc()
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
    if kind == "complaint":
        bounce_store.mark_send(conn, send_id, status="complained", complained_at=now)
    else:
        bounce_store.mark_send(conn, send_id, status="bounced", bounce_type=kind, bounced_at=now)
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


def target(report: BounceReport, send: dict[str, Any]) -> tuple[str, BouncedRecipient | None]:
    """The one address a report acts on -- its send's -- and what the report says about it.

    A VERP address names exactly one send, so exactly its recipient, whatever
    the report lists: its entry for that address, else its only or first entry
    (a forwarded mailbox reports under another name; a redacted complaint
    names nobody).
    """
    email = comparable(send["to_email"])
    by_email = {comparable(r.email): r for r in report.recipients}
    entry = by_email.get(email) or (report.recipients[0] if report.recipients else None)
    return email, entry


def cc_bounce(report: BounceReport, send: dict[str, Any]) -> str | None:
    """The CC address a report is about, when it names only CC recipients of the send.

    One message goes to the To and every CC under the send's one VERP address,
    so a CC's bounce comes back to it too.  It must not bounce (and suppress)
    the To: :func:`target` falls back to the To for reports that name nobody
    it knows, so a report naming only the send's CC addresses is set aside.
    """
    cc = {comparable(c) for c in send.get("cc_emails") or ()}
    named = {comparable(r.email) for r in report.recipients if r.email}
    if cc and named and comparable(send["to_email"]) not in named and named <= cc:
        return sorted(named)[0]
    return None


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
    send = find_send(conn, return_paths(row), policy.mail_domain)
    if send is None:
        note = f"{report.kind.value} without a valid VERP token; untrusted hints: "
        return Outcome("held", _clean(note + untrusted_hints(report))[:500])
    cc = cc_bounce(report, send)
    if cc is not None:  # the To got the message; its send is not bounced
        return Outcome("done", f"{report.kind.value} of cc {cc} (send {send['id']}): not recorded")
    email, r = target(report, send)
    if report.kind == BounceKind.COMPLAINT:
        kind = "complaint"
    elif r is not None and r.severity in ("hard", "soft"):
        kind = r.severity
    else:
        kind = "hard" if report.kind == BounceKind.HARD else "soft"
    new_events = apply_bounce(
        conn,
        org_id=send["org_id"],
        send=send,
        email=email,
        kind=kind,
        status=_clean(r.status) if r else "",
        reply_code=_clean(r.reply_code) if r else "",
        reason=r.reason if r else "",
        diagnostic=_clean(r.diagnostic) if r else "",
        feedback_type=_clean(report.feedback_type),
        matched_by="verp",
        inbound_id=row["id"],
        reported_email=_clean(r.email) if r else "",
    )
    events.append_sync(conn, new_events)
    outcome = Outcome("done", f"{report.kind.value} via verp", org_id=send["org_id"])
    outcome.recorded.append({"email": email, "kind": kind})
    return outcome


def process_rows(conn: Connection, rows: list[dict[str, Any]], policy: Policy) -> None:
    """Process claimed reports, each in its own savepoint, and write down what became of each.

    One that breaks is rolled back alone and kept as ``held`` for a human; its
    neighbours still commit.  One claimed more than :data:`MAX_ATTEMPTS` times
    (it broke the whole transaction before, or killed its worker) is held
    without being tried again.
    """
    for row in rows:
        if row["attempts"] > MAX_ATTEMPTS:
            outcome = Outcome("held", f"gave up after {MAX_ATTEMPTS} attempts: {row['last_error']}")
        else:
            try:
                with conn.begin_nested():
                    outcome = process_one(conn, row, policy)
            except Exception as exc:  # noqa: BLE001 - keep it for a human rather than loop on it
                outcome = Outcome("held", f"error: {type(exc).__name__}: {exc}")
        bounce_store.finish(
            conn, row["id"], state=outcome.state, org_id=outcome.org_id, note=_clean(outcome.note)
        )
