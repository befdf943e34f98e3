"""What a classified bounce, complaint or auto-reply says, as plain data.

The classifier decides; the caller (ingest, the suppression consumer) acts.
Keeping the verdict a frozen value makes it trivial to store, compare in tests
and emit as an event.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["hard", "soft", ""]


class BounceKind(enum.Enum):
    """The verdict on one inbound message sent to our VERP return path."""

    HARD = "hard"
    SOFT = "soft"
    COMPLAINT = "complaint"
    AUTOREPLY = "autoreply"
    UNRECOGNISED = "unrecognised"

    @property
    def is_bounce(self) -> bool:
        return self in (BounceKind.HARD, BounceKind.SOFT)


@dataclass(frozen=True)
class BouncedRecipient:
    """One address the remote side reported on.

    ``severity`` is ours, not the remote MTA's: ``hard`` means the address
    itself is bad (unknown user, no such domain, moved) and should be
    suppressed; ``soft`` means it may work later (full, blocked, deferred).
    Complaint and auto-reply recipients carry ``""``: they did not bounce.
    """

    email: str
    severity: Severity
    status: str = ""
    reply_code: str = ""
    diagnostic: str = ""
    reason: str = ""


@dataclass(frozen=True)
class BounceReport:
    """The classification of one raw message."""

    kind: BounceKind
    recipients: list[BouncedRecipient] = field(default_factory=list)
    feedback_type: str = ""
    original_message_id: str = ""
    original_headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    detector: str = ""

    @property
    def is_bounce(self) -> bool:
        return self.kind.is_bounce
