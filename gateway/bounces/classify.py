"""The bounce classifier: one raw message in, one verdict out.

Detectors run from the most to the least authoritative (Mailman's order):
standard DSNs, complaints, provider JSON, auto-replies, then heuristics.
The first that recognises the message decides; anything none of them
recognise is UNRECOGNISED with a reason, kept for a human.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from gateway.bounces import arf, autoreply, dsn, mime, scan, ses
from gateway.bounces.mail import Mail
from gateway.bounces.report import BounceKind, BounceReport

Detector = Callable[[Mail], BounceReport | None]


def _delivery_status(mail: Mail) -> BounceReport | None:
    """RFC 3464: a delivery-status part (or a report declaring one)."""
    status_parts = [
        p
        for p, ctype, _ in mail.parts
        if ctype in ("message/delivery-status", "message/global-delivery-status")
    ]
    declared = mail.content_type == "multipart/report" and mime.param(mail.msg, "report-type") in (
        "delivery-status",
        "global-delivery-status",
    )
    if not status_parts and not declared:
        return None
    text = "\n\n".join(mime.text(p) for p in status_parts)
    if not status_parts:
        # Declared a DSN but the part is mislabelled (text/plain): read the fields anyway.
        text = "\n\n".join(mime.text(p) for p, _ in mail.notification_parts)
    found = dsn.recipients(text, mail.notification_head)
    if not found:
        if not dsn.has_fields(text):
            return None
        # delivered / relayed / expanded / deliverable: a success report.
        return BounceReport(
            kind=BounceKind.UNRECOGNISED,
            reason="delivery report without a failed recipient, not a bounce",
            detector="dsn",
        )
    hard = any(r.severity == "hard" for r in found)
    return BounceReport(
        kind=BounceKind.HARD if hard else BounceKind.SOFT, recipients=found, detector="dsn"
    )


DETECTORS: tuple[Detector, ...] = (
    _delivery_status,
    arf.detect,
    ses.detect,
    autoreply.detect,
    scan.detect,
)


def classify(raw: bytes) -> BounceReport:
    """Classify one raw inbound message; pure, and never raises."""
    try:
        return _classify(raw)
    except Exception as exc:  # a bug or an input no parser foresaw: keep it for a human
        return BounceReport(
            kind=BounceKind.UNRECOGNISED,
            reason=f"classifier failed on this message: {type(exc).__name__}",
        )


def _classify(raw: bytes) -> BounceReport:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        return BounceReport(kind=BounceKind.UNRECOGNISED, reason="not bytes")
    if not bytes(raw).strip():
        return BounceReport(kind=BounceKind.UNRECOGNISED, reason="empty message")
    mail = Mail.from_bytes(bytes(raw))
    for detector in DETECTORS:
        report = detector(mail)
        if report is None:
            continue
        headers = dict(mail.original_headers)
        message_id = report.original_message_id or headers.get("Message-ID", "")
        return replace(
            report,
            original_message_id=message_id.strip(),
            original_headers={**headers, **report.original_headers},
        )
    return BounceReport(
        kind=BounceKind.UNRECOGNISED,
        reason="no delivery report, complaint, auto-reply or failure text recognised",
        original_message_id=mail.original_headers.get("Message-ID", "").strip(),
        original_headers=mail.original_headers,
    )
