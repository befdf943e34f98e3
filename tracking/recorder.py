"""The batched writer of tracking hits: the endpoints never wait for the database.

An endpoint calls :meth:`HitRecorder.record` (a list append, no I/O) and
answers at once.  The recorder is the ``tracking`` runner
(:mod:`gateway.runner`): each round commits what has settled in one
transaction via ``Database.run_write``: SQLite has one writer, and a commit
per hit would halve throughput and put hundreds of milliseconds on p99.

Hits are judged once the verdict rules' burst window around them has passed
(``settle``, 2 s): a scanner following every link of a message within a
second must be seen as one burst, not split across two batches where the
first clicks would already have counted as a person's.  Each hit is stored
with its verdict in ``tracking_hits``, becomes an ``email.opened`` /
``email.clicked`` event carrying ``verdict`` and ``reason``, and — for human
hits only — moves the send's ``opened_at``/``clicked_at``/``status``.  A human
click implies an open (with its own ``email.opened`` event, reason
``implied_by_click``, when the send had none).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from gateway.clock import Clock, SystemClock
from gateway.runner import LoopRunner
from storage import tracking_store
from storage.db import Database
from storage.events import EventType, NewEvent
from storage.payloads import send_event
from tracking.prepare import is_honeypot
from tracking.verdicts import DEFAULT_RULES, Hit, Verdict, VerdictRules, verdict

log = logging.getLogger("mailgate.tracking")

__all__ = ["PendingHit", "HitRecorder", "write_hits"]

#: Statuses a human open/click may move forward; the others say more (bounced,
#: unsubscribed, complained, replied) and stay.
_RANK = {
    "queued": 0,
    "sending": 0,
    "deferred": 0,
    "failed": 0,
    "sent": 1,
    "opened": 2,
    "clicked": 3,
}
#: Neighbouring hits the rules may need: the 60 s unopened-click window and the
#: burst window, with a wide margin.
_HISTORY = timedelta(hours=1)
_MAX_UA = 500


@dataclass(slots=True)
class PendingHit:
    kind: str  # open | click
    send_id: int
    link_index: int | None
    at: datetime
    ip: str
    user_agent: str
    mono: float


def _status_after(current: str, wanted: str) -> str:
    if current not in _RANK:
        return current
    return wanted if _RANK[wanted] > _RANK[current] else current


def write_hits(
    conn: Connection, batch: list[PendingHit], public_url: str, rules: VerdictRules
) -> int:
    """Judge and store one batch in the caller's transaction; returns hits stored.

    Hits of sends that do not exist (a deleted send) are dropped: nothing to
    attribute them to.  The per-hit work is kept to tuples and one JSON dump:
    this runs beside the endpoints under the same GIL.
    """
    clicked = {h.send_id for h in batch if h.kind == "click"}
    sends = tracking_store.sends_for_hits(conn, {h.send_id for h in batch}, clicked)
    batch = [h for h in batch if h.send_id in sends]
    if not batch:
        return 0
    # Only a click's verdict looks at the send's other hits (an earlier open, a
    # burst): sends with opens alone in this batch need no history.
    since = min(h.at for h in batch) - _HISTORY
    history: dict[int, list[Hit]] = {
        sid: [Hit(*row) for row in rows]
        for sid, rows in tracking_store.hits_since(conn, clicked & sends.keys(), since).items()
    }
    as_hits = [
        Hit(
            h.kind,
            h.at,
            h.user_agent,
            h.ip,
            h.link_index,
            honeypot=h.kind == "click"
            and is_honeypot(sends[h.send_id]["links"] or [], h.link_index, public_url),
        )
        for h in batch
    ]
    # The whole batch is known: every hit sees its batch neighbours on both sides.
    for sid in sends:
        history.setdefault(sid, [])
    for hit, pending in zip(as_hits, batch, strict=True):
        history[pending.send_id].append(hit)

    db_time = tracking_store.db_time(conn)
    rows: list[tuple[Any, ...]] = []
    new_events: list[tuple[Any, ...]] = []
    changed: dict[int, dict[str, Any]] = {}
    for hit, pending in zip(as_hits, batch, strict=True):
        send = sends[pending.send_id]
        judged: Verdict = verdict(
            hit, delivered_at=send["sent_at"], recent_hits=history[pending.send_id], rules=rules
        )
        at = db_time(pending.at)
        rows.append(
            (
                send["org_id"],
                send["id"],
                pending.kind,
                pending.link_index,
                at,
                pending.ip[:45],
                pending.user_agent[:_MAX_UA],
                judged.kind,
                judged.reason[:24],
            )
        )
        event = _hit_event(send, pending, judged)
        new_events.append((event.org_id, str(event.type), at, tracking_store.db_json(event.data)))
        if not judged.is_human:
            continue
        if send["opened_at"] is None:
            send["opened_at"] = pending.at
            if pending.kind == "click":
                implied = send_event(
                    EventType.EMAIL_OPENED,
                    send,
                    template_version=send["template_version"],
                    verdict=judged.kind,
                    reason="implied_by_click",
                    link_index=None,
                )
                new_events.append(
                    (send["org_id"], str(implied.type), at, tracking_store.db_json(implied.data))
                )
        if pending.kind == "click" and send["clicked_at"] is None:
            send["clicked_at"] = pending.at
        send["status"] = _status_after(
            send["status"], "clicked" if send["clicked_at"] else "opened"
        )
        changed[send["id"]] = send
    tracking_store.insert_hits(conn, rows)
    tracking_store.update_send_statuses(
        conn,
        [
            (s["status"], db_time(s["opened_at"]), db_time(s["clicked_at"]), s["id"])
            for s in changed.values()
        ],
    )
    tracking_store.append_events(conn, new_events)
    return len(rows)


def _hit_event(send: dict[str, Any], hit: PendingHit, judged: Verdict) -> NewEvent:
    """``email.opened``/``email.clicked`` with the verdict; ip and user agent stay in
    ``tracking_hits`` (events are read by every consumer)."""
    extra: dict[str, Any] = {
        "template_version": send["template_version"],
        "verdict": judged.kind,
        "reason": judged.reason,
    }
    if hit.kind != "click":
        return send_event(EventType.EMAIL_OPENED, send, **extra)
    links = send["links"] or []
    extra["link_index"] = hit.link_index
    if hit.link_index is not None and hit.link_index < len(links):
        extra["url"] = links[hit.link_index]
    return send_event(EventType.EMAIL_CLICKED, send, **extra)


class HitRecorder(LoopRunner):
    """The ``tracking`` runner: collects hits from the endpoints, commits settled ones in batches.

    A round writes the hits whose burst window has passed; when none has, the
    loop sleeps until the oldest one settles (:meth:`idle_wait`) or a first
    hit wakes it.  A batch whose write fails goes back to the front of the
    queue for the loop's back-off and is dropped (and counted) after
    ``attempts`` failures, so a poisoned batch cannot hold up the rest.  On
    stop every pending hit is committed, settled or not (:meth:`hand_back`).
    """

    name = "tracking"

    def __init__(
        self,
        db: Database,
        *,
        public_url: str,
        rules: VerdictRules = DEFAULT_RULES,
        clock: Clock | None = None,
        settle: float | None = None,
        max_batch: int = 2000,
        max_pending: int = 500_000,
        attempts: int = 3,
    ) -> None:
        super().__init__()
        self.db = db
        self.public_url = public_url
        self.rules = rules
        self.clock = clock or SystemClock()
        self.settle = rules.burst_window.total_seconds() if settle is None else settle
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.attempts = attempts
        self.recorded = 0
        self.dropped = 0
        self._pending: list[PendingHit] = []
        self._failed_writes = 0
        self._lock = asyncio.Lock()

    def record(
        self, kind: str, send_id: int, link_index: int | None, ip: str, user_agent: str
    ) -> None:
        """Queue one verified hit; never blocks, never touches the database."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1  # the writer is far behind (database down): shed, don't grow
            return
        self._pending.append(
            PendingHit(
                kind, send_id, link_index, self.clock.now(), ip, user_agent, time.monotonic()
            )
        )
        if len(self._pending) == 1:
            self.wake()

    async def run_once(self) -> int:
        """Judge and commit the hits that have settled (at most ``max_batch``)."""
        cutoff = time.monotonic() - self.settle
        async with self._lock:
            n = 0
            while n < len(self._pending) and n < self.max_batch:
                if self._pending[n].mono > cutoff:
                    break
                n += 1
            await self._write(n)
        return n

    def idle_wait(self) -> float:
        """Until the oldest pending hit settles; the poll interval when nothing is pending."""
        if not self._pending:
            return self.poll_interval
        return max(0.0, self._pending[0].mono + self.settle - time.monotonic())

    async def hand_back(self) -> None:
        """Commit every hit still pending: a stop loses none it can write."""
        await self.flush()

    async def flush(self) -> int:
        """Judge and commit every pending hit now (shutdown, tests); returns hits stored."""
        stored = 0
        async with self._lock:
            while self._pending:
                stored += await self._write(min(len(self._pending), self.max_batch))
        return stored

    async def _write(self, n: int) -> int:
        """Write the first ``n`` pending hits; how many were stored (hits of deleted sends are not).

        On failure they go back to the front of the queue, or are dropped at last.
        """
        if not n:
            return 0
        batch = self._pending[:n]
        del self._pending[:n]
        try:
            stored = await self.db.run_write(write_hits, batch, self.public_url, self.rules)
        except Exception:
            self._failed_writes += 1
            if self._failed_writes >= self.attempts:
                log.exception("dropping %d tracking hits", len(batch))
                self.dropped += len(batch)
                self._failed_writes = 0
            else:
                self._pending[:0] = batch
            raise
        self._failed_writes = 0
        self.recorded += stored
        return stored
