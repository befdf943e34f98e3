"""Daily quotas: plan limits, the org's local day (DST-correct), refusals, spill-over,
concurrency at the limit, and what ops see (API, CLI, /metrics).

The clock is injected (``services.clock``), so 23:59:59 and 00:00:00 are
tested without waiting for midnight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from gateway.clock import FixedClock, SystemClock
from gateway.org.plans import daily_limit
from gateway.sending import quota as rules
from gateway.sending.quota import quota_day
from storage.schema_sending import quota_usage, sends

TOKYO = ZoneInfo("Asia/Tokyo")
NEW_YORK = ZoneInfo("America/New_York")
CLI = "from gateway.cli.main import main; main()"


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("kind", "plan", "users", "addon", "limit"),
    [
        ("individual", "free", 1, 0, 50),
        ("individual", "free", 4, 0, 200),
        ("individual", "free", 9, 0, 200),  # the free plan counts at most 4 users
        ("individual", "standard", 3, 0, 900),
        ("individual", "enterprise", 10, 0, 3000),
        ("mass", "free", 3, 0, 0),
        ("mass", "standard", 3, 0, 250),
        ("mass", "professional", 3, 0, 500),
        ("mass", "enterprise", 3, 0, 1000),
        ("mass", "enterprise", 3, 1000, 2000),
        ("mass", "enterprise", 3, 5000, 2250),  # the add-on is capped
    ],
)
def test_plan_limits(kind, plan, users, addon, limit):
    assert daily_limit(kind, plan, users, addon) == limit


def test_tokyo_day_turns_at_local_midnight():
    before = datetime(2026, 11, 23, 23, 59, 59, tzinfo=TOKYO)
    after = datetime(2026, 11, 24, 0, 0, 0, tzinfo=TOKYO)
    assert quota_day(before, TOKYO).day == "2026-11-23"
    assert quota_day(after, TOKYO).day == "2026-11-24"
    assert quota_day(before, TOKYO).resets_at.isoformat() == "2026-11-24T00:00:00+09:00"
    # 15:00 UTC is already tomorrow in Tokyo.
    assert quota_day(datetime(2026, 11, 23, 15, 0, tzinfo=UTC), TOKYO).day == "2026-11-24"


def elapsed(day: rules.QuotaDay) -> timedelta:
    """Real time between the day's midnights (same-zone subtraction would use wall time)."""
    return day.resets_at.astimezone(UTC) - day.starts_at.astimezone(UTC)


def test_new_york_days_are_23_and_25_hours_long_across_dst():
    spring = quota_day(datetime(2026, 3, 8, 12, tzinfo=NEW_YORK), NEW_YORK)
    assert spring.starts_at.isoformat() == "2026-03-08T00:00:00-05:00"
    assert spring.resets_at.isoformat() == "2026-03-09T00:00:00-04:00"
    assert elapsed(spring) == timedelta(hours=23)
    autumn = quota_day(datetime(2026, 11, 1, 12, tzinfo=NEW_YORK), NEW_YORK)
    assert elapsed(autumn) == timedelta(hours=25)
    # 23:59:59 and 00:00:00 local on the day after spring-forward, seen as UTC instants.
    assert quota_day(datetime(2026, 3, 9, 3, 59, 59, tzinfo=UTC), NEW_YORK).day == "2026-03-08"
    assert quota_day(datetime(2026, 3, 9, 4, 0, 0, tzinfo=UTC), NEW_YORK).day == "2026-03-09"


def test_warning_and_exhaustion_thresholds_are_crossed_once():
    assert rules.crossings(39, 40, 50) == rules.Crossing(True, False)
    assert rules.crossings(40, 41, 50) == rules.Crossing(False, False)
    assert rules.crossings(0, 50, 50) == rules.Crossing(True, True)
    assert rules.crossings(50, 50, 50) == rules.Crossing(False, False)


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def clock(mailgate):
    fixed = FixedClock(datetime(2026, 11, 23, 12, 0, tzinfo=TOKYO))
    mailgate.running.services.clock = fixed
    yield fixed
    mailgate.running.services.clock = SystemClock()


def seed_usage(server, org_id: int, kind: str, day: str, used: int) -> None:
    def write(conn):
        conn.execute(
            quota_usage.insert().values(org_id=org_id, kind=kind, day=day, used=used, warned=False)
        )

    server.call(server.db.run_write(write))


def counter(server, org_id: int, kind: str, day: str) -> int:
    def read(conn):
        q = select(quota_usage.c.used).where(
            quota_usage.c.org_id == org_id, quota_usage.c.kind == kind, quota_usage.c.day == day
        )
        return conn.execute(q).scalar() or 0

    return server.call(server.db.run_read(read))


def send_count(server, org_id: int) -> int:
    def read(conn):
        return conn.execute(
            select(func.count()).select_from(sends).where(sends.c.org_id == org_id)
        ).scalar_one()

    return server.call(server.db.run_read(read))


