"""The syncs API and the consumer's runtime over a running mailgate (SQLite and PostgreSQL).

Immediacy with the server's own consumer loop (no draining), full resyncs on
demand, pause and resume, the 5/15 limits (also under concurrent creates),
run history with each skipped record's reason, org isolation, hostile input,
a replay of the whole log that changes no member, and a 10,000-lead tab.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, update

from gateway.addresses import normalise
from gateway.clock import SystemClock
from storage.db import Database
from storage.schema import consumer_offsets, leads
from storage.schema_campaigns import list_members
from sync.crm_to_campaigns import CrmToCampaigns
from tests.support.campaigns import make_list, members
from tests.support.server import wait_until
from tests.test_api_records import new_org
from tests.test_syncs_rules import last_full, lead, on_list, runs, skipped, start_sync, write


@pytest.fixture
def user(mailgate) -> dict[str, Any]:
    return new_org(mailgate)


@pytest.fixture
def api(mailgate, user) -> httpx.Client:
    with mailgate.api(user) as client:
        yield client


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


# -- immediacy and runs ----------------------------------------------------------------------


def test_record_changes_reach_the_list_within_seconds_with_the_servers_own_loop(
    mailgate, user, api
):
    list_id = make_list(mailgate, user["org"], "live")
    start_sync(api, list_id)
    rec = lead(api, email="live@kokyaku.example.jp", first_name="即時")
    wait_until(lambda: "live@kokyaku.example.jp" in on_list(mailgate, list_id), timeout=5)
    api.patch(f"/api/v1/leads/{rec['id']}", json={"first_name": "変更"})
    wait_until(
        lambda: on_list(mailgate, list_id)["live@kokyaku.example.jp"]["first_name"] == "変更",
        timeout=5,
    )
    api.post(f"/api/v1/leads/{rec['id']}/convert", json={})
    api.delete(f"/api/v1/leads/{rec['id']}")
    wait_until(lambda: not on_list(mailgate, list_id), timeout=5)


def test_a_full_resync_on_demand_restores_what_drifted(mailgate, user, api):
    lead(api, email="drift@kokyaku.example.jp", first_name="正")
    list_id = make_list(mailgate, user["org"], "drift")
    sync_id = start_sync(api, list_id)
    mailgate.drain_consumers()
    write(
        mailgate,
        update(list_members).where(list_members.c.list_id == list_id).values(first_name="誤"),
    )
    r = api.post(f"/api/v1/syncs/{sync_id}/run")
    assert r.status_code == 202
    assert r.json()["full_run_requested"] is True
    mailgate.drain_consumers()
    assert on_list(mailgate, list_id)["drift@kokyaku.example.jp"]["first_name"] == "正"
    full = last_full(api, sync_id)
    assert (full["total"], full["updated"], full["added"]) == (1, 1, 0)
    assert (
        api.get(f"/api/v1/syncs/{sync_id}").json()["last_run"]["id"] == runs(api, sync_id)[0]["id"]
    )


def test_a_paused_sync_ignores_changes_and_resume_catches_up_in_full(mailgate, user, api):
    list_id = make_list(mailgate, user["org"], "paused")
    sync_id = start_sync(api, list_id)
    mailgate.drain_consumers()
    assert api.post(f"/api/v1/syncs/{sync_id}/pause").json()["state"] == "paused"
    lead(api, email="while@kokyaku.example.jp")
    mailgate.drain_consumers()
    assert on_list(mailgate, list_id) == {}
    assert error(api.post(f"/api/v1/syncs/{sync_id}/run"), 409)["code"] == "sync_paused"
    assert api.post(f"/api/v1/syncs/{sync_id}/resume").json()["state"] == "active"
    mailgate.drain_consumers()
    assert set(on_list(mailgate, list_id)) == {"while@kokyaku.example.jp"}
    assert runs(api, sync_id)[0]["kind"] == "full"


def test_run_history_counts_and_lists_every_skipped_record_with_its_reason(mailgate, user, api):
    ok = lead(api, email="ok@kokyaku.example.jp")
    role = lead(api, email="info@kokyaku.example.jp")
    dnm = lead(api, email="dnm@kokyaku.example.jp", do_not_mail=True)
    none = lead(api, last_name="アドレス無し")
    mailgate.drain_consumers()
    list_id = make_list(mailgate, user["org"], "history")
    sync_id = start_sync(api, list_id)
    mailgate.drain_consumers()
    [full] = runs(api, sync_id)
    assert {k: full[k] for k in ("kind", "total", "added", "updated", "removed", "skipped")} == {
        "kind": "full",
        "total": 4,
        "added": 1,
        "updated": 0,
        "removed": 0,
        "skipped": 3,
    }
    assert full["skipped_reasons"] == {"role_address": 1, "do_not_mail": 1, "invalid_email": 1}
    assert full["started_at"] <= full["finished_at"]
    assert sorted(
        (s["module"], s["id"], s["email"], s["reason"]) for s in skipped(api, sync_id, full["id"])
    ) == sorted(
        [
            ("leads", role["id"], "info@kokyaku.example.jp", "role_address"),
            ("leads", dnm["id"], "dnm@kokyaku.example.jp", "do_not_mail"),
            ("leads", none["id"], None, "invalid_email"),
        ]
    )
    assert ok["id"] in {m["record_id"] for m in members(mailgate, list_id)}
    # Each run is also a sync.run event in the org's log.
    logged = api.get("/api/v1/events", params={"limit": 1000}).json()["items"]
    [event] = [e for e in logged if e["type"] == "sync.run" and e["data"]["run_id"] == full["id"]]
    assert event["data"]["skipped_reasons"] == full["skipped_reasons"]
    assert (event["data"]["sync_id"], event["data"]["list_id"]) == (sync_id, list_id)


def test_patching_the_settings_resyncs_every_member(mailgate, user, api):
    lead(api, email="patch@kokyaku.example.jp", title="課長")
    list_id = make_list(mailgate, user["org"], "patched")
    sync_id = start_sync(api, list_id)
    mailgate.drain_consumers()
    r = api.patch(f"/api/v1/syncs/{sync_id}", json={"field_map": {"title": "title"}})
    assert r.status_code == 200, r.text
    assert r.json()["field_map"] == {"title": "title"}
    assert r.json()["mapping"] == {
        "email": "email",
        "first_name": "first_name",
        "last_name": "last_name",
        "company": "company",
        "title": "title",
    }
    mailgate.drain_consumers()
    assert on_list(mailgate, list_id)["patch@kokyaku.example.jp"]["fields"] == {"title": "課長"}


# -- limits ----------------------------------------------------------------------------------


def test_a_sixth_active_sync_of_a_user_is_refused_and_resume_counts_too(mailgate, user, api):
    ids = [start_sync(api, make_list(mailgate, user["org"], f"u{i}")) for i in range(5)]
    sixth = make_list(mailgate, user["org"], "u5")
    body = {
        "module": "leads",
        "list_id": sixth,
        "subscription": "marketing",
        "do_not_mail": "exclude",
    }
    err = error(api.post("/api/v1/syncs", json=body), 409)
    assert (err["code"], err["limit"]) == ("sync_limit", "user")
    assert "5" in err["message"]
    api.post(f"/api/v1/syncs/{ids[0]}/pause")
    assert api.post("/api/v1/syncs", json=body).status_code == 201
    err = error(api.post(f"/api/v1/syncs/{ids[0]}/resume"), 409)
    assert err["code"] == "sync_limit"


def test_a_sixteenth_active_sync_of_an_org_is_refused(mailgate, user, api):
    org = user["org"]
    for n in range(3):
        colleague = mailgate.user(org, f"user{n}@org-limit{org['id']}.example.jp")
        with mailgate.api(colleague) as their:
            for i in range(5):
                start_sync(their, make_list(mailgate, org, f"o{n}-{i}"))
    body = {
        "module": "contacts",
        "list_id": make_list(mailgate, org, "o-last"),
        "subscription": "non_marketing",
        "do_not_mail": "remove",
    }
    err = error(api.post("/api/v1/syncs", json=body), 409)
    assert (err["code"], err["limit"]) == ("sync_limit", "org")
    assert "15" in err["message"]


def test_concurrent_creates_never_pass_the_limit(mailgate, user, api):
    lists = [make_list(mailgate, user["org"], f"race{i}") for i in range(12)]

    def create(list_id: int) -> int:
        with mailgate.api(user) as client:
            body = {
                "module": "leads",
                "list_id": list_id,
                "subscription": "marketing",
                "do_not_mail": "exclude",
            }
            return client.post("/api/v1/syncs", json=body).status_code

    with ThreadPoolExecutor(12) as pool:
        codes = sorted(pool.map(create, lists))
    assert codes == [201] * 5 + [409] * 7
    assert sum(s["state"] == "active" for s in api.get("/api/v1/syncs").json()["items"]) == 5


def test_a_second_sync_of_one_tab_into_one_list_is_refused(mailgate, user, api):
    list_id = make_list(mailgate, user["org"], "one-per-tab")
    first = start_sync(api, list_id)
    body = {
        "module": "leads",
        "list_id": list_id,
        "subscription": "marketing",
        "do_not_mail": "exclude",
    }
    err = error(api.post("/api/v1/syncs", json=body), 409)
    assert (err["code"], err["sync_id"]) == ("sync_exists", first)
    assert start_sync(api, list_id, "contacts")


# -- isolation and hostile input ------------------------------------------------------------------


def test_another_orgs_syncs_and_lists_are_not_found(mailgate, user, api):
    sync_id = start_sync(api, make_list(mailgate, user["org"], "mine"))
    other = new_org(mailgate)
    theirs = make_list(mailgate, other["org"], "theirs")
    with mailgate.api(other) as them:
        for method, path in [
            ("GET", f"/api/v1/syncs/{sync_id}"),
            ("PATCH", f"/api/v1/syncs/{sync_id}"),
            ("DELETE", f"/api/v1/syncs/{sync_id}"),
            ("POST", f"/api/v1/syncs/{sync_id}/pause"),
            ("POST", f"/api/v1/syncs/{sync_id}/resume"),
            ("POST", f"/api/v1/syncs/{sync_id}/run"),
            ("GET", f"/api/v1/syncs/{sync_id}/runs"),
            ("GET", f"/api/v1/syncs/{sync_id}/runs/1/skipped"),
        ]:
            kw = {"json": {}} if method == "PATCH" else {}
            assert them.request(method, path, **kw).status_code == 404, path
        assert them.get("/api/v1/syncs").json()["items"] == []
    body = {
        "module": "leads",
        "list_id": theirs,
        "subscription": "marketing",
        "do_not_mail": "exclude",
    }
    assert error(api.post("/api/v1/syncs", json=body), 404)["code"] == "not_found"
    assert api.get(f"/api/v1/syncs/{sync_id}").status_code == 200


BASE = {"module": "leads", "subscription": "marketing", "do_not_mail": "exclude"}


@pytest.mark.parametrize(
    "change",
    [
        {"module": "deals"},
        {"module": ["leads"]},
        {"list_id": "1"},
        {"list_id": True},
        {"list_id": 2**70},
        {"subscription": "spam"},
        {"consent": "maybe"},
        {"do_not_mail": "delete"},
        {"do_not_mail": None},
        {"exclude_converted": "yes"},
        {"update_empty_only": 1},
        {"update_empty_only": True, "update_empty_values": False},
        {"field_map": []},
        {"field_map": {"title": "password"}},
        {"field_map": {"email": "phone"}},
        {"field_map": {"Bad Name": "title"}},
        {"field_map": {"x": "account.name"}},
        {"field_map": {"x": 5}},
        {"field_map": {f"f{i}": "title" for i in range(51)}},
        {"filter": {"owner_id": "1"}},
        {"filter": {"status": 1}},
        {"filter": "status=qualified"},
        {"legal_basis": "x" * 41},
        {"colour": "blue"},
    ],
)
def test_hostile_or_malformed_bodies_are_refused_with_422(mailgate, user, api, change):
    body = {
        **BASE,
        "list_id": make_list(mailgate, user["org"], f"h{time.monotonic_ns()}"),
        **change,
    }
    assert api.post("/api/v1/syncs", json=body).status_code == 422


def test_hostile_patches_and_paths_are_refused_clearly(mailgate, user, api):
    sync_id = start_sync(api, make_list(mailgate, user["org"], "hostile"))
    assert api.patch(f"/api/v1/syncs/{sync_id}", json={"module": "contacts"}).status_code == 422
    assert (
        api.patch(
            f"/api/v1/syncs/{sync_id}", content=rb'{"field_map": {"a": "\ud800"}}'
        ).status_code
        == 422
    )
    assert api.patch(f"/api/v1/syncs/{sync_id}", content=b"[1]").status_code == 400
    assert api.get("/api/v1/syncs/99999999999999999999").status_code == 404
    assert api.get(f"/api/v1/syncs/{sync_id}/runs", params={"limit": "x"}).status_code == 400
    assert api.get(f"/api/v1/syncs/{sync_id}/runs/abc/skipped").status_code == 404
    assert api.post("/api/v1/syncs", json={"module": "leads"}).status_code == 422


# -- replay and scale ----------------------------------------------------------------------


def test_replaying_the_log_from_offset_zero_changes_no_member(mailgate, user, api):
    a = lead(api, email="replay-a@kokyaku.example.jp", first_name="甲")
    b = lead(api, email="replay-b@kokyaku.example.jp")
    c = lead(api, email="replay-c@kokyaku.example.jp")
    list_id = make_list(mailgate, user["org"], "replay")
    start_sync(api, list_id, do_not_mail="remove")
    mailgate.drain_consumers()
    api.patch(f"/api/v1/leads/{a['id']}", json={"email": "replay-a2@kokyaku.example.jp"})
    api.patch(f"/api/v1/leads/{b['id']}", json={"do_not_mail": True})
    api.delete(f"/api/v1/leads/{c['id']}")
    mailgate.drain_consumers()
    before = members(mailgate, list_id)
    write(
        mailgate,
        update(consumer_offsets)
        .where(consumer_offsets.c.consumer == "crm_to_campaigns")
        .values(position=0),
    )
    mailgate.drain_consumers()
    assert members(mailgate, list_id) == before


def test_a_tab_of_ten_thousand_leads_syncs_in_one_full_run(mailgate, user, api):
    org_id, now = user["org"]["id"], datetime.now(UTC)
    rows = [
        {
            "org_id": org_id,
            "last_name": f"姓{i}",
            "first_name": f"名{i}",
            "email": f"bulk{i}@kokyaku.example.jp",
            "email_norm": normalise(f"bulk{i}@kokyaku.example.jp"),
            "company": "大量商事",
            "created_at": now,
            "updated_at": now,
        }
        for i in range(10_000)
    ]
    mailgate.call(mailgate.db.run_write(lambda conn: conn.execute(insert(leads), rows)))
    list_id = make_list(mailgate, user["org"], "bulk")
    started = time.monotonic()
    sync_id = start_sync(api, list_id)
    mailgate.drain_consumers()
    took = time.monotonic() - started
    assert len(on_list(mailgate, list_id)) == 10_000
    full = last_full(api, sync_id)
    assert (full["total"], full["added"]) == (10_000, 10_000)
    assert took < 60, f"10,000 leads took {took:.1f} s"
    # A second full run reads them all again and writes nothing.
    api.post(f"/api/v1/syncs/{sync_id}/run")
    mailgate.drain_consumers()
    again = last_full(api, sync_id)
    assert (again["total"], again["added"], again["updated"]) == (10_000, 0, 0)


def test_a_full_run_request_is_claimed_once_by_competing_sync_processes(mailgate, user, api):
    """Three more consumers (each with its own engine, as separate processes) race the server's."""
    for i in range(30):
        lead(api, email=f"race{i}@kokyaku.example.jp")
    mailgate.drain_consumers()
    list_id = make_list(mailgate, user["org"], "claimed")
    sync_id = start_sync(api, list_id)

    async def race() -> None:
        contenders = [
            CrmToCampaigns(Database(mailgate.settings.database_url), SystemClock())
            for _ in range(3)
        ]
        try:
            await asyncio.gather(*(c.run_once() for c in contenders))
        finally:
            for c in contenders:
                await c.db.dispose()

    mailgate.call(race())
    mailgate.drain_consumers()
    assert [r["kind"] for r in runs(api, sync_id)] == ["full"]
    assert len(on_list(mailgate, list_id)) == 30


