"""Webhook delivery end to end: a real mailgate posts to a real HTTP receiver (both engines).

The server runs the API only; the tests drive the ``webhooks`` fan-out
consumer and the ``webhook_delivery`` runner themselves (``drain``) and move an
injected clock, so every retry happens exactly when its backoff says.  The
receiver verifies each request with the ``standardwebhooks`` package.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import delete, func, select, update
from standardwebhooks import Webhook

from gateway.clock import FixedClock
from storage import webhooks as store
from storage.schema import consumer_offsets
from storage.schema_webhooks import webhook_deliveries, webhooks
from sync import webhook_delivery as delivery_module
from sync.webhook_delivery import RetryPolicy, WebhookDelivery
from sync.webhooks import WebhookFanout
from tests.support.server import MailgateServer, wait_until
from tests.support.webhook_receiver import Receiver

BASE = 2.0  # MAILGATE_WEBHOOK_RETRY_BASE in these tests


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory):
    """The API only: the tests run the webhook consumer and runner by hand."""
    srv = MailgateServer(
        database_url, tmp_path_factory.mktemp("data"), webhook_retry_base=BASE
    ).start({"http"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


@pytest.fixture(autouse=True)
def no_endpoints_left(server):
    """Each test starts with no endpoint in the database (the runners see every org's)."""
    yield

    def wipe(conn) -> None:
        conn.execute(delete(webhook_deliveries))
        conn.execute(delete(webhooks))

    server.call(server.db.run_write(wipe))


@pytest.fixture
def clock(server):
    """A fixed clock at the real time (so receivers' 5-minute timestamp check passes)."""
    fixed = FixedClock(datetime.now(UTC))
    previous = server.running.services.clock
    server.running.services.clock = fixed
    yield fixed
    server.running.services.clock = previous


def admin_api(server: MailgateServer, org_name: str | None = None):
    tag = uuid.uuid4().hex[:8]
    org = server.org(org_name or f"Hooks {tag}")
    user = server.user(org, f"admin@{tag}.example.jp", admin=True)
    return org, server.api(user)


def add_webhook(api, receiver: Receiver, path: str, events: list[str]) -> dict:
    r = api.post("/api/v1/webhooks", json={"url": receiver.url(path), "events": events})
    assert r.status_code == 201, r.text
    created = r.json()
    receiver.secrets[path] = created["secret"]
    return created


def new_lead(api, n: int) -> int:
    r = api.post(
        "/api/v1/leads",
        json={"first_name": "太郎", "last_name": f"山田{n}", "email": f"taro{n}@client.example"},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def deliver(server: MailgateServer) -> int:
    """Queue what the log holds, then run the delivery runner until nothing is due."""
    server.drain_consumers()
    return server.drain("webhook_delivery")


def api_events(api, types: set[str]) -> list[dict]:
    items = api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
    return [e for e in items if e["type"] in types]


def deliveries(api, webhook_id: int) -> list[dict]:
    r = api.get(f"/api/v1/webhooks/{webhook_id}/deliveries", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_a_receiver_failing_twice_gets_each_event_once_in_order_signed_with_backoff(
    server, receiver, clock
):
    org, api = admin_api(server)
    path = f"/hook/{uuid.uuid4().hex}"
    receiver.script[path] = [500, 500]
    subscribed = {"record.created", "record.deleted"}
    hook = add_webhook(api, receiver, path, sorted(subscribed))
    assert hook["secret"].startswith("whsec_")

    ids = [new_lead(api, n) for n in range(3)]
    assert api.patch(f"/api/v1/leads/{ids[0]}", json={"company": "株式会社テスト"}).is_success
    assert api.delete(f"/api/v1/leads/{ids[1]}").status_code == 204

    t0 = clock.now()
    assert deliver(server) == 1  # the head failed: the endpoint waits
    first = deliveries(api, hook["id"])[0]
    assert (first["attempts"], first["last_status"], first["state"]) == (1, 500, "pending")
    assert datetime.fromisoformat(first["next_attempt_at"]) == t0 + timedelta(seconds=BASE)
    assert all(d["attempts"] == 0 for d in deliveries(api, hook["id"])[1:])

    clock.advance(timedelta(seconds=BASE - 0.5))
    assert deliver(server) == 0  # not yet due
    clock.advance(timedelta(seconds=0.5))
    assert deliver(server) == 1  # second failure: twice the base next
    t2 = clock.now()
    first = deliveries(api, hook["id"])[0]
    assert first["attempts"] == 2
    assert datetime.fromisoformat(first["next_attempt_at"]) == t2 + timedelta(seconds=2 * BASE)
    clock.advance(timedelta(seconds=2 * BASE))
    assert deliver(server) == 4  # the head, then the rest at once, in order

    expected = api_events(api, subscribed)
    assert [e["type"] for e in expected] == ["record.created"] * 3 + ["record.deleted"]
    hits = receiver.at(path)
    assert all(h.verified for h in hits), [h.problem for h in hits]
    ok = receiver.delivered(path)
    assert [h.event for h in ok] == expected  # bodies are the /api/v1/events items
    assert [h.webhook_id for h in ok] == [f"msg_{e['id']}" for e in expected]
    assert len({h.webhook_id for h in ok}) == len(ok)  # each event once
    # The two failed attempts were the same message: the same webhook-id and body.
    assert [h.status for h in hits[:3]] == [500, 500, 200]
    assert {h.webhook_id for h in hits[:3]} == {ok[0].webhook_id}
    assert {h.body for h in hits[:3]} == {ok[0].body}

    log = deliveries(api, hook["id"])
    assert [d["state"] for d in log] == ["delivered"] * 4
    assert [d["event_id"] for d in log] == [e["id"] for e in expected]
    assert [a["status"] for a in log[0]["log"]] == [500, 500, 200]
    assert log[0]["log"][0]["error"] == "HTTP 500"
    assert len(log[0]["log"][0]["response"]) <= 200
    assert log[0]["next_attempt_at"] is None and log[0]["delivered_at"] is not None
    state = api.get(f"/api/v1/webhooks/{hook['id']}").json()
    assert state["state"] == "active" and state["failing_since"] is None


def test_only_subscribed_types_and_only_the_own_orgs_events_arrive(server, receiver, clock):
    _, api = admin_api(server)
    _, other = admin_api(server)
    path = f"/types/{uuid.uuid4().hex}"
    add_webhook(api, receiver, path, ["record.updated"])
    lead = new_lead(api, 1)
    new_lead(other, 2)
    other_lead = new_lead(other, 3)
    assert other.patch(f"/api/v1/leads/{other_lead}", json={"company": "他社"}).is_success
    assert api.patch(f"/api/v1/leads/{lead}", json={"company": "自社"}).is_success
    deliver(server)
    got = [h.event for h in receiver.delivered(path)]
    assert got == api_events(api, {"record.updated"})
    assert len(got) == 1 and got[0]["data"]["id"] == lead


def test_events_before_the_endpoint_was_made_are_not_sent(server, receiver, clock):
    _, api = admin_api(server)
    new_lead(api, 1)
    path = f"/later/{uuid.uuid4().hex}"
    add_webhook(api, receiver, path, ["record.created"])
    new_lead(api, 2)
    deliver(server)
    got = receiver.delivered(path)
    assert [h.event["data"]["changed"]["email"] for h in got] == ["taro2@client.example"]


def test_an_endpoint_failing_past_the_limit_is_disabled_once_and_resumes_in_order(
    server, receiver, clock
):
    _, api = admin_api(server)
    path = f"/down/{uuid.uuid4().hex}"
    receiver.script[path] = [503] * 50
    hook = add_webhook(api, receiver, path, ["record.created"])
    watch = f"/watch/{uuid.uuid4().hex}"
    watcher = add_webhook(api, receiver, watch, ["webhook.disabled"])
    new_lead(api, 1)
    new_lead(api, 2)
    assert deliver(server) == 1
    # Four days on: still failing, still active (the default limit is 5 days).
    clock.advance(timedelta(days=4))
    assert deliver(server) == 1
    assert api.get(f"/api/v1/webhooks/{hook['id']}").json()["state"] == "active"
    clock.advance(timedelta(days=1))
    assert deliver(server) == 1
    state = api.get(f"/api/v1/webhooks/{hook['id']}").json()
    assert state["state"] == "disabled" and state["disabled_at"] is not None
    assert deliver(server) == 1  # the watcher is told
    told_at = clock.now().replace(microsecond=0)
    clock.advance(timedelta(days=1))
    assert deliver(server) == 0  # disabled: nothing is attempted
    disabled = api_events(api, {"webhook.disabled"})
    assert len(disabled) == 1
    data = disabled[0]["data"]
    assert data["webhook_id"] == hook["id"] and data["pending"] == 2
    assert data["last_error"] == "HTTP 503" and data["url"] == receiver.url(path)
    assert len(receiver.at(path)) == 3
    # Another endpoint subscribed to webhook.disabled is told.  Its timestamp is days
    # ahead of the receiver's real clock (which the verifier refuses), so the signature
    # is checked by hand with the package's signer.
    (told,) = receiver.at(watch)
    assert told.event == disabled[0]
    sent_at = datetime.fromtimestamp(int(told.timestamp), UTC)
    assert sent_at == told_at
    expected = Webhook(watcher["secret"]).sign(told.webhook_id, sent_at, told.body.decode())
    assert told.signature == expected

    # The receiver is fixed; the admin enables the endpoint again.  (The clock is
    # set back to the real time so the receiver's 5-minute timestamp check holds.)
    receiver.script[path] = []
    clock.at = datetime.now(UTC)
    r = api.patch(f"/api/v1/webhooks/{hook['id']}", json={"state": "active"})
    assert r.status_code == 200 and r.json()["state"] == "active", r.text
    assert deliver(server) == 2
    ok = receiver.delivered(path)
    assert [h.event["data"]["changed"]["email"] for h in ok] == [
        "taro1@client.example",
        "taro2@client.example",
    ]
    assert all(h.verified for h in ok)
    assert len(api_events(api, {"webhook.disabled"})) == 1


def test_a_rotated_secret_signs_beside_the_old_one_for_a_day(server, receiver, clock):
    _, api = admin_api(server)
    path = f"/rotate/{uuid.uuid4().hex}"
    hook = add_webhook(api, receiver, path, ["record.created"])
    old = hook["secret"]
    r = api.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret")
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new.startswith("whsec_") and new != old
    new_lead(api, 1)
    deliver(server)
    receiver.secrets[path] = new
    (hit,) = receiver.at(path)
    from standardwebhooks import Webhook

    headers = {"webhook-id": hit.webhook_id, "webhook-timestamp": hit.timestamp}
    for secret in (old, new):
        Webhook(secret).verify(hit.body, {**headers, "webhook-signature": hit.signature})


def test_a_private_target_is_refused_at_delivery_time_too(database_url, tmp_path_factory, receiver):
    """A name that resolved publicly when saved and privately now (rebinding) is not dialled."""
    strict = MailgateServer(
        database_url, tmp_path_factory.mktemp("strict"), allow_private_targets=False
    ).start({"http"})
    try:
        _, api = admin_api(strict)
        me = strict.call(_org_of(strict, api))
        path = f"/private/{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        hook_id = strict.call(
            strict.db.run_write(
                lambda c: store.create(
                    c,
                    org_id=me,
                    url=receiver.url(path),
                    types=["record.created"],
                    secret="whsec_" + "A" * 43 + "=",
                    created_by=None,
                    now=now,
                )
            )
        )
        new_lead(api, 1)
        strict.drain_consumers()
        assert strict.drain("webhook_delivery") == 1
        (d,) = deliveries(api, hook_id)
        assert d["state"] == "pending" and d["attempts"] == 1
        assert d["log"][0]["outcome"] == "refused"
        assert "not allowed" in d["last_error"]
        strict.call(strict.db.run_write(lambda c: store.remove(c, me, hook_id, now)))
        assert receiver.at(path) == []
    finally:
        strict.stop()


async def _org_of(server: MailgateServer, api) -> int:
    from storage import orgs

    token = api.headers["authorization"].split(" ", 1)[1]
    async with server.db.connect() as conn:
        user = await orgs.user_by_api_token(conn, token)
    return user["org_id"]


def test_two_fanout_copies_queue_each_delivery_once_and_a_replay_adds_nothing(
    server, receiver, clock
):
    _, api = admin_api(server)
    paths = [f"/fan/{uuid.uuid4().hex}" for _ in range(2)]
    hooks = [add_webhook(api, receiver, p, ["record.created", "record.updated"]) for p in paths]
    ids = [new_lead(api, n) for n in range(20)]
    for lead in ids[:5]:
        assert api.patch(f"/api/v1/leads/{lead}", json={"company": "x"}).is_success

    db = server.db

    async def two_copies() -> None:
        copies = [WebhookFanout(db, clock=clock, batch=7) for _ in range(2)]
        await asyncio.gather(*(c.drain() for c in copies))

    server.call(two_copies())
    server.drain_consumers()

    def counts(conn):
        q = (
            select(
                webhook_deliveries.c.webhook_id,
                func.count(),
                func.count(func.distinct(webhook_deliveries.c.event_id)),
            )
            .where(webhook_deliveries.c.webhook_id.in_([h["id"] for h in hooks]))
            .group_by(webhook_deliveries.c.webhook_id)
        )
        return sorted(tuple(r) for r in conn.execute(q))

    before = server.call(db.run_read(counts))
    assert before == sorted((h["id"], 25, 25) for h in hooks)

    def rewind(conn) -> None:
        conn.execute(
            update(consumer_offsets)
            .where(consumer_offsets.c.consumer == store.FANOUT)
            .values(position=0)
        )

    server.call(db.run_write(rewind))
    server.drain_consumers()
    assert server.call(db.run_read(counts)) == before


def test_two_delivery_runners_never_post_to_one_endpoint_at_once(server, receiver, clock):
    _, api = admin_api(server)
    paths = [f"/pair/{uuid.uuid4().hex}" for _ in range(3)]
    for p in paths:
        add_webhook(api, receiver, p, ["record.created"])
    for n in range(8):
        new_lead(api, n)
    server.drain_consumers()
    receiver.delay = 0.02
    try:

        async def two_processes() -> None:
            runners = [
                WebhookDelivery(
                    server.db, clock=clock, policy=RetryPolicy(BASE), allow_private=True
                )
                for _ in range(2)
            ]
            await asyncio.gather(*(r.drain() for r in runners for _ in range(2)))

        server.call(two_processes())
    finally:
        receiver.delay = 0.0
    expected = [e["id"] for e in api_events(api, {"record.created"})]
    for p in paths:
        assert [h.event["id"] for h in receiver.delivered(p)] == expected
        assert receiver.max_inflight[p] == 1


def test_timeouts_refused_connections_and_redirects_are_failures_that_wait(server, receiver, clock):
    _, api = admin_api(server)
    slow, moved = f"/slow/{uuid.uuid4().hex}", f"/moved/{uuid.uuid4().hex}"
    with socket.create_server(("127.0.0.1", 0)) as closed:
        closed_port = closed.getsockname()[1]
    hooks = {
        "timeout": add_webhook(api, receiver, slow, ["record.created"]),
        "rejected": add_webhook(api, receiver, moved, ["record.created"]),
    }
    r = api.post(
        "/api/v1/webhooks",
        json={"url": f"http://127.0.0.1:{closed_port}/gone", "events": ["record.created"]},
    )
    hooks["unreachable"] = r.json()
    receiver.script[moved] = [302]
    new_lead(api, 1)
    new_lead(api, 2)
    server.drain_consumers()
    receiver.delays[slow] = 1.0

    async def short_timeout() -> int:
        runner = WebhookDelivery(server.db, clock=clock, timeout=0.3, allow_private=True)
        return await runner.drain()

    try:
        assert server.call(short_timeout()) == 3  # one failed head per endpoint, then waiting
    finally:
        receiver.delays.clear()
    for outcome, hook in hooks.items():
        first, second = deliveries(api, hook["id"])
        assert first["log"][0]["outcome"] == outcome, first
        assert first["attempts"] == 1 and first["state"] == "pending"
        assert second["attempts"] == 0  # the next event waits behind the failing one
        state = api.get(f"/api/v1/webhooks/{hook['id']}").json()
        assert state["failing_since"] is not None and state["last_error"]
    assert deliveries(api, hooks["rejected"]["id"])[0]["last_status"] == 302


def test_the_running_sync_role_delivers_without_being_driven(
    database_url, tmp_path_factory, receiver
):
    """``serve`` with the ``sync`` role queues and delivers by itself, retries included."""
    live = MailgateServer(
        database_url, tmp_path_factory.mktemp("live"), webhook_retry_base=0.2
    ).start({"http", "sync"})
    try:
        _, api = admin_api(live)
        path = f"/live/{uuid.uuid4().hex}"
        receiver.script[path] = [500, 500]
        add_webhook(api, receiver, path, ["record.created"])
        new_lead(api, 1)
        new_lead(api, 2)
        ok = wait_until(lambda: len(receiver.delivered(path)) == 2 and receiver.delivered(path))
        assert [h.event for h in ok] == api_events(api, {"record.created"})
        assert [h.status for h in receiver.at(path)] == [500, 500, 200, 200]
        assert all(h.verified for h in receiver.at(path))
    finally:
        live.stop()


def test_a_failing_endpoint_does_not_hold_back_another(server, receiver, clock):
    _, api = admin_api(server)
    down, up = f"/stuck/{uuid.uuid4().hex}", f"/fine/{uuid.uuid4().hex}"
    receiver.script[down] = [500] * 10
    add_webhook(api, receiver, down, ["record.created"])
    new_lead(api, 1)
    assert deliver(server) == 1  # the first endpoint fails and waits out its backoff
    add_webhook(api, receiver, up, ["record.created"])
    new_lead(api, 2)
    new_lead(api, 3)
    assert deliver(server) == 2  # the second is served meanwhile
    assert [h.event["data"]["id"] for h in receiver.delivered(up)] == [
        e["data"]["id"] for e in api_events(api, {"record.created"})[1:]
    ]
    assert len(receiver.at(down)) == 1


def test_a_dead_deliverers_claim_runs_out_and_its_late_outcome_is_not_written(
    server, receiver, clock
):
    """A process that claimed an endpoint and died holds it only until its lease ends."""
    _, api = admin_api(server)
    path = f"/lease/{uuid.uuid4().hex}"
    hook = add_webhook(api, receiver, path, ["record.created"])
    new_lead(api, 1)
    server.drain_consumers()
    lease = timedelta(seconds=60)
    (dead,) = server.call(server.db.run_write(store.claim_due, clock.now(), 10, lease))
    assert dead["id"] == hook["id"]
    assert server.drain("webhook_delivery") == 0  # held by the dead process
    clock.advance(lease + timedelta(seconds=1))
    assert server.drain("webhook_delivery") == 1
    assert len(receiver.delivered(path)) == 1
    # The dead process wakes up and reports: its claim is gone, nothing is written.
    (delivery,) = server.call(
        server.db.run_read(
            lambda c: store.delivery_page(c, dead["org_id"], hook["id"], after=0, limit=5)
        )
    )
    late = server.call(
        server.db.run_write(
            partial(
                store.record_delivered,
                webhook_id=hook["id"],
                held=dead["claimed_until"],
                group=[
                    store.Delivered(
                        {**delivery, "state": "pending"}, clock.now(), 200, {"late": True}
                    )
                ],
                renew_to=clock.now() + lease,
            )
        )
    )
    assert late is False
    (after,) = deliveries(api, hook["id"])
    assert after["attempts"] == 1 and all("late" not in a for a in after["log"])


def test_a_runner_stopped_mid_delivery_hands_back_and_the_event_is_sent_again(
    server, receiver, clock
):
    """At least once: a POST cut by a stop is repeated, with the same webhook-id, at once."""
    _, api = admin_api(server)
    path = f"/cut/{uuid.uuid4().hex}"
    hook = add_webhook(api, receiver, path, ["record.created"])
    new_lead(api, 1)
    server.drain_consumers()
    receiver.delays[path] = 1.5

    def claimed(conn) -> bool:
        q = select(webhooks.c.claimed_until).where(webhooks.c.id == hook["id"])
        return conn.execute(q).scalar() is not None

    async def start_then_stop() -> bool:
        runner = WebhookDelivery(server.db, clock=clock, allow_private=True, poll_interval=0.05)
        await runner.start()
        for _ in range(200):
            if await server.db.run_read(claimed):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the POST is in flight
        await runner.stop(deadline=0.1)
        return await server.db.run_read(claimed)

    try:
        assert server.call(start_then_stop()) is False  # handed back, no lease to wait out
    finally:
        receiver.delays.clear()
    assert server.drain("webhook_delivery") == 1  # the clock has not moved
    hits = wait_until(lambda: len(receiver.at(path)) == 2 and receiver.at(path))
    assert len({h.webhook_id for h in hits}) == 1 and all(h.verified for h in hits)
    (d,) = deliveries(api, hook["id"])
    assert d["state"] == "delivered" and d["attempts"] == 1


def test_a_failure_after_some_2xx_records_them_with_it_and_the_rest_waits(server, receiver, clock):
    """The 2xx posted before a failure in one turn are recorded with it, nothing lost."""
    _, api = admin_api(server)
    path = f"/mid/{uuid.uuid4().hex}"
    receiver.script[path] = [200, 204, 503]
    hook = add_webhook(api, receiver, path, ["record.created"])
    for n in range(4):
        new_lead(api, n)
    assert deliver(server) == 3  # two 2xx, then the failure ends the turn
    items = deliveries(api, hook["id"])
    assert [(d["state"], d["attempts"], d["last_status"]) for d in items] == [
        ("delivered", 1, 200),
        ("delivered", 1, 204),
        ("pending", 1, 503),
        ("pending", 0, None),
    ]
    assert [d["log"][0]["outcome"] for d in items[:3]] == ["delivered", "delivered", "rejected"]
    clock.advance(timedelta(seconds=BASE))
    assert deliver(server) == 2
    expected = api_events(api, {"record.created"})[-4:]
    assert [h.event for h in receiver.delivered(path)] == expected


def test_more_deliveries_than_a_batch_and_a_group_go_out_once_each_in_order(
    server, receiver, clock
):
    """Past one read batch and one written group (50 each), order and counts hold."""
    _, api = admin_api(server)
    path = f"/many/{uuid.uuid4().hex}"
    hook = add_webhook(api, receiver, path, ["record.created"])
    for n in range(120):
        new_lead(api, n)
    assert deliver(server) == 120
    items = deliveries(api, hook["id"])
    assert len(items) == 120
    assert all(d["state"] == "delivered" and d["attempts"] == 1 for d in items)
    hits = receiver.delivered(path)
    assert [h.event["id"] for h in hits] == [d["event_id"] for d in items]
    assert len({h.webhook_id for h in hits}) == 120 and all(h.verified for h in hits)


def test_a_stop_writes_the_2xx_posted_so_far_and_only_the_cut_one_is_sent_again(
    server, receiver, clock, monkeypatch
):
    """The group of 2xx not yet written when a stop comes is written before the hand-back."""
    monkeypatch.setattr(delivery_module, "GROUP_WAIT", 60.0)  # only the stop writes the group
    _, api = admin_api(server)
    path = f"/group/{uuid.uuid4().hex}"
    hook = add_webhook(api, receiver, path, ["record.created"])
    for n in range(3):
        new_lead(api, n)
    server.drain_consumers()
    receiver.delays[path] = 0.4

    async def start_then_stop() -> None:
        runner = WebhookDelivery(server.db, clock=clock, allow_private=True, poll_interval=0.05)
        await runner.start()
        for _ in range(500):
            if len(receiver.at(path)) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the third POST is in flight
        await runner.stop(deadline=0.05)

    try:
        server.call(start_then_stop())
    finally:
        receiver.delays.clear()
    items = deliveries(api, hook["id"])
    assert [(d["state"], d["attempts"]) for d in items] == [
        ("delivered", 1),
        ("delivered", 1),
        ("pending", 0),
    ]
    assert server.drain("webhook_delivery") == 1  # handed back: no lease to wait out
    hits = wait_until(lambda: len(receiver.at(path)) == 4 and receiver.at(path))
    sent = [h.webhook_id for h in hits]
    assert len(set(sent[:3])) == 3 and sent[3] == sent[2]  # only the cut one again
    assert deliveries(api, hook["id"])[2]["state"] == "delivered"
