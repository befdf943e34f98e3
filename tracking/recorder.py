"""Tracking hits, from the endpoint to their verdict, in two runners.

An endpoint calls :meth:`HitRecorder.record` (a list append, no I/O) and
answers at once.  The recorder is the ``tracking`` runner of the HTTP process
(:mod:`gateway.runner`): every ~50 ms it appends what it holds to
``tracking_inbox`` in one statement, raw — no reads, no verdicts, no JSON.
That is all the HTTP process spends on a hit: it shares its GIL with the
endpoints, and judging there cost the open pixel a third of its throughput.

The ``verdicts`` runner (:class:`HitJudge`, on ``worker`` nodes) judges the
inbox in another process.  Hits are judged once the verdict rules' burst
window around them has passed (``settle``, 2 s): a scanner following every
link of a message within a second must be seen as one burst, not split across
two batches where the first clicks would already have counted as a person's.
Each hit is stored
with its verdict in ``tracking_hits``, becomes an ``email.opened`` /
``email.clicked`` event carrying ``verdict`` and ``reason``, and — for human
hits only — moves the send's ``opened_at``/``clicked_at``/``status``.  A human
click implies an open (with its own ``email.opened`` event, reason
``implied_by_click``, when the send had none).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from gateway.clock import Clock, SystemClock
from gateway.metrics import TRACKING_HITS
from gateway.outage import is_storage_outage
from gateway.runner import LoopRunner
from storage import tracking_store
from storage.db import Database
from storage.events import EventType, NewEvent
from storage.payloads import send_event
from tracking.prepare import is_honeypot
from tracking.verdicts import DEFAULT_RULES, Hit, Verdict, VerdictRules, verdict

log = logging.getLogger("mailgate.tracking")

__all__ = ["PendingHit", "HitJudge", "HitRecorder", "judge_inbox", "write_hits"]

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
    """The ``tracking`` runner: hands the endpoints' hits on to the inbox in bulk.

    A round appends what is pending once the oldest hit has waited ``gather``
    seconds, so a busy endpoint pays one statement per few hundred hits.  A
    write that fails leaves the hits at the front of the queue for the loop's
    back-off; after ``attempts`` failures in a row they are dropped (counted),
    so a batch the database refuses cannot hold up the rest.  A storage outage
    (:func:`gateway.outage.is_storage_outage`) is not such a failure: the hits
    wait in memory, up to ``max_pending`` (beyond that new hits are counted in
    :attr:`dropped` and shed), and are appended when storage is back.  The
    back-off is capped at ``max_backoff`` (5 s), so they go within seconds of
    the recovery.  On stop every pending hit is appended (:meth:`hand_back`): a
    clean stop loses none it can write.
    """

    name = "tracking"
    #: A retry costs one INSERT: after an outage the hits go out within 5 s of the recovery.
    max_backoff = 5.0

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock | None = None,
        gather: float = 0.05,
        max_batch: int = 5000,
        max_pending: int = 500_000,
        attempts: int = 3,
    ) -> None:
        super().__init__()
        self.db = db
        self.clock = clock or SystemClock()
        self.gather = gather
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.attempts = attempts
        #: Hits appended to the inbox, and hits shed (queue full, or storage away).
        self.queued = 0
        self.dropped = 0
        self._pending: list[tuple[str, int, int | None, datetime, str, str, float]] = []
        self._failed_writes = 0
        self._lock = asyncio.Lock()

    def record(
        self, kind: str, send_id: int, link_index: int | None, ip: str, user_agent: str
    ) -> None:
        """Queue one verified hit; never blocks, never touches the database."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1  # the writer is far behind (database down): shed, don't grow
            TRACKING_HITS.labels("dropped").inc()
            return
        self._pending.append(
            (
                kind,
                send_id,
                link_index,
                self.clock.now(),
                ip[:45],
                user_agent[:_MAX_UA],
                time.time(),
            )
        )
        if len(self._pending) == 1:
            self.wake()

    async def run_once(self) -> int:
        """Append the pending hits (at most ``max_batch``) once the oldest has waited ``gather``."""
        if not self._pending or self.idle_wait() > 0:
            return 0
        async with self._lock:
            return await self._write(min(len(self._pending), self.max_batch))

    def idle_wait(self) -> float:
        """Until the oldest pending hit has waited ``gather``; the poll interval when none is."""
        if not self._pending:
            return self.poll_interval
        return max(0.0, self._pending[0][-1] + self.gather - time.time())

    async def hand_back(self) -> None:
        """Append every hit still pending: a stop loses none it can write."""
        await self.flush()

    async def flush(self) -> int:
        """Append every pending hit now (shutdown, tests); returns how many."""
        written = 0
        async with self._lock:
            while self._pending:
                written += await self._write(min(len(self._pending), self.max_batch))
        return written

    async def _write(self, n: int) -> int:
        """Append the first ``n`` pending hits; on failure they go back to the front, or
        are dropped at last."""
        batch = self._pending[:n]
        del self._pending[:n]
        try:
            await self.db.run_write(_append, batch)
        except Exception as exc:
            if is_storage_outage(exc):  # kept for after the outage, however long it lasts
                self._pending[:0] = batch
                raise
            self._failed_writes += 1
            if self._failed_writes >= self.attempts:
                log.exception("dropping %d tracking hits", len(batch))
                self.dropped += len(batch)
                TRACKING_HITS.labels("dropped").inc(len(batch))
                self._failed_writes = 0
            else:
                self._pending[:0] = batch
            raise
        self._failed_writes = 0
        self.queued += n
        TRACKING_HITS.labels("queued").inc(n)
        return n


