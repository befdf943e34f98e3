"""Last-resort recognition of non-standard bounces: flufl.bounce's MTA
detectors (as Mailman uses them), then our own reading of the notification
text for addresses, status codes, SMTP reply codes and known phrases.

Only messages that look like a failure report (a mailer-daemon sender, a
bounce subject, a null return path) are scanned, so ordinary mail that
happens to contain "550" is never called a bounce.
"""

from __future__ import annotations

import logging
import re

from flufl.bounce import all_failures

from gateway.bounces import addresses, dsn, mime, reasons
from gateway.bounces.addresses import lines_about
from gateway.bounces.autoreply import looks_like_bounce
from gateway.bounces.mail import Mail
from gateway.bounces.report import BouncedRecipient, BounceKind, BounceReport

# flufl.bounce logs every detector at INFO and dumps tracebacks on hostile
# mail before re-raising; we catch and judge ourselves.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

_SKIP_LINE_RE = re.compile(
    r"^\s*(message-id|in-reply-to|references|received|return-path|from|sender|reply-to|"
    r"dkim-signature|x-[\w-]+|id|by|with|list-[\w-]+|resent-[\w-]+|errors-to|"
    r"authentication-results|arc-[\w-]+)\s*[:\s]",
    re.I,
)
_BOUNCE_BODY_RE = re.compile(
    r"could not be delivered|undeliverable|delivery (to the following|has failed|failed)|"
    r"permanent(ly)? (error|fail)|user unknown|returned to sender|unable to deliver|"
    r"not be delivered|failed to deliver|delivery failure|mailbox (is )?full|"
    r"送信できませんでした|届きませんでした|配信(でき|に失敗)",
    re.I,
)


def detect(mail: Mail) -> BounceReport | None:
    if not _is_failure_report(mail):
        return None
    head = mail.notification_head
    found = _from_dsn_text(mail) or _from_flufl(mail, head) or _from_text(mail, head)
    if not found:
        return None
    recipients, detector = found
    hard = any(r.severity == "hard" for r in recipients)
    return BounceReport(
        kind=BounceKind.HARD if hard else BounceKind.SOFT, recipients=recipients, detector=detector
    )


def _is_failure_report(mail: Mail) -> bool:
    if looks_like_bounce(mail):
        return True
    return_path = mime.header(mail.msg, "Return-Path").strip()
    if return_path in ("<>", "") and "Return-Path" in mail.msg:
        return True
    return bool(_BOUNCE_BODY_RE.search(mail.notification_head[:20000]))


def _from_dsn_text(mail: Mail) -> tuple[list[BouncedRecipient], str] | None:
    text = mail.notification_text
    if not dsn.has_fields(text):
        return None
    found = dsn.recipients(text, mail.notification_head)
    return (found, "dsn-text") if found else None


def _from_flufl(mail: Mail, head: str) -> tuple[list[BouncedRecipient], str] | None:
    """flufl.bounce's MTA detectors, with their verdict: what it calls temporary is soft.

    It files every failure it cannot call temporary as permanent, so its
    "permanent" is no evidence of its own: the report's words decide that.
    """
    try:
        temporary, permanent = all_failures(mail.msg)
    except Exception:
        return None
    found: dict[str, BouncedRecipient] = {}
    final = reasons.says_permanent(head)
    for raw, is_permanent in [(a, True) for a in permanent] + [(a, False) for a in temporary]:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        email = addresses.extract_address(text)
        if not email or email in found or addresses.is_system(email):
            continue
        found[email] = _recipient(email, head, permanent=final, temporary=not is_permanent)
    return (list(found.values()), "flufl.bounce") if found else None


def _from_text(mail: Mail, head: str) -> tuple[list[BouncedRecipient], str] | None:
    own = mail.own_addresses
    senders = set()
    if mail.original is not None:
        senders.update(addresses.find_all(mime.header(mail.original, "From")))
    candidates: list[str] = []
    for line in head.splitlines():
        if _SKIP_LINE_RE.match(line):
            continue
        for email in addresses.find_all(line):
            if email in own or email in senders or addresses.is_system(email):
                continue
            if email not in candidates:
                candidates.append(email)
    if not candidates and mail.original is not None:
        candidates = [
            e
            for e in addresses.find_all(mime.header(mail.original, "To"))
            if e not in own and not addresses.is_system(e)
        ][:1]
    if not candidates:
        return None
    permanent = reasons.says_permanent(head)
    return [_recipient(e, head, permanent=permanent) for e in candidates[:50]], "scan"


def _recipient(
    email: str, head: str, *, permanent: bool, temporary: bool = False
) -> BouncedRecipient:
    """One recipient of a non-standard report.

    ``permanent``: the report says so in its own words; ``temporary``:
    flufl.bounce knows the format and calls it temporary, which makes it soft
    whatever its reason.
    """
    near = lines_about(head, email)
    status = reasons.first_status(near) or reasons.first_status(head)
    reply_code = reasons.first_reply_code(near) or reasons.first_reply_code(head)
    reason, severity = reasons.decide(status, reply_code, near, head, permanent=permanent)
    if temporary:
        severity = "soft"
    diagnostic = " ".join(near.split())[:1000] if near else ""
    return BouncedRecipient(email, severity, status, reply_code, diagnostic, reason)
