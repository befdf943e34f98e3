"""The relay worker stopped or killed mid-batch, as an operator would: a signal to the process.

``mailgate serve --only worker`` runs as a real subprocess against a slow
smtp-sink (one second before each DATA reply), so a stop or a kill lands
while a claimed batch is still going out.  A SIGTERM must leave no send
claimed without its outcome, and the next process must send the rest at
once, not after the lease.  A SIGKILL must not lose the outcome of mail the
relay already accepted: outcomes are committed as they come, not once per
batch.  An HTTP-only mailgate in the test process queues the mail.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.processes import ServeProcess
from tests.support.server import MailgateServer, wait_until
from tests.test_sending_relay import new_lead

pytestmark = pytest.mark.skipif(
    not smtp_sink.available(), reason="Postfix smtp-sink not installed (apt-get install postfix)"
)

_SEND_HEADER = re.compile(rb"^X-Mailgate-Send: (\d+)", re.M)
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>\r\n]+)>", re.M | re.I)


def worker(database_url: str, data_dir: Path, relay_port: int, **settings: str) -> ServeProcess:
    """``mailgate serve --only worker`` in its own process, relaying to ``relay_port``."""
    relay = {
        "relay_url": f"smtp://127.0.0.1:{relay_port}",
        "relay_poll_interval": "0.1",
        "relay_timeout": "10",
    }
    return ServeProcess(database_url, data_dir, "worker", **{**relay, **settings})


@pytest.fixture
def gate(database_url, tmp_path):
    """HTTP only: queues sends, delivers none."""
    srv = MailgateServer(database_url, tmp_path / "data").start(roles={"http"})
    yield srv
    srv.stop()


def queue_sends(gate: MailgateServer, name: str, count: int) -> list[int]:
    org = gate.org(name, plan="standard")
    api = gate.api(gate.user(org, "rep@example.org", name="Rep"))
    leads = [new_lead(api, f"customer{i}@client.example.jp") for i in range(count)]
    r = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": i} for i in leads], "subject": "件名", "text": "x"},
    )
    assert r.status_code == 202, r.text
    ids = [s["id"] for s in r.json()["sends"]]
    assert len(ids) == count
    return ids


def queue_rows(gate: MailgateServer, ids: list[int]) -> dict[int, dict]:
    def read(conn) -> dict[int, dict]:
        q = select(sends.c.id, sends.c.state, sends.c.attempts).where(sends.c.id.in_(ids))
        return {r.id: {"state": r.state, "attempts": r.attempts} for r in conn.execute(q)}

    return gate.call(gate.db.run_read(read))


def in_state(gate: MailgateServer, ids: list[int], state: str) -> set[int]:
    return {i for i, row in queue_rows(gate, ids).items() if row["state"] == state}


def accepted(relay: smtp_sink.SmtpSink) -> list[int]:
    """Send ids as the relay accepted them, one entry per copy."""
    return [int(m.group(1)) for raw in relay.messages() if (m := _SEND_HEADER.search(raw))]


def message_ids(gate: MailgateServer, ids: list[int]) -> dict[int, str]:
    """Each send's Message-ID as the database has it (without angle brackets)."""

    def read(conn) -> dict[int, str]:
        q = select(sends.c.id, sends.c.message_id).where(sends.c.id.in_(ids))
        return {r.id: r.message_id.strip("<>") for r in conn.execute(q)}

    return gate.call(gate.db.run_read(read))


def copies_by_message_id(relay: smtp_sink.SmtpSink) -> list[tuple[int, str]]:
    """(send id, Message-ID) of every copy the relay accepted."""
    out = []
    for raw in relay.messages():
        send, mid = _SEND_HEADER.search(raw), _MESSAGE_ID.search(raw)
        assert send and mid, raw[:500]
        out.append((int(send.group(1)), mid.group(1).decode()))
    return out


