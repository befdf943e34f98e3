"""Where a mailbox poll resumes: pure decisions over (UIDVALIDITY, last UID).

A folder's checkpoint is the server's UIDVALIDITY plus the highest UID we have
durably filed.  Given the answer to EXAMINE (UIDVALIDITY, UIDNEXT, EXISTS) we
decide what to fetch without touching the network, so a poll that finds
nothing new costs one EXAMINE however large the mailbox is.  When UIDVALIDITY
changes, old UIDs mean nothing any more: we fetch again from scratch and rely
on the caller's Message-ID/content-hash dedupe to make that harmless.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last UID filed from a folder, valid only under ``uidvalidity``."""

    uidvalidity: int
    last_uid: int


@dataclass(frozen=True, slots=True)
class FolderState:
    """What EXAMINE told us about a folder."""

    uidvalidity: int
    uidnext: int | None
    exists: int
    highestmodseq: int | None = None

    @property
    def last_assigned_uid(self) -> int | None:
        """Highest UID the server has handed out, when it announced UIDNEXT."""
        return None if self.uidnext is None else self.uidnext - 1


class PlanKind(enum.Enum):
    NOTHING = "nothing"  # no FETCH at all
    INCREMENTAL = "incremental"  # UIDs after the checkpoint
    BACKFILL = "backfill"  # first connection: recent mail only (SINCE)
    RESYNC = "resync"  # UIDVALIDITY changed: start over, caller dedupes


@dataclass(frozen=True, slots=True)
class FetchPlan:
    kind: PlanKind
    first_uid: int  # fetch UIDs >= first_uid (meaningless for NOTHING)

    @property
    def starts_over(self) -> bool:
        """True when the stored checkpoint is void and the backfill window applies."""
        return self.kind in (PlanKind.BACKFILL, PlanKind.RESYNC)


def plan_fetch(stored: Checkpoint | None, state: FolderState) -> FetchPlan:
    """Decide what one poll of a folder must fetch."""
    if stored is None:
        if state.exists == 0:
            return FetchPlan(PlanKind.NOTHING, 1)
        return FetchPlan(PlanKind.BACKFILL, 1)
    if stored.uidvalidity != state.uidvalidity:
        return FetchPlan(PlanKind.RESYNC, 1)
    if state.exists == 0:
        return FetchPlan(PlanKind.NOTHING, stored.last_uid + 1)
    last = state.last_assigned_uid
    if last is not None and last <= stored.last_uid:
        return FetchPlan(PlanKind.NOTHING, stored.last_uid + 1)
    return FetchPlan(PlanKind.INCREMENTAL, stored.last_uid + 1)


def checkpoint_after(plan: FetchPlan, state: FolderState, stored: Checkpoint | None) -> Checkpoint:
    """The checkpoint once everything the plan found has been filed.

    After a backfill the older messages outside the window are deliberately
    skipped, so the checkpoint jumps to the last UID the server had assigned.
    """
    floor = 0 if plan.starts_over or stored is None else stored.last_uid
    last = state.last_assigned_uid or 0
    return Checkpoint(state.uidvalidity, max(floor, last))


def new_uids(uids: Iterable[int], first_uid: int) -> list[int]:
    """UIDs at or above ``first_uid``, ascending and without repeats.

    ``UID SEARCH UID n:*`` returns the highest message even when it is below
    ``n`` (``*`` is the highest UID, and a range is unordered), hence the filter.
    """
    return sorted({uid for uid in uids if uid >= first_uid})


def batches(uids: list[int], size: int) -> Iterator[list[int]]:
    """Consecutive slices of at most ``size`` UIDs."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    for start in range(0, len(uids), size):
        yield uids[start : start + size]


def uid_set(uids: Iterable[int]) -> str:
    """Compact IMAP sequence set for sorted UIDs: ``1:3,7,9:10``."""
    parts: list[str] = []
    run_start = prev = None
    for uid in sorted(set(uids)):
        if prev is not None and uid == prev + 1:
            prev = uid
            continue
        if run_start is not None:
            parts.append(_run(run_start, prev))
        run_start = prev = uid
    if run_start is None:
        raise ValueError("an IMAP UID set cannot be empty")
    parts.append(_run(run_start, prev))
    return ",".join(parts)


def _run(first: int, last: int | None) -> str:
    return str(first) if last is None or first == last else f"{first}:{last}"
