"""A send accepted by the API is never lost: not to a relay that is down, not to a restart,
not to a worker that died holding a claim.  Each test runs its own mailgate processes over
one database, so no other worker can deliver the mail in its place."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from storage.schema_sending import sends
from storage.types import utcnow
from tests.support import smtp_sink
from tests.support.server import MailgateServer, wait_until
from tests.test_sending_relay import new_lead, send_state, wait_state

pytestmark = pytest.mark.skipif(
    not smtp_sink.available(), reason="Postfix smtp-sink not installed (apt-get install postfix)"
)


def server(database_url, data_dir, relay_port) -> MailgateServer:
    return MailgateServer(
        database_url,
        data_dir,
        relay_url=f"smtp://127.0.0.1:{relay_port}",
        relay_retry_base=0.2,
        relay_retry_cap=0.5,
        relay_poll_interval=0.1,
        relay_timeout=5,
        relay_pool_size=2,
    ).start()


def test_mail_accepted_while_the_relay_is_down_is_delivered_by_the_next_process(
    database_url, tmp_path
):
    port = smtp_sink.free_port()
    first = server(database_url, tmp_path / "data", port)
    try:
        org = first.org("durable-restart", plan="standard")
        user = first.user(org, "me@example.org", name="Me")
        api = first.api(user)
        lead = new_lead(api, "patient@client.example.jp")
        r = api.post(
            "/api/v1/emails",
            json={"to": [{"module": "leads", "id": lead}], "subject": "待機", "text": "x"},
        )
        assert r.status_code == 202
        sid = r.json()["sends"][0]["id"]
        waiting = wait_until(lambda: (s := send_state(api, sid))["last_reply"] and s)
        assert waiting["state"] in ("deferred", "sending")
        assert waiting["last_reply"].startswith("relay unreachable")
    finally:
        first.stop()
    relay = smtp_sink.SmtpSink(port).start()
    second = server(database_url, tmp_path / "data", port)
    try:
        done = wait_state(second.api(user), sid, "sent")
        assert done["status"] == "sent" and done["attempts"] >= 2
        assert any(b"X-Mailgate-Send: %d" % sid in m for m in relay.messages())
    finally:
        relay.stop()
        second.stop()


def test_a_claim_left_by_a_dead_worker_expires_and_the_send_goes_out(database_url, tmp_path):
    port = smtp_sink.free_port()
    relay = smtp_sink.SmtpSink(port).start()
    srv = server(database_url, tmp_path / "data", port)
    try:
        org = srv.org("durable-claims", plan="standard")
        user = srv.user(org, "me@example.org", name="Me")
        api = srv.api(user)
        worker = srv.running.services.running("relay")
        srv.call(worker.stop())
        lead = new_lead(api, "later@example.net")
        sid = api.post(
            "/api/v1/emails",
            json={"to": [{"module": "leads", "id": lead}], "subject": "s", "text": "t"},
        ).json()["sends"][0]["id"]

        def orphan(conn) -> None:  # as a worker that claimed it and then died
            conn.execute(
                update(sends)
                .where(sends.c.id == sid)
                .values(state="sending", attempts=1, claimed_until=utcnow() - timedelta(seconds=1))
            )

        srv.call(srv.db.run_write(orphan))
        srv.call(worker.start())
        done = wait_state(api, sid, "sent")
        assert done["attempts"] == 2
        assert sum(b"X-Mailgate-Send: %d" % sid in m for m in relay.messages()) == 1
    finally:
        relay.stop()
        srv.stop()