def leads(api, n: int, prefix: str) -> list[int]:
    ids = []
    for i in range(n):
        r = api.post(
            "/api/v1/leads", json={"last_name": f"L{i}", "email": f"{prefix}{i}@example.net"}
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def one(lead_id: int) -> dict:
    return {"to": [{"module": "leads", "id": lead_id}], "subject": "hello", "text": "hi"}


def test_individual_quota_refuses_at_23_59_59_and_resets_at_tokyo_midnight(mailgate, clock):
    org = mailgate.org("quota-tokyo", plan="free", timezone="Asia/Tokyo")
    user = mailgate.user(org, "me@tokyo.example")
    api = mailgate.api(user)
    lead_ids = leads(api, 3, "tokyo")
    clock.at = datetime(2026, 11, 23, 23, 59, 59, tzinfo=TOKYO)
    seed_usage(mailgate, org["id"], "individual", "2026-11-23", 49)

    assert api.post("/api/v1/emails", json=one(lead_ids[0])).status_code == 202
    refused = api.post("/api/v1/emails", json=one(lead_ids[1]))
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["resets_at"] == "2026-11-24T00:00:00+09:00"
    assert "resets" in error["message"]
    assert counter(mailgate, org["id"], "individual", "2026-11-23") == 50

    quota = api.get("/api/v1/quota").json()
    assert {k: quota["individual"][k] for k in ("used", "limit", "remaining", "resets_at")} == {
        "used": 50,
        "limit": 50,
        "remaining": 0,
        "resets_at": "2026-11-24T00:00:00+09:00",
    }
    assert quota["mass"]["limit"] == 0

    clock.at = datetime(2026, 11, 24, 0, 0, 0, tzinfo=TOKYO)
    assert api.post("/api/v1/emails", json=one(lead_ids[1])).status_code == 202
    assert api.get("/api/v1/quota").json()["individual"]["used"] == 1

    types = [e["type"] for e in api.get("/api/v1/events?limit=1000").json()["items"]]
    assert types.count("quota.warning") == 1 and types.count("quota.exhausted") == 1


def test_bulk_send_that_does_not_fit_is_refused_whole_or_spills_into_the_next_day(mailgate, clock):
    org = mailgate.org("quota-newyork", plan="standard", timezone="America/New_York")
    user = mailgate.user(org, "me@ny.example")
    api = mailgate.api(user)
    lead_ids = leads(api, 5, "ny")
    clock.at = datetime(2026, 3, 8, 22, 0, tzinfo=NEW_YORK)  # the 23-hour day
    seed_usage(mailgate, org["id"], "mass", "2026-03-08", 248)
    body = {
        "to": [{"module": "leads", "id": i} for i in lead_ids],
        "subject": "s",
        "html": "<p>x</p>",
    }

    refused = api.post("/api/v1/emails/bulk", json=body)
    assert refused.status_code == 429
    assert refused.json()["error"]["resets_at"] == "2026-03-09T00:00:00-04:00"
    assert send_count(mailgate, org["id"]) == 0  # nothing half-sent
    assert counter(mailgate, org["id"], "mass", "2026-03-08") == 248

    spilled = api.post("/api/v1/emails/bulk", json={**body, "defer_excess": True})
    assert spilled.status_code == 202, spilled.text
    statuses = [s["status"] for s in spilled.json()["sends"]]
    assert statuses == ["queued", "queued", "scheduled", "scheduled", "scheduled"]
    assert spilled.json()["sends"][-1]["send_at"] == "2026-03-09T00:00:00-04:00"
    assert counter(mailgate, org["id"], "mass", "2026-03-08") == 250
    assert counter(mailgate, org["id"], "mass", "2026-03-09") == 3


def test_fifty_concurrent_senders_at_the_limit_never_exceed_it(mailgate, clock):
    org = mailgate.org("quota-race", plan="free", timezone="Asia/Tokyo")
    user = mailgate.user(org, "me@race.example")
    api = mailgate.api(user)
    lead_ids = leads(api, 50, "race")
    clock.at = datetime(2026, 11, 23, 10, 0, tzinfo=TOKYO)
    seed_usage(mailgate, org["id"], "individual", "2026-11-23", 40)

    def post(lead_id: int) -> int:
        with mailgate.api(user) as client:
            return client.post("/api/v1/emails", json=one(lead_id)).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(post, lead_ids))
    assert sorted(set(codes)) == [202, 429]
    assert codes.count(202) == 10
    assert counter(mailgate, org["id"], "individual", "2026-11-23") == 50
    assert send_count(mailgate, org["id"]) == 10


def test_quota_is_on_metrics_and_on_the_command_line(mailgate, clock, database_url):
    org = mailgate.org("quota-ops", plan="enterprise", timezone="Asia/Tokyo")
    mailgate.user(org, "ops@ops.example")
    text = mailgate.api({"api_token": "x"}).get("/metrics").text
    assert (
        f'mailgate_quota_limit{{kind="mass",org="quota-ops",org_id="{org["id"]}"}} 1000.0' in text
    )
    assert 'mailgate_quota_used{kind="individual",org="quota-ops"' in text

    env = {**os.environ, "MAILGATE_DATABASE_URL": database_url}
    run = subprocess.run(
        [sys.executable, "-c", CLI, "quota", "--org", "quota-ops", "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["mass"]["limit"] == 1000 and data["individual"]["limit"] == 300
    assert data["individual"]["resets_at"].endswith("+09:00")
    missing = subprocess.run(
        [sys.executable, "-c", CLI, "quota", "--org", "nope"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert missing.returncode != 0 and missing.stderr.startswith("error: no organization")
