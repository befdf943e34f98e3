"""RFC 3834 automatic responses (out of office, vacation, "unsubscribe"
confirmations).  They prove the address works, so they are *not* bounces;
recognising them keeps them out of the bounce counts.
"""

from __future__ import annotations

import re

from gateway.bounces import addresses, mime
from gateway.bounces.mail import Mail
from gateway.bounces.report import BouncedRecipient, BounceKind, BounceReport

_AUTOREPLY_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Vacation")
_SUBJECT_RE = re.compile(
    r"out of (the )?office|auto(matic|mated)?[ -]?(reply|response|antwort)|autoreply|"
    r"vacation|away from (my|the) (desk|office)|^\s*away\b|on leave|abwesenheit|"
    r"r[ée]ponse automatique|absence|respuesta autom[aá]tica|risposta automatica|"
    r"不在|自動(返信|応答)|休暇",
    re.I,
)
# A report about a failed delivery is never an auto-reply, whatever its headers say
# (Postfix marks its own bounces ``Auto-Submitted: auto-replied``).
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|returned mail|delivery (status|failure|failed|notification|problem)|"
    r"failure notice|mail delivery|non[- ]?delivery|could not be delivered|"
    r"delivery has failed|rejected|error|エラー|配信|届きません",
    re.I,
)


def detect(mail: Mail) -> BounceReport | None:
    if looks_like_bounce(mail):
        return None
    msg = mail.msg
    auto_submitted = mime.header(msg, "Auto-Submitted").strip().lower()
    precedence = mime.header(msg, "Precedence").strip().lower()
    marked = (
        auto_submitted.startswith("auto-replied")
        or precedence == "auto_reply"
        or any(mime.header(msg, name).strip() for name in _AUTOREPLY_HEADERS)
    )
    if not marked and not _SUBJECT_RE.search(mail.subject):
        return None
    sender = mail.sender
    recipients = [BouncedRecipient(sender, "", reason="vacation")] if sender else []
    return BounceReport(kind=BounceKind.AUTOREPLY, recipients=recipients, detector="rfc3834")


def looks_like_bounce(mail: Mail) -> bool:
    sender = mail.sender
    if sender and addresses.is_system(sender):
        return True
    return bool(_BOUNCE_SUBJECT_RE.search(mail.subject))
