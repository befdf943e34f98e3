"""Where "now" comes from, injected into every runner and decision.

Quotas, send scheduling, leases, retry back-off and tracking verdicts all ask
a :class:`Clock` rather than the system, so a test can stand at 23:59:59 in
Tokyo, or fast-forward a lease, without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where "now" comes from: the system clock, or a fixed one in tests."""

    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class FixedClock:
    """A clock tests set by hand (``clock.at = …``) or move on (``clock.advance(…)``)."""

    at: datetime

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta


class FollowClock:
    """Whatever clock ``holder.clock`` is *now* (tests swap the services' clock while running)."""

    def __init__(self, holder: object) -> None:
        self.holder = holder

    def now(self) -> datetime:
        return self.holder.clock.now()  # type: ignore[attr-defined]
