"""Email reports over real HTTP: buckets in the org's zone, A/B by template version,
per user with received mail, who did not respond, and a record's per-send status."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from storage.schema import message_links, messages
from tests.support.sends import make_send

T0 = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)  # Monday 10:00 in Tokyo


@pytest.fixture
def org(mailgate):
    org = mailgate.org(f"reports-{secrets.token_hex(4)}", timezone="Asia/Tokyo")
    return org, mailgate.user(org, f"a{secrets.token_hex(3)}@example.co.jp")


def _send(mailgate, org, user, at, **status):
    return make_send(mailgate, org, user, sent_at=at, to=f"{secrets.token_hex(4)}@x.jp", **status)


def _incoming(
    mailgate, org, user, at, *, module=None, record_id=None, send_id=None, direction="incoming"
):
    async def go():
        async with mailgate.db.begin() as conn:
            mid = (
                await conn.execute(
                    insert(messages).values(
                        org_id=org["id"],
                        user_id=user["id"],
                        message_id=f"<{secrets.token_hex(6)}@x.jp>",
                        content_hash=secrets.token_hex(32),
                        subject="Re: ご案内",
                        from_addr="taro@x.jp",
                        to_addrs=[{"email": user["email"], "name": ""}],
                        cc_addrs=[],
                        direction=direction,
                        source="dropbox",
                        raw=b"x",
                        size=1,
                        send_id=send_id,
                        created_at=at,
                        date=at,
                    )
                )
            ).inserted_primary_key[0]
            if module:
                await conn.execute(
                    insert(message_links).values(
                        org_id=org["id"], message_id=mid, module=module, record_id=record_id
                    )
                )
            return mid

    return mailgate.call(go())


def test_report_by_template_splits_versions_and_counts_people_only(mailgate, org):
    o, u = org
    # Version 1: 4 sent, 1 bounced, 2 opened, 1 clicked.  Version 2: 2 sent, 2 opened.
    _send(mailgate, o, u, T0, template_id=None, template_version=1, bounced_at=T0, status="bounced")
    for opened, clicked in ((True, True), (True, False), (False, False)):
        _send(
            mailgate,
            o,
            u,
            T0 + timedelta(hours=1),
            template_version=1,
            opened_at=T0 + timedelta(hours=2) if opened else None,
            clicked_at=T0 + timedelta(hours=2) if clicked else None,
        )
    for _ in range(2):
        _send(mailgate, o, u, T0, template_version=2, opened_at=T0 + timedelta(hours=3))
    api = mailgate.api(u)
    r = api.get(
        "/api/v1/reports/emails",
        params={"from": "2026-11-01", "to": "2026-11-30", "group": "month", "by": "template"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timezone"] == "Asia/Tokyo"
    by_version = {i["template_version"]: i for i in body["items"]}
    v1, v2 = by_version[1], by_version[2]
    assert v1["period"] == "2026-11"
    assert v1["sent"] == 4 and v1["bounced"] == {"n": 1, "pct": 25.0}
    assert v1["opened"] == {"n": 2, "pct": 66.7} and v1["clicked"] == {"n": 1, "pct": 33.3}
    assert v2["sent"] == 2 and v2["opened"] == {"n": 2, "pct": 100.0}
    [total] = body["totals"]
    assert total["sent"] == 6 and total["opened"]["n"] == 4


def test_days_and_weeks_are_the_orgs_local_calendar(mailgate, org):
    o, u = org
    # 2026-11-08 16:30 UTC is Monday 2026-11-09 01:30 in Tokyo: next day, next week.
    _send(mailgate, o, u, datetime(2026, 11, 8, 14, 0, tzinfo=UTC))
    _send(mailgate, o, u, datetime(2026, 11, 8, 16, 30, tzinfo=UTC))
    api = mailgate.api(u)
    days = api.get(
        "/api/v1/reports/emails", params={"from": "2026-11-01", "to": "2026-11-15"}
    ).json()
    assert [(t["period"], t["sent"]) for t in days["totals"]] == [
        ("2026-11-08", 1),
        ("2026-11-09", 1),
    ]
    weeks = api.get(
        "/api/v1/reports/emails", params={"from": "2026-11-01", "to": "2026-11-15", "group": "week"}
    ).json()
    assert [(t["period"], t["sent"]) for t in weeks["totals"]] == [
        ("2026-11-02", 1),
        ("2026-11-09", 1),
    ]
    # "to" as a date is the whole local day; an instant is exact.
    narrow = api.get(
        "/api/v1/reports/emails", params={"from": "2026-11-09T00:00:00+09:00", "to": "2026-11-09"}
    ).json()
    assert [t["sent"] for t in narrow["totals"]] == [1]


def test_report_by_user_includes_received_and_replied(mailgate, org):
    o, u = org
    other = mailgate.user(o, f"b{secrets.token_hex(3)}@example.co.jp", name="佐藤 花子")
    _send(mailgate, o, u, T0, replied_at=T0 + timedelta(hours=5), opened_at=T0 + timedelta(hours=4))
    _send(mailgate, o, other, T0)
    _incoming(mailgate, o, u, T0 + timedelta(hours=5))
    _incoming(mailgate, o, other, T0 + timedelta(hours=6))
    _incoming(mailgate, o, other, T0 + timedelta(hours=7))
    _incoming(mailgate, o, other, T0 + timedelta(hours=7), direction="outgoing")
    r = mailgate.api(u).get(
        "/api/v1/reports/emails",
        params={"from": "2026-11-01", "to": "2026-11-30", "group": "month", "by": "user"},
    )
    rows = {i["user_id"]: i for i in r.json()["items"]}
    assert rows[u["id"]]["received"] == 1 and rows[other["id"]]["received"] == 2
    assert rows[u["id"]]["replied"] == {"n": 1, "pct": 100.0}
    assert rows[other["id"]]["replied"]["n"] == 0
    assert r.json()["totals"][0]["received"] == 3


def test_who_did_not_respond_lists_records_without_human_activity(mailgate, org):
    o, u = org
    api = mailgate.api(u)
    quiet = api.post("/api/v1/leads", json={"last_name": "静か", "email": "quiet@x.jp"}).json()
    keen = api.post("/api/v1/leads", json={"last_name": "熱心", "email": "keen@x.jp"}).json()
    contact = api.post("/api/v1/contacts", json={"last_name": "連絡", "email": "c@x.jp"}).json()
    _send(mailgate, o, u, T0, module="leads", record_id=quiet["id"])
    _send(mailgate, o, u, T0 + timedelta(days=1), module="leads", record_id=quiet["id"])
    _send(mailgate, o, u, T0, module="leads", record_id=keen["id"])
    _send(
        mailgate,
        o,
        u,
        T0 + timedelta(days=2),
        module="leads",
        record_id=keen["id"],
        clicked_at=T0 + timedelta(days=2),
        opened_at=T0 + timedelta(days=2),
    )
    _send(mailgate, o, u, T0, module="contacts", record_id=contact["id"], replied_at=T0)
    r = api.get("/api/v1/reports/no-response", params={"from": "2026-11-01", "to": "2026-11-30"})
    assert r.status_code == 200
    items = r.json()["items"]
    assert [(i["module"], i["id"], i["sent"], i["last_name"]) for i in items] == [
        ("leads", quiet["id"], 2, "静か")
    ]


def test_a_records_emails_show_each_sends_status(mailgate, org):
    o, u = org
    api = mailgate.api(u)
    lead = api.post("/api/v1/leads", json={"last_name": "状態", "email": "status@x.jp"}).json()
    send = _send(mailgate, o, u, T0, module="leads", record_id=lead["id"], status="clicked")
    _incoming(
        mailgate,
        o,
        u,
        T0,
        module="leads",
        record_id=lead["id"],
        send_id=send["id"],
        direction="outgoing",
    )
    _incoming(mailgate, o, u, T0 + timedelta(hours=1), module="leads", record_id=lead["id"])
    items = api.get(f"/api/v1/leads/{lead['id']}/emails").json()["items"]
    assert [(i["send_id"], i["status"]) for i in items] == [(send["id"], "clicked"), (None, None)]


def test_reports_refuse_bad_parameters_and_other_orgs(mailgate, org):
    o, u = org
    _send(mailgate, o, u, T0)
    api = mailgate.api(u)
    for params in (
        {"group": "year"},
        {"by": "campaign"},
        {"from": "yesterday"},
        {"from": "2026-11-30", "to": "2026-11-01"},
        {"from": "2010-01-01", "to": "2026-01-01"},
    ):
        r = api.get("/api/v1/reports/emails", params=params)
        assert r.status_code == 400, params
        assert r.json()["error"]["code"] == "bad_parameter"
    stranger_org = mailgate.org(f"stranger-{secrets.token_hex(3)}")
    stranger = mailgate.user(stranger_org, "s@stranger.jp")
    seen = mailgate.api(stranger).get(
        "/api/v1/reports/emails", params={"from": "2026-11-01", "to": "2026-11-30"}
    )
    assert seen.json()["items"] == [] and seen.json()["totals"] == []
    with mailgate.api(u) as anon:
        anon.headers.pop("Authorization")
        assert anon.get("/api/v1/reports/emails").status_code == 401


def test_no_response_shows_a_private_reps_recipients_to_everyone(mailgate):
    """Sends are mail sent from the CRM, public whatever the sender's sharing mode
    (seed 004, 公開メール): a private or custom rep's unanswered records are in every
    colleague's (and the admin's) no-response report."""
    o = mailgate.org(f"reports-{secrets.token_hex(4)}", timezone="Asia/Tokyo")
    admin_user = mailgate.user(o, f"boss{secrets.token_hex(3)}@example.co.jp", admin=True)
    rep = mailgate.user(o, f"rep{secrets.token_hex(3)}@example.co.jp")
    colleague = mailgate.user(o, f"col{secrets.token_hex(3)}@example.co.jp")
    boss = mailgate.api(admin_user)
    first = boss.post("/api/v1/leads", json={"last_name": "一", "email": "s@x.jp"}).json()
    second = boss.post("/api/v1/leads", json={"last_name": "二", "email": "sh@x.jp"}).json()
    _send(mailgate, o, rep, T0, module="leads", record_id=first["id"])
    _send(mailgate, o, rep, T0, module="leads", record_id=second["id"])
    period = {"from": "2026-11-01", "to": "2026-11-30"}
    both = {first["id"], second["id"]}

    def seen_by(user) -> set[int]:
        r = mailgate.api(user).get("/api/v1/reports/no-response", params=period)
        assert r.status_code == 200, r.text
        return {i["id"] for i in r.json()["items"]}

    for body in (
        {"mode": "public"},
        {"mode": "private"},
        {"mode": "custom", "records": [{"module": "leads", "id": second["id"]}]},
    ):
        r = boss.put(f"/api/v1/users/{rep['id']}/sharing", json=body)
        assert r.status_code == 200, r.text
        assert seen_by(colleague) == seen_by(admin_user) == seen_by(rep) == both, body
