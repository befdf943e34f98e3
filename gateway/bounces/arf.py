"""Complaints: RFC 5965 ARF reports and the non-ARF feedback formats that
large mailbox providers send (Hotmail JMRP, Apple Mail's one-click
unsubscribe).  A complaint is never a bounce; it suppresses the address.
"""

from __future__ import annotations

import re

from gateway.bounces import addresses, mime
from gateway.bounces.mail import Mail
from gateway.bounces.report import BouncedRecipient, BounceKind, BounceReport

_FIELD_RE = re.compile(r"^([A-Za-z-]+)[ \t]*:[ \t]*(.*)$", re.M)


def detect(mail: Mail) -> BounceReport | None:
    return _arf(mail) or _hotmail_jmrp(mail) or _apple_unsubscribe(mail)


def _arf(mail: Mail) -> BounceReport | None:
    report_part = next(
        (p for p, ctype, _ in mail.parts if ctype == "message/feedback-report"), None
    )
    declared = (
        mail.content_type == "multipart/report"
        and mime.param(mail.msg, "report-type") == "feedback-report"
    )
    if report_part is None and not declared:
        return None
    fields: dict[str, list[str]] = {}
    if report_part is not None:
        for name, value in _FIELD_RE.findall(
            mime.raw_payload(report_part).decode("utf-8", "replace")
        ):
            fields.setdefault(name.lower(), []).append(value.strip())
    feedback_type = (fields.get("feedback-type") or ["abuse"])[0].lower() or "abuse"
    emails: list[str] = []
    for name in ("original-rcpt-to", "removal-recipient"):
        for value in fields.get(name, []):
            email = addresses.extract_address(value)
            if email and email not in emails:
                emails.append(email)
    if not emails and mail.original is not None:
        emails = [
            e
            for e in addresses.find_all(mime.header(mail.original, "To"))
            if not addresses.is_system(e)
        ][:1]
    return _complaint(emails, feedback_type, "arf")


def _hotmail_jmrp(mail: Mail) -> BounceReport | None:
    original = mail.original
    if original is None:
        return None
    value = mime.header(original, "X-HmXmrOriginalRecipient")
    if not value:
        return None
    return _complaint([addresses.extract_address(value)], "abuse", "hotmail-jmrp")


def _apple_unsubscribe(mail: Mail) -> BounceReport | None:
    if mime.header(mail.msg, "X-Apple-Unsubscribe").strip().lower() != "true":
        return None
    return _complaint([mail.sender], "opt-out", "apple-unsubscribe")


def _complaint(emails: list[str], feedback_type: str, detector: str) -> BounceReport:
    return BounceReport(
        kind=BounceKind.COMPLAINT,
        recipients=[BouncedRecipient(email=e, severity="", reason="feedback") for e in emails if e],
        feedback_type=feedback_type,
        detector=detector,
    )
