"""What the ingest steps work on: one :class:`Delivery` per message, in a :class:`Batch`.

Every step has the same signature, ``run(conn, batch) -> Flow`` (see
:mod:`gateway.ingest.pipeline`): it reads and writes the batch's deliveries and
decides an :class:`Outcome` for those it finishes.  A delivery without an
outcome is still *live* and goes on to the next step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.ingest.parse import ParsedMail
from storage.events import NewEvent

#: Channels of mail fetched from a user's own mailbox.
POLLED_CHANNELS = ("imap", "pop")


class Outcome(enum.Enum):
    """What became of one message; ``inbound list`` and the metrics use these words."""

    FILED = "filed"
    DUPLICATE = "duplicate"
    UNKNOWN_DROPBOX = "unknown_dropbox"  # the address was regenerated or its user deactivated
    SENDER_REFUSED = "sender_refused"  # envelope sender or a From address not allowed
    IGNORED = "ignored"  # polled mail not ours to keep (no CRM counterpart, org setting)
    FAILED = "failed"  # a step raised; the row keeps the step's name and the error

    @property
    def refused(self) -> bool:
        return self in (Outcome.UNKNOWN_DROPBOX, Outcome.SENDER_REFUSED)


class Flow(enum.Enum):
    """What a step tells the pipeline: go on, or every message is decided already."""

    CONTINUE = "continue"
    DONE = "done"


@dataclass(slots=True)
class Delivery:
    """One message for one mailbox owner, from the dropbox or a polled mailbox."""

    raw: bytes
    channel: str  # dropbox | imap | pop
    org_id: int
    user_id: int
    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    inbound_id: int | None = None  # its spool row
    #: Replay of mail whose authorisation passed before (it failed at a later step).
    accepted_earlier: bool = False
    #: IMAP: mailbox_id, folder, kind (inbox|sent), uidvalidity, uid, seen.
    origin: dict[str, Any] | None = None
    parsed: ParsedMail | None = None
    direction: str = "outgoing"
    counterparts: list[str] = field(default_factory=list)
    records: list[tuple[str, int]] = field(default_factory=list)
    #: False when a counterpart is in an excluded domain: filed, seen by its owner only.
    shared: bool = True
    outcome: Outcome | None = None
    message_pk: int | None = None
    #: Why it was refused or failed (shown by ``mailgate inbound list``).
    reason: str = ""
    #: The step that refused or failed it.
    stage: str | None = None

    @property
    def polled(self) -> bool:
        """Fetched from a connected mailbox (IMAP or POP3), not sent to the dropbox."""
        return self.channel in POLLED_CHANNELS

    @property
    def folder_kind(self) -> str | None:
        return self.origin.get("kind") if self.origin else None

    def decide(self, outcome: Outcome, stage: str, reason: str = "") -> None:
        self.outcome, self.stage, self.reason = outcome, stage, reason

    def reset(self) -> None:
        """Forget what the in-transaction steps decided (their savepoint was rolled back)."""
        self.direction, self.counterparts, self.records = "outgoing", [], []
        self.shared = True
        self.outcome, self.message_pk, self.reason, self.stage = None, None, "", None


@dataclass(slots=True)
class Batch:
    """The messages filed together, and what the steps looked up for all of them."""

    items: list[Delivery]
    mail_domain: str
    now: datetime
    orgs: dict[int, dict[str, Any]] = field(default_factory=dict)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    own_addresses: dict[int, set[str]] = field(default_factory=dict)  # user → allowed senders
    excluded: dict[int, list[str]] = field(default_factory=dict)  # org → not shared
    known: dict[int, dict[str, list[tuple[str, int]]]] = field(default_factory=dict)
    new_events: list[NewEvent] = field(default_factory=list)

    def live(self) -> list[Delivery]:
        return [d for d in self.items if d.outcome is None]

    def flow(self) -> Flow:
        """DONE once nothing is left to file, link, locate, mark replied or announce.

        Refusals and dropbox duplicates need nothing more; filed and ignored
        mail still goes on (ignored IMAP mail may answer one of our sends).
        """
        going = (None, Outcome.FILED, Outcome.IGNORED)
        for d in self.items:
            if d.outcome in going or (d.outcome is Outcome.DUPLICATE and d.origin):
                return Flow.CONTINUE  # (a polled duplicate's location is still recorded)
        return Flow.DONE
