"""Faults at the relay boundary lose nothing, and a send that goes out twice is visibly the same.

- The relay down for the whole time the mail is queued, then back: every
  accepted send is delivered exactly once, each after its retry delay.
- A send refused with a 4xx after ``DATA`` and retried carries the same
  Message-ID (and the same bytes): the relay and the recipient can tell a
  retry from a new message.
- The one duplicate a crash can cause: the relay has the message, its
  ``250`` is still on the way, and the worker is killed (``kill -9`` of
  ``serve --only worker``).  Nobody recorded the 250, so the next worker
  sends it again once the lease has run out, with the same Message-ID.  This
  is where at least once is the honest promise (README, "What a crash can and
  cannot do").
"""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime

import pytest
from sqlalchemy import select

from storage.schema import events
from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.processes import ServeProcess
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.server import MailgateServer, wait_until
from tests.test_relay_handover import queue_sends

pytestmark = pytest.mark.skipif(
    not smtp_sink.available(), reason="Postfix smtp-sink not installed (apt-get install postfix)"
)

_SEND = re.compile(rb"^X-Mailgate-Send: (\d+)", re.M)
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>\r\n]+)>", re.M | re.I)


def identity(raw: bytes) -> tuple[int, str]:
    """(send id, Message-ID without brackets) of a message as the relay got it."""
    send, mid = _SEND.search(raw), _MESSAGE_ID.search(raw)
    assert send and mid, raw[:500]
    return int(send.group(1)), mid.group(1).decode()


def rows(gate: MailgateServer, ids: list[int]) -> dict[int, dict]:
    def read(conn) -> dict[int, dict]:
        q = select(sends).where(sends.c.id.in_(ids))
        return {r["id"]: dict(r) for r in conn.execute(q).mappings()}

    return gate.call(gate.db.run_read(read))


def stored_message_id(row: dict) -> str:
    return row["message_id"].strip("<>")


def deferrals(gate: MailgateServer, ids: list[int]) -> dict[int, list[datetime]]:
    """Each send's ``email.deferred`` events: when each said the next attempt would be."""

    def read(conn) -> dict[int, list[datetime]]:
        q = select(events.c.data).where(events.c.type == "email.deferred").order_by(events.c.id)
        out: dict[int, list[datetime]] = {i: [] for i in ids}
        for (data,) in conn.execute(q):
            if data["send_id"] in out:
                out[data["send_id"]].append(datetime.fromisoformat(data["next_attempt_at"]))
        return out

    return gate.call(gate.db.run_read(read))


@pytest.fixture
def gate(database_url, tmp_path):
    """HTTP only, in this process: queues sends, delivers none."""
    srv = MailgateServer(database_url, tmp_path / "data").start(roles={"http"})
    yield srv
    srv.stop()


def test_mail_queued_while_the_relay_is_down_is_delivered_once_each_after_its_retry_delay(
    gate, database_url, tmp_path
):
    port = smtp_sink.free_port()  # nothing listens here yet
    worker = ServeProcess(
        database_url,
        tmp_path / "data",
        "worker",
        relay_url=f"smtp://127.0.0.1:{port}",
        relay_retry_base="1",
        relay_retry_cap="2",
        relay_poll_interval="0.1",
        relay_timeout="5",
    )
    relay = None
    try:
        ids = queue_sends(gate, "relay-down", 20)
        # Every send is tried against the dead relay and waits for its retry, at least twice.
        wait_until(
            lambda: all(len(d) >= 2 for d in deferrals(gate, ids).values()),
            timeout=60,
            interval=0.2,
        )
        waiting = rows(gate, ids)
        assert all(r["state"] in ("deferred", "sending") for r in waiting.values())
        assert all(r["last_reply"].startswith("relay unreachable") for r in waiting.values())

        relay = smtp_sink.SmtpSink(port).start()
        back = time.monotonic()
        wait_until(
            lambda: all(r["state"] == "sent" for r in rows(gate, ids).values()),
            timeout=60,
            interval=0.2,
        )
        assert time.monotonic() - back < 60
        copies = [identity(raw) for raw in relay.messages()]
        assert sorted(i for i, _ in copies) == sorted(ids)  # each exactly once
        done, waited = rows(gate, ids), deferrals(gate, ids)
        for send_id, mid in copies:
            assert mid == stored_message_id(done[send_id])
        for send_id in ids:
            row = done[send_id]
            assert row["attempts"] == len(waited[send_id]) + 1
            # Sent at the retry its last deferral announced, not before.
            assert row["sent_at"] >= waited[send_id][-1], (send_id, row["sent_at"], waited)
    finally:
        worker.terminate()
        if relay is not None:
            relay.stop()


