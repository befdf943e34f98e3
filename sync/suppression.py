"""Bounce suppression: turns recorded bounces and complaints into suppressed addresses.

Bounce processing (:mod:`gateway.bounces.process`, and the relay for a 5xx at
SMTP time) only records: a ``bounces`` row and an ``email.bounced`` or
``email.complained`` event.  This consumer reads those events and decides, as
Mailman's BounceRunner leaves disabling a member to a separate step:

- a complaint suppresses the address (``complaint``);
- a hard bounce suppresses it (``hard_bounce``);
- a soft bounce suppresses it only once :attr:`SoftBounceRule.limit` soft
  bounces fell within :attr:`SoftBounceRule.window` up to this one, counted
  after the address's last sign of delivery (an open, click or reply)
  (``soft_bounce``).

The decision (:func:`decide`) is pure; the consumer only gathers its inputs
(the soft-bounce count) and writes its answer.  An address already suppressed
stays suppressed under its first reason, and one an admin lifted after the
bounce stays lifted when the bounce is read again (a replay from offset 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from gateway.addresses import normalise
from gateway.bounces import BounceKind
from gateway.clock import Clock
from storage import bounce_store, suppressions
from storage.db import Database
from storage.events import Event, EventType
from sync.consumer import Consumer


@dataclass(frozen=True, slots=True)
class SoftBounceRule:
    """Soft bounces are transient; only repeated ones within a window suppress."""

    limit: int = 3
    window: timedelta = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Bounce:
    """What the decision needs from one ``email.bounced`` / ``email.complained`` event.

    ``email`` is in the one comparison form (:func:`gateway.addresses.normalise`),
    the form the send API looks suppressions up by: an event written for
    ``Taro@Client.Example`` suppresses ``taro@client.example``.
    """

    org_id: int
    email: str
    kind: BounceKind
    at: datetime
    send_id: int | None = None
    status: str = ""
    diagnostic: str = ""
    feedback_type: str = ""

    @classmethod
    def from_event(cls, event: Event) -> Bounce:
        data: dict[str, Any] = event.data
        if event.type == EventType.EMAIL_COMPLAINED:
            kind = BounceKind.COMPLAINT
        else:
            kind = BounceKind(data["type"])
        return cls(
            org_id=event.org_id,
            email=normalise(data["email"]) or data["email"].lower(),
            kind=kind,
            at=event.at,
            send_id=data.get("send_id"),
            status=data.get("status") or "",
            diagnostic=data.get("diagnostic") or "",
            feedback_type=data.get("feedback_type") or "",
        )


@dataclass(frozen=True, slots=True)
class Suppression:
    """The decision to suppress: a reason ``GET /api/v1/suppressions`` shows, and why."""

    reason: str
    detail: str


def decide(bounce: Bounce, soft_bounces: int, rule: SoftBounceRule) -> Suppression | None:
    """Whether ``bounce`` suppresses its address; ``soft_bounces`` counts this one too."""
    match bounce.kind:
        case BounceKind.COMPLAINT:
            return Suppression("complaint", bounce.feedback_type)
        case BounceKind.HARD:
            return Suppression("hard_bounce", f"{bounce.status} {bounce.diagnostic}".strip())
        case BounceKind.SOFT if soft_bounces >= rule.limit:
            detail = f"{rule.limit} soft bounces within {rule.window.days} days"
            return Suppression("soft_bounce", detail)
    return None


class SuppressionConsumer(Consumer):
    """Suppresses the addresses that bounced hard, complained, or kept bouncing soft."""

    name = "suppression"
    types = frozenset({EventType.EMAIL_BOUNCED, EventType.EMAIL_COMPLAINED})

    def __init__(
        self,
        db: Database,
        clock: Clock,
        rule: SoftBounceRule | None = None,
        **runner: Any,
    ) -> None:
        super().__init__(db, clock, **runner)
        self.rule = rule or SoftBounceRule()

    def apply(self, conn: Connection, event: Event) -> None:
        bounce = Bounce.from_event(event)
        soft = 0
        if bounce.kind == BounceKind.SOFT:
            soft = bounce_store.soft_count_between(
                conn, bounce.org_id, bounce.email, bounce.at - self.rule.window, bounce.at
            )
        decision = decide(bounce, soft, self.rule)
        if decision is not None and not suppressions.lifted_after(
            conn, bounce.org_id, bounce.email, event.id
        ):
            suppressions.suppress(
                conn,
                bounce.org_id,
                bounce.email,
                decision.reason,
                detail=decision.detail,
                send_id=bounce.send_id,
                at=self.clock.now(),
            )
