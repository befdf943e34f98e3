"""The hit recorder as a runner: it writes settled hits by itself and loses none on stop.

Hits are recorded straight into a recorder over the running mailgate's
database (the endpoints' side is covered in ``test_tracking_http``); what is
checked is what lands in ``tracking_hits`` and the event log.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import pytest

from gateway.clock import FixedClock
from tests.support.sends import events_of, hits_of, make_send
from tests.support.server import wait_until
from tracking.recorder import HitRecorder

BROWSER_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537"


@pytest.fixture
def people(mailgate):
    org = mailgate.org(f"recorder-{secrets.token_hex(4)}")
    return org, mailgate.user(org, f"rep{secrets.token_hex(3)}@example.co.jp")


def recorder(mailgate, **kw) -> HitRecorder:
    return HitRecorder(mailgate.db, public_url=mailgate.settings.public_url, **kw)


def test_the_running_recorder_writes_hits_once_they_have_settled(mailgate, people):
    send = make_send(mailgate, *people)
    running = mailgate.running.services.runner("tracking")
    assert running.running
    mailgate.loop.call_soon_threadsafe(
        running.record, "open", send["id"], None, "198.51.100.7", BROWSER_UA
    )
    [hit] = wait_until(lambda: hits_of(mailgate, send["id"]), timeout=10)
    assert (hit["kind"], hit["verdict"]) == ("open", "human")


def test_record_never_waits_and_stop_commits_every_pending_hit(mailgate, people):
    send = make_send(mailgate, *people)
    rec = recorder(mailgate, settle=3600)  # nothing settles while the test runs

    async def record_then_stop() -> float:
        await rec.start()
        t0 = time.perf_counter()
        for _ in range(100):
            rec.record("open", send["id"], None, "198.51.100.7", BROWSER_UA)
        spent = time.perf_counter() - t0
        assert await rec.run_once() == 0  # none has settled
        await rec.stop(deadline=5)
        return spent

    assert mailgate.call(record_then_stop()) < 0.05  # no I/O on the hot path
    assert len(hits_of(mailgate, send["id"])) == 100
    assert rec.recorded == 100 and rec.dropped == 0


def test_hits_are_stamped_by_the_injected_clock_and_announced_with_the_send_fields(
    mailgate, people
):
    org, user = people
    send = make_send(mailgate, org, user, sent_at=datetime(2026, 11, 20, 9, 0, tzinfo=UTC))
    at = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    rec = recorder(mailgate, clock=FixedClock(at), settle=0)
    rec.record("open", send["id"], None, "198.51.100.7", BROWSER_UA)
    assert mailgate.call(rec.drain()) == 1
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
        "verdict": None,
        "reason": None,
    }
