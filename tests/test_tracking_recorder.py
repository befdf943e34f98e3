"""The two tracking runners: the recorder hands hits on, the judge gives them verdicts.

Hits are recorded straight into a recorder over the running mailgate's
database (the endpoints' side is covered in ``test_tracking_http``); what is
checked is what lands in ``tracking_hits`` and the event log, and that a hit
the recorder took is neither lost on stop nor judged before its burst window
has passed.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from gateway.clock import FixedClock
from storage.db import Database
from storage.schema_tracking import tracking_inbox
from tests.support.sends import events_of, flush, hits_of, make_send, scalar
from tests.support.server import wait_until
from tracking.recorder import HitJudge, HitRecorder

BROWSER_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537"


@pytest.fixture
def people(mailgate):
    org = mailgate.org(f"recorder-{secrets.token_hex(4)}")
    return org, mailgate.user(org, f"rep{secrets.token_hex(3)}@example.co.jp")


def waiting_in_inbox(mailgate, send_id: int) -> int:
    q = select(func.count()).select_from(tracking_inbox).where(tracking_inbox.c.send_id == send_id)
    return scalar(mailgate, q)


def test_the_running_runners_judge_hits_once_they_have_settled(mailgate, people):
    send = make_send(mailgate, *people)
    services = mailgate.running.services
    recorder, judge = services.runner("tracking"), services.runner("verdicts")
    assert recorder.running and judge.running
    mailgate.loop.call_soon_threadsafe(
        recorder.record, "open", send["id"], None, "198.51.100.7", BROWSER_UA
    )
    [hit] = wait_until(lambda: hits_of(mailgate, send["id"]), timeout=10)
    assert (hit["kind"], hit["verdict"]) == ("open", "human")
    assert waiting_in_inbox(mailgate, send["id"]) == 0


def test_record_never_waits_and_stop_hands_every_pending_hit_on(mailgate, people):
    send = make_send(mailgate, *people)
    rec = HitRecorder(mailgate.db, gather=3600)  # nothing is written while the test runs

    async def record_then_stop() -> float:
        await rec.start()
        t0 = time.perf_counter()
        for _ in range(100):
            rec.record("open", send["id"], None, "198.51.100.7", BROWSER_UA)
        spent = time.perf_counter() - t0
        assert await rec.run_once() == 0  # still gathering
        await rec.stop(deadline=5)
        return spent

    assert mailgate.call(record_then_stop()) < 0.05  # no I/O on the hot path
    assert rec.queued == 100 and rec.dropped == 0
    assert waiting_in_inbox(mailgate, send["id"]) == 100
    flush(mailgate)
    assert len(hits_of(mailgate, send["id"])) == 100


def test_a_hit_is_not_judged_before_its_burst_window_has_passed(mailgate, people):
    """A scanner's burst must be judged whole: nothing is taken while it may go on."""
    send = make_send(mailgate, *people)
    rec = HitRecorder(mailgate.db)
    judge = HitJudge(mailgate.db, public_url=mailgate.settings.public_url, settle=3600)

    async def record_and_judge() -> int:
        for index in range(3):
            rec.record("click", send["id"], index, "198.51.100.7", BROWSER_UA)
        await rec.flush()
        return await judge.run_once()

    assert mailgate.call(record_and_judge()) == 0
    assert hits_of(mailgate, send["id"]) == []
    assert waiting_in_inbox(mailgate, send["id"]) == 3
    flush(mailgate)
    assert waiting_in_inbox(mailgate, send["id"]) == 0
    assert len(hits_of(mailgate, send["id"])) == 3


def test_a_judge_in_another_process_judges_what_the_endpoint_process_queued(mailgate, people):
    """The deployment the pixel benchmark runs: ``serve --only http`` + ``--only worker``."""
    send = make_send(mailgate, *people)
    rec = HitRecorder(mailgate.db)

    async def elsewhere() -> int:
        other = Database(mailgate.settings.database_url)  # its own engines and pool
        try:
            return await HitJudge(other, public_url=mailgate.settings.public_url).flush()
        finally:
            await other.dispose()

    rec.record("open", send["id"], None, "198.51.100.7", BROWSER_UA)
    mailgate.call(rec.flush())
    assert mailgate.call(elsewhere()) >= 1
    [hit] = hits_of(mailgate, send["id"])
    assert (hit["kind"], hit["verdict"]) == ("open", "human")


def test_hits_are_stamped_by_the_injected_clock_and_announced_with_the_send_fields(
    mailgate, people
):
    org, user = people
    send = make_send(mailgate, org, user, sent_at=datetime(2026, 11, 20, 9, 0, tzinfo=UTC))
    at = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    rec = HitRecorder(mailgate.db, clock=FixedClock(at))
    rec.record("open", send["id"], None, "198.51.100.7", BROWSER_UA)
    assert mailgate.call(rec.flush()) == 1
    flush(mailgate)
    [hit] = hits_of(mailgate, send["id"])
    assert hit["at"].astimezone(UTC) == at
    [event] = events_of(mailgate, org["id"], "email.opened")
    assert event["data"] | {"verdict": None, "reason": None} == {
        "send_id": send["id"],
        "to": send["to_email"],
        "kind": "individual",
        "module": None,
        "record_id": None,
        "user_id": user["id"],
        "template_id": None,
        "template_version": None,
        "message_id": send["message_id"],
        "campaign_id": None,
        "verdict": None,
        "reason": None,
    }