def test_sigterm_mid_batch_records_every_outcome_and_the_next_process_sends_the_rest_at_once(
    gate, database_url, tmp_path
):
    ids = queue_sends(gate, "handover-term", 12)
    port = smtp_sink.free_port()
    relay = smtp_sink.SmtpSink(port, flags=("-w", "1")).start()
    # A lease far longer than the test: a send left claimed would not go out again in time.
    settings = {"relay_pool_size": "2", "relay_lease": "600", "stop_deadline": "5"}
    first = worker(database_url, tmp_path / "data", port, **settings)
    second = None
    try:
        wait_until(lambda: len(accepted(relay)) >= 2, timeout=30)
        code, stderr = first.signal(signal.SIGTERM)
        assert code == 0, stderr

        rows = queue_rows(gate, ids)
        sent = {i for i, row in rows.items() if row["state"] == "sent"}
        assert not [i for i, row in rows.items() if row["state"] == "sending"]
        assert sent == set(accepted(relay))  # the round in progress finished and was recorded
        assert 2 <= len(sent) < len(ids)
        for i in set(ids) - sent:  # handed back untried: due now, no attempt counted
            assert rows[i] == {"state": "queued", "attempts": 0}

        second = worker(database_url, tmp_path / "data", port, **settings)
        restarted = time.monotonic()
        wait_until(lambda: len(accepted(relay)) > len(sent), timeout=60)
        # At once, not after the 600 s lease: the clean stop had handed its claims back.
        assert time.monotonic() - restarted < 60
        wait_until(lambda: in_state(gate, ids, "sent") == set(ids), timeout=60)
        assert time.monotonic() - restarted < 60  # all of them within a minute of the restart
        copies = copies_by_message_id(relay)
        # Each exactly once, counted by X-Mailgate-Send and by Message-ID alike.
        assert sorted(copies) == sorted(message_ids(gate, ids).items())
        assert len({mid for _, mid in copies}) == len(ids)
    finally:
        first.terminate()
        if second is not None:
            second.terminate()
        relay.stop()


def test_outcomes_of_mail_the_relay_accepted_survive_a_kill_mid_batch(gate, database_url, tmp_path):
    ids = queue_sends(gate, "handover-kill", 24)
    port = smtp_sink.free_port()
    relay = smtp_sink.SmtpSink(port, flags=("-w", "1")).start()
    settings = {"relay_pool_size": "4", "relay_lease": "3"}
    first = worker(database_url, tmp_path / "data", port, **settings)
    second = None
    try:
        # All 24 are claimed in one batch and take ~6 s to go out.
        wait_until(lambda: len(accepted(relay)) >= 8, timeout=30)
        early = set(accepted(relay))
        wait_until(lambda: early <= in_state(gate, ids, "sent"), timeout=2.5)
        assert len(accepted(relay)) < len(ids), "the batch was meant to be still going out"

        code, _ = first.signal(signal.SIGKILL)
        assert code == -signal.SIGKILL
        recorded = in_state(gate, ids, "sent")
        at_kill = set(accepted(relay))
        assert early <= recorded <= at_kill
        assert len(at_kill - recorded) <= 4  # at most the messages on the wire at the kill

        # The next process takes over once the dead worker's short lease ran out.
        second = worker(database_url, tmp_path / "data", port, **settings)
        restarted = time.monotonic()
        wait_until(lambda: in_state(gate, ids, "sent") == set(ids), timeout=60)
        assert time.monotonic() - restarted < 60  # all of them within a minute of the restart
        copies = accepted(relay)
        assert set(copies) == set(ids)
        assert all(copies.count(i) == 1 for i in recorded)  # recorded: never sent again
        # Twice at most, and only what the relay had accepted unrecorded at the kill.
        twice = {i for i in ids if copies.count(i) > 1}
        assert twice <= at_kill - recorded
        assert all(copies.count(i) == 2 for i in twice)
        # A second copy is visibly the same message: the Message-ID on record, both times.
        on_record = message_ids(gate, ids)
        assert all(mid == on_record[i] for i, mid in copies_by_message_id(relay))
    finally:
        first.terminate()
        if second is not None:
            second.terminate()
        relay.stop()
