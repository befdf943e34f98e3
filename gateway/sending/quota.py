"""Daily sending quotas: the org's local day and the thresholds, as pure functions.

The limits themselves come from the plan catalogue, :mod:`gateway.org.plans`.

The day is the org's calendar day (00:00–23:59 in its IANA time zone), so the
counters are keyed by the local date and the reset is the next local
midnight — computed with :mod:`zoneinfo`, which gets the 23- and 25-hour DST
days right.  "Now" is a parameter everywhere (callers ask the injected
:class:`gateway.clock.Clock`) so tests can stand at 23:59:59 and at 00:00:00
without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class QuotaDay:
    """One local day of an org: the counter key and when it ends."""

    day: str  # YYYY-MM-DD, local
    starts_at: datetime  # aware, in the org's zone
    resets_at: datetime  # next local midnight, aware, in the org's zone

    def next(self, tz: ZoneInfo) -> QuotaDay:
        return quota_day(self.resets_at, tz)


def local_midnight(d: date, tz: ZoneInfo) -> datetime:
    """00:00 of ``d`` in ``tz``; where DST skips midnight, the first instant that exists."""
    naive = datetime.combine(d, time(0))
    aware = naive.replace(tzinfo=tz)
    # Round-trip through UTC: a non-existent local time moves forward to a real instant.
    return aware.astimezone(UTC).astimezone(tz)


def quota_day(now: datetime, tz: ZoneInfo | str) -> QuotaDay:
    """The org's local day containing the instant ``now``."""
    if isinstance(tz, str):
        tz = ZoneInfo(tz)
    if now.tzinfo is None:
        raise ValueError("quota_day needs an aware datetime")
    local = now.astimezone(tz)
    today = local.date()
    return QuotaDay(
        day=today.isoformat(),
        starts_at=local_midnight(today, tz),
        resets_at=local_midnight(today + timedelta(days=1), tz),
    )


@dataclass(frozen=True, slots=True)
class Crossing:
    """Which thresholds a reservation moved the counter across (events to emit)."""

    warning: bool
    exhausted: bool


def warning_threshold(limit: int) -> int:
    """ceil(80 % of ``limit``) without floats: the count that earns ``quota.warning``."""
    return -(-limit * 8 // 10)


def crossings(before: int, after: int, limit: int) -> Crossing:
    """A reservation from ``before`` to ``after`` crossed 80 % and/or 100 % of ``limit``."""
    if limit <= 0 or after <= before:
        return Crossing(False, False)
    return Crossing(before < warning_threshold(limit) <= after, before < limit <= after)
