"""Issue #11: "Replaying every consumer from offset zero changes nothing."

A realistic state is built through the HTTP API of a running server, so that every consumer
of ``sync.CONSUMERS`` has applied events: leads created, updated, converted and deleted; a
CRM → Campaigns sync of the leads into a list; a webhook endpoint on a real receiver; a
campaign sent through the relay to a real SMTP server, opened, clicked, unsubscribed from,
hard-bounced and complained about.  Then people and the CRM move on, which is where a
replay bites: an admin lifts a suppression, a person's ``do_not_mail`` is cleared, a
registered lead is converted, a contact with a recipient's address is entered by hand.
Then every consumer's offset is set back to 0 and the consumers are drained again (and the
webhook deliverer let run).  Time is real (no moved clock): what was made later must be
later than every event, as in production.

What a replay may legitimately add, and nothing else:

- **new ``change`` runs of a sync** (``sync_runs`` rows of kind ``change``, their
  ``sync_skips``, and one ``sync.run`` event each): the sync records every round that looked
  at records, as its history says (docs/syncs.md "Replaying the log … new runs are recorded,
  members are not touched");
- the **webhook deliveries of those new ``sync.run`` events** (new events, delivered once).

Everything that existed before the replay must be unchanged, row for row and column for
column: list members, campaign recipients, record histories, leads, contacts and accounts
(``do_not_mail`` included), suppressions, syncs and their earlier runs, webhook deliveries
(no delivery queued or sent twice), what the receiver got, and the events log apart from
``sync.run``.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Table, func, select, update

from storage.events import EventType
from storage.schema import accounts, consumer_offsets, contacts, events, leads
from storage.schema_campaigns import (
    campaign_recipients,
    campaigns,
    list_members,
    mailing_lists,
    record_campaigns,
)
from storage.schema_sending import suppressions
from storage.schema_syncs import sync_runs, sync_skips, syncs
from storage.schema_webhooks import webhook_deliveries, webhooks
from sync import CONSUMERS, WebhookFanout
from tests.support import smtp_sink
from tests.support.campaign_sends import (
    bounce,
    click,
    complain,
    composed_sends,
    open_mail,
    relayed_server,
    send_through_api,
    settle,
    unsubscribe,
)
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.sends import rows, scalar
from tests.support.server import MailgateServer, wait_until
from tests.support.webhook_receiver import Receiver
from tracking.verdicts import DEFAULT_RULES

#: Tables whose every row must survive a replay unchanged.
UNCHANGED: tuple[Table, ...] = (
    leads,
    contacts,
    accounts,
    mailing_lists,
    list_members,
    campaigns,
    campaign_recipients,
    record_campaigns,
    suppressions,
    syncs,
    webhooks,
    webhook_deliveries,
)
#: Tables a replay may add rows to (new change runs), never change a row of.
GROWING: tuple[Table, ...] = (sync_runs, sync_skips)
HOOK_PATH = "/hooks/all"


@pytest.fixture(scope="module")
def relay_port() -> int:
    return smtp_sink.free_port()


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay_port):
    srv = relayed_server(database_url, tmp_path_factory.mktemp("data"), relay_port)
    yield srv
    srv.stop()


@pytest.fixture
def receiver():
    rec = Receiver()
    yield rec
    rec.close()


def table_rows(server: MailgateServer, table: Table) -> dict[Any, dict[str, Any]]:
    """Every row of ``table`` by primary key (the server is this module's alone)."""
    key = list(table.primary_key.columns)
    return {tuple(r[c.name] for c in key): r for r in rows(server, select(table))}


def snapshot(server: MailgateServer, receiver: Receiver) -> dict[str, Any]:
    """What the consumers wrote, and what their effects reached (receiver, events log)."""
    return {
        **{t.name: table_rows(server, t) for t in (*UNCHANGED, *GROWING)},
        "received": Counter(h.webhook_id for h in receiver.at(HOOK_PATH)),
        "last_event": scalar(server, select(func.max(events.c.id))),
        "events": scalar(
            server,
            select(func.count())
            .select_from(events)
            .where(events.c.type != EventType.SYNC_RUN.value),
        ),
    }


def changed_rows(before: dict, after: dict) -> dict[str, list]:
    """Per table, what a replay did to rows that existed, as (key, {column: (before, after)})
    (``None`` for a vanished row); and in the tables that may not grow, the rows it added
    (key, "added", row). Webhook deliveries of new ``sync.run`` events are checked apart."""
    out: dict[str, list] = {}
    for name in (t.name for t in (*UNCHANGED, *GROWING)):
        old, new = before[name], after[name]
        diff: list = []
        for key, row in old.items():
            if key not in new:
                diff.append((key, None))
            elif new[key] != row:
                cols = {c: (v, new[key][c]) for c, v in row.items() if new[key][c] != v}
                diff.append((key, cols))
        if name not in {t.name for t in GROWING} | {webhook_deliveries.name}:
            diff += [(key, "added", row) for key, row in new.items() if key not in old]
        if diff:
            out[name] = diff
    return out


def deliveries_settled(server: MailgateServer, receiver: Receiver) -> bool:
    """Nothing left to deliver, and the receiver saw every delivered attempt."""
    pending = select(func.count()).where(webhook_deliveries.c.state == "pending")
    delivered = select(func.count()).where(webhook_deliveries.c.state == "delivered")
    return scalar(server, pending) == 0 and len(receiver.at(HOOK_PATH)) >= scalar(server, delivered)


def settle_everything(server: MailgateServer, receiver: Receiver) -> None:
    server.drain_consumers()
    server.running.services.wake("webhook_delivery")
    wait_until(lambda: deliveries_settled(server, receiver), timeout=30)
    server.drain_consumers()


def build_state(server: MailgateServer, receiver: Receiver, relay_port: int) -> dict[str, Any]:
    """Every consumer's kind of work, driven through the API, SMTP and tracking endpoints."""
    org = server.org(f"replay-{secrets.token_hex(3)}")
    admin = server.user(org, f"admin{secrets.token_hex(3)}@example.co.jp", admin=True)
    api = server.api(admin)

    hook = api.post(
        "/api/v1/webhooks",
        json={"url": receiver.url(HOOK_PATH), "events": [t.value for t in EventType]},
    )
    assert hook.status_code == 201, hook.text
    receiver.secrets[HOOK_PATH] = hook.json()["secret"]

    lst = api.post("/api/v1/lists", json={"name": "会員", "register": True})
    assert lst.status_code == 201, lst.text
    list_id = lst.json()["id"]
    sync = api.post(
        "/api/v1/syncs",
        json={
            "module": "leads",
            "list_id": list_id,
            "subscription": "marketing",
            "do_not_mail": "exclude",
        },
    )
    assert sync.status_code == 201, sync.text

    def lead(name: str, company: str = "") -> int:
        body = {"last_name": name, "first_name": "様", "email": f"{name}@client.example"}
        made = api.post("/api/v1/leads", json={**body, "company": company})
        assert made.status_code == 201, made.text
        return made.json()["id"]

    ids = {n: lead(n, "青空商事") for n in ("alice", "bob", "carol", "dave", "gina")}
    server.drain_consumers()
    assert api.patch(f"/api/v1/leads/{ids['alice']}", json={"title": "部長"}).status_code == 200
    converted = api.post(f"/api/v1/leads/{ids['bob']}/convert", json={})
    assert converted.status_code in (200, 201), converted.text
    assert api.delete(f"/api/v1/leads/{ids['carol']}").status_code == 204
    for name in ("erin", "frank", "ken"):  # by hand: not in the CRM yet
        member = {"email": f"{name}@client.example", "first_name": "新", "last_name": name}
        assert api.post(f"/api/v1/lists/{list_id}/members", json=member).status_code == 201
    server.drain_consumers()

    made = api.post(
        "/api/v1/campaigns",
        json={
            "name": "冬のご案内",
            "list_ids": [list_id],
            "subject": "ご案内",
            "html": '<p>{{ lead.last_name }} 様 <a href="https://shop.example.co.jp/w">見る</a></p>',
            "register": {"opened": "leads", "clicked": "contacts"},
        },
    )
    assert made.status_code == 201, made.text
    campaign_id = made.json()["id"]
    with ScriptedRelay(relay_port, Script()):
        send_through_api(server, api, campaign_id)
    sent = composed_sends(server, campaign_id)

    # The members read their mail; alice clicks once a click is no longer "too fast" (no
    # clock games here: records made later must be later than every event).
    at = {name: sent[f"{name}@client.example"] for name in ("alice", "dave", "erin", "frank")}
    open_mail(server, at["alice"])
    open_mail(server, at["erin"])  # registered as a lead
    open_mail(server, at["frank"])
    unsubscribe(server, at["frank"])
    bounce(server, sent["gina@client.example"], hard=True)
    complain(server, at["dave"])
    bounce(server, sent["ken@client.example"], hard=True)
    too_fast = DEFAULT_RULES.too_fast + timedelta(seconds=1)
    time.sleep(max(0.0, (at["alice"]["sent_at"] + too_fast - datetime.now(UTC)).total_seconds()))
    click(server, at["alice"])
    settle(server)
    settle_everything(server, receiver)

    # People undo what the consumers did: an admin lifts ken's suppression (he fixed his
    # mailbox), and frank's lead (registered by his open) may be mailed again (he asked).
    lifted = api.delete("/api/v1/suppressions/ken@client.example")
    assert lifted.status_code == 204, lifted.text
    [frank] = api.get("/api/v1/leads", params={"email": "frank@client.example"}).json()["items"]
    assert frank["do_not_mail"] is True
    cleared = api.patch(f"/api/v1/leads/{frank['id']}", json={"do_not_mail": False})
    assert cleared.status_code == 200, cleared.text
    # The CRM moves on: erin's registered lead is converted, and gina (bounced) is entered
    # as a contact by hand; neither was in the campaign's picture when its events came.
    [erin] = api.get("/api/v1/leads", params={"email": "erin@client.example"}).json()["items"]
    assert api.post(f"/api/v1/leads/{erin['id']}/convert", json={}).status_code in (200, 201)
    gina = {"last_name": "gina", "first_name": "様", "email": "gina@client.example"}
    assert api.post("/api/v1/contacts", json=gina).status_code == 201
    settle_everything(server, receiver)
    return {"org": org, "campaign_id": campaign_id, "list_id": list_id}


def replay_all(server: MailgateServer) -> None:
    def rewind(conn) -> list[int]:
        conn.execute(update(consumer_offsets).values(position=0))
        return list(conn.execute(select(consumer_offsets.c.position)).scalars())

    assert set(server.call(server.db.run_write(rewind))) == {0}


def test_replaying_every_consumer_from_offset_zero_changes_nothing(server, receiver, relay_port):
    built = build_state(server, receiver, relay_port)
    offsets = {r["consumer"]: r["position"] for r in rows(server, select(consumer_offsets))}
    assert {c.name for c in CONSUMERS} <= {n for n, p in offsets.items() if p > 0}, offsets

    before = snapshot(server, receiver)
    # The state is what the test means it to be (else the replay proves little).
    recipients = {r["email"].split("@")[0]: r for r in before["campaign_recipients"].values()}
    assert {n: r["status"] for n, r in recipients.items()} == {
        "alice": "clicked",
        "bob": "sent",
        "erin": "opened",
        "frank": "unsubscribed",
        "gina": "bounced",
        "dave": "complained",
        "ken": "bounced",
    }
    assert recipients["erin"]["registered_module"] == "leads"
    assert any(r["do_not_mail"] for r in before["leads"].values())
    assert {r["reason"] for r in before["suppressions"].values()} >= {
        "hard_bounce",
        "unsubscribe",
        "complaint",
    }
    assert before["record_campaigns"] and before["webhook_deliveries"]
    assert {r["state"] for r in before["webhook_deliveries"].values()} == {"delivered"}
    assert any(r["removed_at"] for r in before["list_members"].values())  # carol

    replay_all(server)
    # Every consumer reads the log again from its start (the running loops or the drain).
    settle_everything(server, receiver)
    again_at = {r["consumer"]: r["position"] for r in rows(server, select(consumer_offsets))}
    assert {n: again_at[n] >= p for n, p in offsets.items()} == dict.fromkeys(offsets, True)
    after = snapshot(server, receiver)

    assert changed_rows(before, after) == {}

    # Only new change runs (and their skips) were added, each with its sync.run event.
    new_runs = [r for k, r in after["sync_runs"].items() if k not in before["sync_runs"]]
    assert new_runs and {r["kind"] for r in new_runs} == {"change"}  # the sync did replay
    new_events = rows(server, select(events).where(events.c.id > before["last_event"]))
    assert Counter(e["type"] for e in new_events) == Counter({"sync.run": len(new_runs)})
    assert after["events"] == before["events"]

    # Their deliveries are new events delivered once; no earlier event was delivered again.
    new_ids = {f"msg_{e['id']}" for e in new_events}
    again = after["received"] - before["received"]
    assert set(again) <= new_ids and all(n == 1 for n in again.values()), again
    assert {k: after["received"][k] for k in before["received"]} == dict(before["received"])
    new_deliveries = [
        r for k, r in after["webhook_deliveries"].items() if k not in before["webhook_deliveries"]
    ]
    assert {f"msg_{r['event_id']}" for r in new_deliveries} == set(again)
    assert built["campaign_id"]


def test_replaying_the_fan_out_queues_nothing_for_endpoints_changed_since(server):
    """An endpoint disabled for a while, and one that subscribed to a type later: the
    events they did not get then must not be queued for them by a replay."""
    receiver = Receiver()
    org = server.org(f"hooks-{secrets.token_hex(3)}")
    admin = server.user(org, f"admin{secrets.token_hex(3)}@example.co.jp", admin=True)
    api = server.api(admin)
    hooks: dict[str, int] = {}
    try:
        for path, types in (
            ("/paused", ["record.created", "record.updated"]),
            ("/narrow", ["record.created"]),
        ):
            made = api.post("/api/v1/webhooks", json={"url": receiver.url(path), "events": types})
            assert made.status_code == 201, made.text
            receiver.secrets[path] = made.json()["secret"]
            hooks[path] = made.json()["id"]
        body = {"last_name": "hana", "email": "hana@client.example"}
        lead = api.post("/api/v1/leads", json=body).json()["id"]
        server.drain_consumers()
        assert api.patch(f"/api/v1/webhooks/{hooks['/paused']}", json={"state": "disabled"})
        assert api.patch(f"/api/v1/leads/{lead}", json={"title": "課長"}).status_code == 200
        server.drain_consumers()
        for hook, change in (
            (hooks["/paused"], {"state": "active"}),
            (hooks["/narrow"], {"events": ["record.created", "record.updated"]}),
        ):
            assert api.patch(f"/api/v1/webhooks/{hook}", json=change).status_code == 200
        server.drain_consumers()
        before = table_rows(server, webhook_deliveries)

        def rewind(conn) -> None:
            conn.execute(
                update(consumer_offsets)
                .where(consumer_offsets.c.consumer == WebhookFanout.name)
                .values(position=0)
            )

        server.call(server.db.run_write(rewind))
        server.drain_consumers()
        added = [
            (r["webhook_id"], r["event_type"])
            for k, r in table_rows(server, webhook_deliveries).items()
            if k not in before
        ]
        assert added == []
    finally:
        for hook in hooks.values():  # the module's other test waits for every delivery
            api.delete(f"/api/v1/webhooks/{hook}")
        receiver.close()