def _append(conn: Connection, batch: list[tuple[Any, ...]]) -> None:
    to_db = tracking_store.db_time(conn)
    tracking_store.append_inbox(conn, [(*h[:3], to_db(h[3]), *h[4:]) for h in batch])


def judge_inbox(
    conn: Connection, queued_before: float, limit: int, public_url: str, rules: VerdictRules
) -> tuple[int, int, float | None]:
    """Judge up to ``limit`` inbox hits queued before ``queued_before``, in one transaction.

    They move into ``tracking_hits`` with their events and send statuses
    (:func:`write_hits`) and leave the inbox.  Returns (hits taken, hits
    stored, when the oldest hit left behind was queued); taken and stored
    differ by the hits of deleted sends.  Takes nothing while another worker
    is judging (PostgreSQL): a verdict needs the send's earlier hits.
    """
    if not tracking_store.take_judging_turn(conn):
        return 0, 0, None
    rows = tracking_store.settled_inbox(conn, queued_before, limit)
    if not rows:
        return 0, 0, tracking_store.oldest_queued(conn)
    stored = write_hits(conn, [PendingHit(*row[1:]) for row in rows], public_url, rules)
    tracking_store.remove_inbox(conn, [row[0] for row in rows])
    return len(rows), stored, tracking_store.oldest_queued(conn)


def _drop_settled(conn: Connection, queued_before: float, limit: int) -> int:
    """Take a batch that keeps failing out of the inbox, unjudged; how many hits."""
    ids = [row[0] for row in tracking_store.settled_inbox(conn, queued_before, limit)]
    tracking_store.remove_inbox(conn, ids)
    return len(ids)


class HitJudge(LoopRunner):
    """The ``verdicts`` runner: judges settled inbox hits in batches, on a worker.

    A round takes the hits whose burst window has passed (at most
    ``max_batch``) and commits their verdicts, events and statuses in one
    transaction; when none has settled, the loop sleeps until the oldest one
    will have (:meth:`idle_wait`), or at most ``poll_interval`` for hits
    appended by another process.  A batch that fails ``attempts`` rounds in a
    row is dropped (counted), so a poisoned batch cannot hold up the rest.
    Nothing is held in memory: on stop, unjudged hits wait in the inbox.
    """

    name = "verdicts"
    poll_interval = 0.5

    def __init__(
        self,
        db: Database,
        *,
        public_url: str,
        rules: VerdictRules = DEFAULT_RULES,
        settle: float | None = None,
        max_batch: int = 2000,
        attempts: int = 3,
    ) -> None:
        super().__init__()
        self.db = db
        self.public_url = public_url
        self.rules = rules
        self.settle = rules.burst_window.total_seconds() if settle is None else settle
        self.max_batch = max_batch
        self.attempts = attempts
        self.recorded = 0
        self.dropped = 0
        self._next_due: float | None = None
        self._failed_rounds = 0

    async def run_once(self) -> int:
        """Judge and commit the hits that have settled; how many were taken."""
        return await self._judge(time.time() - self.settle)

    def idle_wait(self) -> float:
        """Until the oldest inbox hit settles, at most the poll interval."""
        if self._next_due is None:
            return self.poll_interval
        return min(self.poll_interval, max(0.0, self._next_due - time.time()))

    async def flush(self) -> int:
        """Judge every hit in the inbox now, settled or not (tests); returns hits stored."""
        stored = self.recorded
        while await self._judge(math.inf):
            pass
        return self.recorded - stored

    async def _judge(self, queued_before: float) -> int:
        try:
            taken, stored, oldest = await self.db.run_write(
                judge_inbox, queued_before, self.max_batch, self.public_url, self.rules
            )
        except Exception as exc:
            if is_storage_outage(exc):  # not the batch's fault: it waits for storage
                raise
            self._failed_rounds += 1
            if self._failed_rounds >= self.attempts:
                self._failed_rounds = 0
                log.exception("dropping a batch of tracking hits that keeps failing")
                dropped = await self.db.run_write(_drop_settled, queued_before, self.max_batch)
                self.dropped += dropped
                TRACKING_HITS.labels("dropped").inc(dropped)
            raise
        self._failed_rounds = 0
        self._next_due = None if oldest is None else oldest + self.settle
        self.recorded += stored
        TRACKING_HITS.labels("recorded").inc(stored)
        # Hits of deleted sends are taken but not stored: nothing to record them against.
        TRACKING_HITS.labels("dropped").inc(taken - stored)
        return taken
