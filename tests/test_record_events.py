"""Every record change is an event a consumer can read from ``GET /api/v1/events``.

Over the real HTTP API (SQLite and PostgreSQL): creating, patching and
deleting a lead, converting one, and importing a CSV each leave one event per
record, with the record's id and the fields that changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.records.changes import changed_fields
from storage.payloads import created_fields
from tests.test_api_records import new_org

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from gateway.cli.main import main; main()"]


@pytest.fixture
def user(mailgate) -> dict[str, Any]:
    return new_org(mailgate)


def events_after(api: httpx.Client, after: int, *types: str) -> list[dict[str, Any]]:
    items = api.get("/api/v1/events", params={"after": after, "limit": 1000}).json()["items"]
    return [e for e in items if not types or e["type"] in types]


def last_event_id(api: httpx.Client) -> int:
    items = events_after(api, 0)
    return items[-1]["id"] if items else 0


def test_create_patch_delete_of_a_lead_are_three_events_with_id_and_changed_fields(mailgate, user):
    with mailgate.api(user) as api:
        start = last_event_id(api)
        lead = api.post(
            "/api/v1/leads",
            json={"last_name": "佐藤", "email": "sato@ex.example.jp", "company": "顧客商事"},
        ).json()
        # "company" is sent unchanged: only last_name is reported as changed.
        assert (
            api.patch(
                f"/api/v1/leads/{lead['id']}", json={"last_name": "鈴木", "company": "顧客商事"}
            ).status_code
            == 200
        )
        assert api.delete(f"/api/v1/leads/{lead['id']}").status_code == 204

        got = events_after(api, start, "record.created", "record.updated", "record.deleted")
    assert [e["type"] for e in got] == ["record.created", "record.updated", "record.deleted"]
    created, updated, deleted = (e["data"] for e in got)
    assert {d["module"] for d in (created, updated, deleted)} == {"leads"}
    assert {d["id"] for d in (created, updated, deleted)} == {lead["id"]}
    assert created["source"] == "api" and created["user_id"] == user["id"]
    assert created["changed"]["last_name"] == "佐藤"
    assert created["changed"]["email"] == "sato@ex.example.jp"
    assert updated["changed"] == {"last_name": "鈴木"}
    assert deleted["changed"] == {"email": "sato@ex.example.jp"}


def test_a_patch_that_changes_nothing_emits_nothing(mailgate, user):
    with mailgate.api(user) as api:
        lead = api.post("/api/v1/leads", json={"last_name": "佐藤"}).json()
        start = last_event_id(api)
        assert api.patch(f"/api/v1/leads/{lead['id']}", json={"last_name": "佐藤"}).is_success
        assert events_after(api, start) == []


def test_conversion_emits_the_new_records_the_lead_update_and_the_conversion(mailgate, user):
    with mailgate.api(user) as api:
        lead = api.post(
            "/api/v1/leads", json={"last_name": "佐藤", "email": "c@ex.example.jp"}
        ).json()
        start = last_event_id(api)
        result = api.post(f"/api/v1/leads/{lead['id']}/convert", json={"deal": {}}).json()
        got = events_after(api, start)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in got:
        by_type.setdefault(e["type"], []).append(e["data"])
    assert sorted((d["module"], d["id"]) for d in by_type["record.created"]) == sorted(
        [
            ("accounts", result["account_id"]),
            ("contacts", result["contact_id"]),
            ("deals", result["deal_id"]),
        ]
    )
    assert all(d["source"] == "conversion" for d in by_type["record.created"])
    [update] = by_type["record.updated"]
    assert (update["module"], update["id"]) == ("leads", lead["id"])
    assert update["changed"]["status"] == "converted"
    assert update["changed"]["converted_contact_id"] == result["contact_id"]
    [conversion] = by_type["record.converted"]
    assert conversion["lead_id"] == lead["id"] and conversion["deal_id"] == result["deal_id"]


def test_a_csv_import_of_three_rows_is_three_record_created_events_with_distinct_ids(
    mailgate, user, tmp_path
):
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "first_name,last_name,email\n"
        "Taro,Yamada,taro@import.example.jp\n"
        "Hanako,Sato,hanako@import.example.jp\n"
        "花子,佐藤,sato@import.example.jp\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MAILGATE_DATABASE_URL": mailgate.settings.database_url,
        "MAILGATE_DATA_DIR": str(tmp_path / "data"),
        "MAILGATE_MAIL_DOMAIN": "mailgate.test",
    }
    with mailgate.api(user) as api:
        start = last_event_id(api)
        proc = subprocess.run(
            [*CLI, "import", "leads", str(csv), "--org", str(user["org_id"])],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        got = events_after(api, start, "record.created")
        listed = api.get("/api/v1/leads", params={"limit": 1000}).json()["items"]
    assert len(got) == 3
    ids = [e["data"]["id"] for e in got]
    assert len(set(ids)) == 3
    assert all(e["data"]["source"] == "import" for e in got)
    by_email = {r["email"]: r["id"] for r in listed}
    assert {e["data"]["changed"]["email"]: e["data"]["id"] for e in got} == {
        email: by_email[email]
        for email in (
            "taro@import.example.jp",
            "hanako@import.example.jp",
            "sato@import.example.jp",
        )
    }


# -- what counts as changed (pure) ---------------------------------------------------


def test_changed_fields_reports_only_new_values_and_hides_bookkeeping():
    before = {"id": 1, "last_name": "佐藤", "amount": Decimal("100.00"), "email_norm": "a@x.jp"}
    after = {"last_name": "鈴木", "amount": Decimal("100"), "email_norm": "b@x.jp"}
    assert changed_fields(before, after) == {"last_name": "鈴木"}


def test_created_fields_leave_out_unset_values():
    assert created_fields({"last_name": "佐藤", "phone": None, "email_norm": "a@x.jp"}) == {
        "last_name": "佐藤"
    }