def test_a_send_retried_after_a_4xx_carries_the_same_message_id(gate, database_url, tmp_path):
    port = smtp_sink.free_port()
    script = Script(data_first=["451 4.3.0 Temporary local problem, try again"])
    with ScriptedRelay(port, script):
        worker = ServeProcess(
            database_url,
            tmp_path / "data",
            "worker",
            relay_url=f"smtp://127.0.0.1:{port}",
            relay_retry_base="0.5",
            relay_retry_cap="1",
            relay_poll_interval="0.1",
        )
        try:
            [sid] = queue_sends(gate, "relay-4xx", 1)
            wait_until(lambda: rows(gate, [sid])[sid]["state"] == "sent", timeout=60, interval=0.1)
        finally:
            worker.terminate()
    row = rows(gate, [sid])[sid]
    assert row["attempts"] == 2
    refused, accepted = script.arrived
    assert [len(script.messages)] == [1]
    assert identity(refused) == identity(accepted) == (sid, stored_message_id(row))
    assert refused == accepted  # the same bytes: a retry, not a new message


def test_the_message_whose_250_a_kill_9_cut_off_goes_out_again_with_the_same_message_id(
    gate, database_url, tmp_path
):
    port = smtp_sink.free_port()
    script = Script(stall=True)
    settings = {
        "relay_url": f"smtp://127.0.0.1:{port}",
        "relay_lease": "2",
        "relay_pool_size": "1",
        "relay_poll_interval": "0.1",
    }
    with ScriptedRelay(port, script):
        ids = queue_sends(gate, "relay-cut-off", 3)
        first = ServeProcess(database_url, tmp_path / "data", "worker", **settings)
        second = None
        try:
            # The relay has the first message's bytes and holds its 250.
            wait_until(lambda: len(script.arrived) == 1, timeout=30)
            code, _ = first.signal(signal.SIGKILL)
            assert code == -signal.SIGKILL
            cut_off, _ = identity(script.arrived[0])
            assert rows(gate, ids)[cut_off]["state"] == "sending"  # nobody knows it got there
            script.stall = False

            second = ServeProcess(database_url, tmp_path / "data", "worker", **settings)
            restarted = time.monotonic()
            wait_until(
                lambda: all(r["state"] == "sent" for r in rows(gate, ids).values()),
                timeout=60,
                interval=0.1,
            )
            assert time.monotonic() - restarted < 60
        finally:
            first.terminate()
            if second is not None:
                second.terminate()
    done = rows(gate, ids)
    seen = [identity(raw) for raw in script.arrived]
    # The cut-off one twice (the relay has both), every other exactly once, and the two
    # copies are the same message: same X-Mailgate-Send, same Message-ID as on record.
    assert sorted(i for i, _ in seen) == sorted([*ids, cut_off])
    assert [mid for i, mid in seen if i == cut_off] == [stored_message_id(done[cut_off])] * 2
    assert all(mid == stored_message_id(done[i]) for i, mid in seen)
    assert done[cut_off]["attempts"] == 2