POISON = "poison@kokyaku.example.jp"
TRIGGERS = {
    "sqlite": [
        "CREATE TRIGGER poison_member BEFORE INSERT ON list_members "
        f"WHEN NEW.email_norm = '{POISON}' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION poison_member() RETURNS trigger AS $$ BEGIN "
        f"IF NEW.email_norm = '{POISON}' THEN RAISE EXCEPTION 'poisoned'; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER poison_member BEFORE INSERT ON list_members "
        "FOR EACH ROW EXECUTE FUNCTION poison_member()",
    ],
}
UNDO = {
    "sqlite": ["DROP TRIGGER poison_member"],
    "postgresql": ["DROP TRIGGER poison_member ON list_members", "DROP FUNCTION poison_member()"],
}


def run_sql(mailgate, statements: list[str]) -> None:
    def go(conn) -> None:
        for sql in statements:
            conn.exec_driver_sql(sql)

    mailgate.call(mailgate.db.run_write(go))


def test_a_record_the_database_refuses_never_holds_back_its_neighbours(mailgate, user, api):
    """A member insert the database refuses (here a trigger) costs that record only."""
    list_id = make_list(mailgate, user["org"], "poisoned")
    sync_id = start_sync(api, list_id)
    mailgate.drain_consumers()
    dialect = mailgate.db.dialect
    run_sql(mailgate, TRIGGERS[dialect])
    try:
        lead(api, email="before@kokyaku.example.jp")
        lead(api, email=POISON)
        lead(api, email="after@kokyaku.example.jp")
        mailgate.drain_consumers()
        assert set(on_list(mailgate, list_id)) == {
            "before@kokyaku.example.jp",
            "after@kokyaku.example.jp",
        }
        # The consumer moved on: later changes still arrive.
        lead(api, email="later@kokyaku.example.jp")
        mailgate.drain_consumers()
        assert "later@kokyaku.example.jp" in on_list(mailgate, list_id)
        assert mailgate.running.services.runner("crm_to_campaigns").healthy
    finally:
        run_sql(mailgate, UNDO[dialect])
    assert sum(r["added"] for r in runs(api, sync_id)) == 3


def test_rounds_running_side_by_side_lose_no_change(mailgate, user, api):
    """The loop's rounds and drain()'s overlap (on PostgreSQL on one event loop): none is lost."""
    list_id = make_list(mailgate, user["org"], "side-by-side")
    start_sync(api, list_id)
    mailgate.drain_consumers()

    def create(i: int) -> None:
        with mailgate.api(user) as client:
            lead(client, email=f"side{i}@kokyaku.example.jp")

    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(create, i) for i in range(120)]
        while not all(f.done() for f in pending):
            mailgate.drain_consumers()
        for f in pending:
            f.result()
    mailgate.drain_consumers()
    assert len(on_list(mailgate, list_id)) == 120
