"""The runner contract every background worker follows, without sockets or a database.

A scripted :class:`LoopRunner` stands in for a worker: each round pops the
next step of its script (handle n items, fail, or take a while), so the
loop's habits can be watched from outside: how soon a wake is answered, how
failures back off and are logged, what a stop does to a round in progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from gateway.runner import LoopRunner, Runner


class Scripted(LoopRunner):
    """Each round takes the next step: items handled (int), a failure, or seconds busy (float)."""

    name = "scripted"

    def __init__(self, script: Iterable[object] = (), *, poll_interval: float = 60.0) -> None:
        super().__init__(poll_interval=poll_interval)
        self.script = list(script)
        self.rounds: list[float] = []  # monotonic start of each round
        self.finished = 0  # rounds that ran to their end
        self.calls: list[str] = []

    async def run_once(self) -> int:
        self.rounds.append(time.monotonic())
        step = self.script.pop(0) if self.script else 0
        if isinstance(step, Exception):
            raise step
        if isinstance(step, float):  # busy, then nothing handled
            await asyncio.sleep(step)
            step = 0
        self.finished += 1
        return step

    async def hand_back(self) -> None:
        self.calls.append("hand_back")

    async def close(self) -> None:
        self.calls.append("close")


async def until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_every_worker_is_a_runner():
    from gateway.bounces.worker import BounceWorker
    from gateway.receive.mailboxes.service import MailboxSupervisor
    from gateway.sending.relay import RelayWorker
    from tracking.recorder import HitJudge, HitRecorder

    for cls in (BounceWorker, MailboxSupervisor, RelayWorker, HitRecorder, HitJudge):
        assert issubclass(cls, LoopRunner)
    assert isinstance(Scripted(), Runner)


async def test_a_wake_skips_the_poll_wait():
    runner = Scripted(poll_interval=60.0)
    await runner.start()
    await until(lambda: len(runner.rounds) == 1)
    woken = time.monotonic()
    runner.wake()
    await until(lambda: len(runner.rounds) == 2, timeout=1.0)
    assert runner.rounds[1] - woken < 0.5
    await runner.stop(1.0)


async def test_a_wake_during_a_round_is_not_lost():
    runner = Scripted([0.2], poll_interval=60.0)
    await runner.start()
    await until(lambda: len(runner.rounds) == 1)
    runner.wake()  # while the round is busy
    await until(lambda: len(runner.rounds) == 2, timeout=1.0)
    await runner.stop(1.0)


async def test_rounds_that_handled_items_are_followed_at_once():
    runner = Scripted([5, 5, 5], poll_interval=60.0)
    await runner.start()
    await until(lambda: len(runner.rounds) == 4, timeout=1.0)
    await runner.stop(1.0)


async def test_a_failing_round_backs_off_and_is_logged_once_per_outage(caplog):
    down = ConnectionError("database away")
    runner = Scripted([down, down, down, down, 1, 0, down, 1], poll_interval=0.01)
    runner.backoff = 0.04
    caplog.set_level(logging.WARNING, logger="mailgate.runner")
    await runner.start()
    await until(lambda: len(runner.rounds) >= 8)
    await runner.stop(1.0)

    gaps = [b - a for a, b in zip(runner.rounds, runner.rounds[1:4], strict=False)]
    assert gaps[0] >= 0.035 and gaps[1] >= 0.075 and gaps[2] >= 0.155  # 0.04 doubling
    assert runner.healthy  # the last round succeeded
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # one per outage, not one per failed round
    assert all("database away" in r.getMessage() for r in errors)
    recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert recovered == [
        "scripted: recovered after 4 failed rounds",
        "scripted: recovered after 1 failed rounds",
    ]


async def test_a_storage_outage_backs_off_no_longer_than_the_outage_cap():
    """A runner retries a lost database every few seconds, not every 30: work resumes soon."""
    down = ConnectionRefusedError("database away")  # a storage outage
    bug = ValueError("a bug")  # not one: the full back-off
    outage = Scripted([down] * 6 + [0], poll_interval=0.01)
    broken = Scripted([bug] * 6 + [0], poll_interval=0.01)
    for runner in (outage, broken):
        runner.backoff, runner.max_outage_backoff, runner.max_backoff = 0.02, 0.05, 10.0
        await runner.start()
    await until(lambda: len(outage.rounds) >= 7, timeout=2.0)
    await outage.stop(1.0)
    await broken.stop(0.1)
    gaps = [b - a for a, b in zip(outage.rounds, outage.rounds[1:], strict=False)]
    assert max(gaps) < 0.5  # capped at 0.05 s (0.02, 0.04, then 0.05 each)
    assert len(broken.rounds) < 7  # 0.02 doubling: 1.26 s before its 7th round


async def test_a_runner_is_unhealthy_while_rounds_fail():
    runner = Scripted([ConnectionError("away")] * 50, poll_interval=0.01)
    runner.backoff = 0.01
    await runner.start()
    await until(lambda: len(runner.rounds) >= 2)
    assert not runner.healthy
    await runner.stop(1.0)


async def test_stop_lets_the_round_in_progress_finish_within_the_deadline():
    runner = Scripted([0.2])
    await runner.start()
    await until(lambda: len(runner.rounds) == 1)
    await runner.stop(deadline=2.0)
    assert runner.finished == 1
    assert not runner.running
    assert runner.calls == ["hand_back", "close"]


async def test_stop_cancels_a_round_past_the_deadline_and_still_hands_back(caplog):
    runner = Scripted([30.0])
    caplog.set_level(logging.WARNING, logger="mailgate.runner")
    await runner.start()
    await until(lambda: len(runner.rounds) == 1)
    started = time.monotonic()
    await runner.stop(deadline=0.1)
    assert time.monotonic() - started < 1.0
    assert runner.finished == 0
    assert runner.calls == ["hand_back", "close"]
    assert any("cancelling" in r.getMessage() for r in caplog.records)


async def test_stop_takes_no_new_round_and_the_runner_can_start_again():
    runner = Scripted([0.1, 7, 7])
    await runner.start()
    await until(lambda: len(runner.rounds) == 1)
    await runner.stop(1.0)
    assert len(runner.rounds) == 1  # the 7s were not started after stop
    await runner.start()
    await until(lambda: not runner.script)
    await runner.stop(1.0)
    assert runner.calls == ["hand_back", "close", "hand_back", "close"]


async def test_a_failing_hand_back_does_not_stop_close(caplog):
    class Failing(Scripted):
        async def hand_back(self) -> None:
            raise ConnectionError("database away")

    runner = Failing()
    await runner.start()
    await runner.stop(1.0)
    assert runner.calls == ["close"]
    assert any("hand_back failed" in r.getMessage() for r in caplog.records)


async def test_drain_repeats_rounds_until_one_handles_nothing():
    runner = Scripted([3, 2, 0, 9])
    assert await runner.drain() == 5
    assert len(runner.rounds) == 3
    assert runner.script == [9]


async def test_idle_wait_decides_how_long_an_idle_runner_sleeps():
    class Soon(Scripted):
        def idle_wait(self) -> float:
            return 0.05

    runner = Soon(poll_interval=60.0)
    await runner.start()
    await until(lambda: len(runner.rounds) >= 3, timeout=1.0)
    await runner.stop(1.0)


def test_every_runner_a_role_names_is_one_services_can_build():
    from gateway.serve import ROLE_TABLE
    from gateway.services import RUNNERS

    named = {name for role in ROLE_TABLE.values() for name in role.runners}
    assert named <= RUNNERS.keys()


def test_roles_start_each_runner_once_in_table_order():
    from gateway.serve import parse_roles, runners_for

    assert runners_for(parse_roles("imap,worker")) == [
        "ingest",
        "relay",
        "bounces",
        "verdicts",
        "campaigns",
        "spool",
        "mailboxes",
    ]
    assert runners_for(parse_roles("smtp,http")) == ["spool", "tracking", "signals"]
    assert set(runners_for(parse_roles(None))) == {
        "spool",
        "ingest",
        "tracking",
        "signals",
        "relay",
        "bounces",
        "verdicts",
        "campaigns",
        "mailboxes",
        "suppression",
        "crm_to_campaigns",
        "campaigns_to_crm",
        "webhooks",
        "webhook_delivery",
    }
