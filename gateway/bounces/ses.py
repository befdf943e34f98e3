"""Amazon SES / SNS JSON notifications delivered by mail.

SES forwards bounces and complaints as a JSON document (optionally wrapped
in an SNS envelope whose ``Message`` is the JSON as a string).  It says
exactly what happened, so it is read before any heuristics.
"""

from __future__ import annotations

import json

from gateway.bounces import addresses, mime, reasons
from gateway.bounces.mail import Mail
from gateway.bounces.report import BouncedRecipient, BounceKind, BounceReport

_FEEDBACK_TYPES = {"abuse", "auth-failure", "fraud", "not-spam", "other", "virus"}


def detect(mail: Mail) -> BounceReport | None:
    for part, _ctype in mail.notification_parts:
        body = mime.text(part).strip()
        if not body.startswith("{") or "notificationType" not in body:
            continue
        # Relays that fold long lines leave "!\n " inside the JSON: unfold before giving up.
        document = _load(body) or _load(body.replace("!\n ", "").replace("!\r\n ", ""))
        if document is None:
            continue
        return _report(document)
    return None


def _load(body: str) -> dict | None:
    try:
        # SNS appends an unsubscribe footer after the document: decode the first value only.
        document, _ = json.JSONDecoder().raw_decode(body)
    except ValueError:
        return None
    if isinstance(document, dict) and isinstance(document.get("Message"), str):
        try:
            document = json.loads(document["Message"])
        except ValueError:
            return None
    return document if isinstance(document, dict) else None


def _report(doc: dict) -> BounceReport | None:
    kind = str(doc.get("notificationType") or doc.get("eventType") or "").lower()
    if kind == "bounce":
        bounce = doc.get("bounce") or {}
        transient = str(bounce.get("bounceType", "")).lower() == "transient"
        recipients = []
        for item in bounce.get("bouncedRecipients") or []:
            if not isinstance(item, dict):
                continue
            email = addresses.extract_address(str(item.get("emailAddress", "")))
            if not email:
                continue
            diagnostic = str(item.get("diagnosticCode", ""))
            status = reasons.first_status(str(item.get("status", ""))) or reasons.first_status(
                diagnostic
            )
            reply_code = reasons.first_reply_code(diagnostic)
            reason, severity = reasons.decide(status, reply_code, diagnostic)
            if transient:
                severity = "soft"
            recipients.append(
                BouncedRecipient(email, severity, status, reply_code, diagnostic[:1000], reason)
            )
        if not recipients:
            return None
        hard = any(r.severity == "hard" for r in recipients)
        return BounceReport(
            kind=BounceKind.HARD if hard else BounceKind.SOFT,
            recipients=recipients,
            original_message_id=str((doc.get("mail") or {}).get("messageId", "")),
            detector="amazonses",
        )
    if kind == "complaint":
        complaint = doc.get("complaint") or {}
        feedback = str(complaint.get("complaintFeedbackType") or "abuse").lower()
        emails = [
            addresses.extract_address(str(item.get("emailAddress", "")))
            for item in complaint.get("complainedRecipients") or []
            if isinstance(item, dict)
        ]
        return BounceReport(
            kind=BounceKind.COMPLAINT,
            recipients=[BouncedRecipient(e, "", reason="feedback") for e in emails if e],
            feedback_type=feedback if feedback in _FEEDBACK_TYPES else "abuse",
            original_message_id=str((doc.get("mail") or {}).get("messageId", "")),
            detector="amazonses",
        )
    if kind == "delivery":
        return BounceReport(
            kind=BounceKind.UNRECOGNISED,
            reason="delivery success notification, not a bounce",
            detector="amazonses",
        )
    return None