def test_sigterm_while_the_relay_holds_a_reply_exits_in_time_and_hands_back_the_rest(
    gate, database_url, tmp_path
):
    port = smtp_sink.free_port()
    script = Script(stall=True)
    settings = {
        "relay_url": f"smtp://127.0.0.1:{port}",
        "relay_lease": "3",
        "relay_pool_size": "2",
        "relay_poll_interval": "0.1",
        "stop_deadline": "1",
    }
    with ScriptedRelay(port, script):
        ids = queue_sends(gate, "relay-term-stalled", 4)
        first = ServeProcess(database_url, tmp_path / "data", "worker", **settings)
        second = None
        try:
            wait_until(lambda: len(script.arrived) == 2, timeout=30)
            on_wire = {identity(raw)[0] for raw in script.arrived}
            asked = time.monotonic()
            code, stderr = first.signal(signal.SIGTERM)
            assert code == 0, stderr
            # The 1 s deadline, then the exit itself: no polite QUIT waited for on a
            # connection the relay is not answering.
            assert time.monotonic() - asked < 1 + 2.5
            after_stop = rows(gate, ids)
            # The relay may have the ones on the wire: they keep their lease (never lost,
            # perhaps sent twice); the ones never tried were handed back, due at once.
            assert {after_stop[i]["state"] for i in on_wire} == {"sending"}
            for i in set(ids) - on_wire:
                assert (after_stop[i]["state"], after_stop[i]["attempts"]) == ("queued", 0)
            script.stall = False

            second = ServeProcess(database_url, tmp_path / "data", "worker", **settings)
            wait_until(
                lambda: all(r["state"] == "sent" for r in rows(gate, ids).values()),
                timeout=60,
                interval=0.1,
            )
        finally:
            first.terminate()
            if second is not None:
                second.terminate()
    done = rows(gate, ids)
    seen = [identity(raw) for raw in script.arrived]
    assert sorted(i for i, _ in seen) == sorted([*ids, *on_wire])
    assert all(mid == stored_message_id(done[i]) for i, mid in seen)


def test_a_relay_slower_than_the_lease_gets_each_send_once_from_two_workers(
    gate, database_url, tmp_path
):
    """The lease covers a whole claimed batch: a worker alive but slow must renew it, or the
    other worker takes the send that is on the wire and the relay gets it twice."""
    port = smtp_sink.free_port()
    script = Script(data_delay=1.5)  # 6 messages one after another: 9 s; the lease is 2 s
    settings = {
        "relay_url": f"smtp://127.0.0.1:{port}",
        "relay_lease": "2",
        "relay_pool_size": "1",
        "relay_poll_interval": "0.1",
    }
    with ScriptedRelay(port, script):
        workers = []
        try:
            for _ in range(2):
                workers.append(ServeProcess(database_url, tmp_path / "data", "worker", **settings))
            for w in workers:
                w.wait_serving()
            ids = queue_sends(gate, "relay-slow", 6)  # one worker claims all six
            wait_until(
                lambda: all(r["state"] == "sent" for r in rows(gate, ids).values()),
                timeout=60,
                interval=0.1,
            )
        finally:
            for w in workers:
                w.terminate()
    seen = sorted(identity(raw)[0] for raw in script.arrived)
    assert seen == sorted(ids)  # each exactly once
    assert {r["attempts"] for r in rows(gate, ids).values()} == {1}


def test_a_renewal_never_takes_back_a_claim_another_worker_made_after_the_lease_ran_out(gate):
    from datetime import timedelta

    from storage import sends as send_store
    from storage.types import utcnow

    ids = queue_sends(gate, "relay-renew", 2)
    lease = timedelta(seconds=30)
    t0 = utcnow()

    def claim(conn, now):
        return [r["id"] for r in send_store.claim_due(conn, now, 10, lease)]

    assert sorted(gate.call(gate.db.run_write(claim, t0))) == sorted(ids)  # worker A
    # A's lease runs out; worker B claims both, then A (alive but slow) tries to renew.
    later = t0 + lease + timedelta(seconds=1)
    assert sorted(gate.call(gate.db.run_write(claim, later))) == sorted(ids)
    renewed = gate.call(
        gate.db.run_write(send_store.renew_claims, ids, t0 + lease, later + 2 * lease)
    )
    assert renewed == []
    assert {r["claimed_until"] for r in rows(gate, ids).values()} == {later + lease}
    # B's own renewal (its lease end) goes through.
    renewed = gate.call(
        gate.db.run_write(send_store.renew_claims, ids, later + lease, later + 2 * lease)
    )
    assert sorted(renewed) == sorted(ids)
    assert {r["claimed_until"] for r in rows(gate, ids).values()} == {later + 2 * lease}
