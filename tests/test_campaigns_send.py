"""Campaigns through the HTTP API: drafts checked like the send API, and ``send``.

``send`` chooses the recipients (every skip reason, dedupe across lists),
books the mass quota (refused whole with nothing kept, or spread over the
following days with ``defer_excess``) and fixes one recipient row each; a
scheduled campaign waits for ``send_at`` by the injected clock.  Delivery
through a real relay is tested in ``test_campaigns_runner.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from gateway.clock import FixedClock, SystemClock
from storage.schema_campaigns import campaign_recipients
from storage.schema_sending import quota_usage
from storage.suppressions import suppress
from tests.support.campaigns import add_member, make_list
from tests.support.server import wait_until

TOKYO = ZoneInfo("Asia/Tokyo")


@pytest.fixture(scope="module")
def clock(mailgate):
    fixed = FixedClock(datetime(2026, 11, 23, 12, 0, tzinfo=TOKYO))
    mailgate.running.services.clock = fixed
    yield fixed
    mailgate.running.services.clock = SystemClock()


@pytest.fixture(scope="module")
def people(mailgate, clock):
    org = mailgate.org("キャンペーン株式会社", plan="professional")
    user = mailgate.user(org, "campaigner@example.co.jp", admin=False)
    other = mailgate.org("他社キャンペーン")
    outsider = mailgate.user(other, "outsider@example.net")
    return org, user, mailgate.api(user), mailgate.api(outsider)


def draft(api, list_ids, **extra) -> int:
    body = {"name": "冬のご案内", "list_ids": list_ids, "subject": "ご案内", "html": "<p>本文</p>"}
    r = api.post("/api/v1/campaigns", json={**body, **extra})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "draft"
    return r.json()["id"]


def recipients(server, campaign_id: int) -> list[dict]:
    def go(conn):
        q = select(campaign_recipients).where(campaign_recipients.c.campaign_id == campaign_id)
        return [dict(r) for r in conn.execute(q.order_by(campaign_recipients.c.id)).mappings()]

    return server.call(server.db.run_read(go))


def used(server, org_id: int, day: str) -> int:
    def go(conn):
        q = select(quota_usage.c.used).where(
            quota_usage.c.org_id == org_id, quota_usage.c.kind == "mass", quota_usage.c.day == day
        )
        return conn.execute(q).scalar() or 0

    return server.call(server.db.run_read(go))


def seed_usage(server, org_id: int, day: str, n: int) -> None:
    server.call(
        server.db.run_write(
            lambda conn: conn.execute(
                quota_usage.insert().values(
                    org_id=org_id, kind="mass", day=day, used=n, warned=False
                )
            )
        )
    )


# -- drafts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"name": ""}, "missing_field"),
        ({"list_ids": []}, "missing_field"),
        ({"list_ids": ["1"]}, "invalid_field"),
        ({"list_ids": [999_999_999]}, "invalid_field"),
        ({"subject": None, "html": None}, "missing_field"),
        ({"template_id": 999_999_999, "subject": None, "html": None}, "invalid_field"),
        ({"html": "<p>{{ lead.no_such_field }}</p>"}, None),
        ({"html": "<p>{% for x in %}</p>"}, None),
        ({"from": "someone@elsewhere.example"}, "from_not_allowed"),
        ({"register": {"opened": "deals"}}, "invalid_field"),
        ({"register": {"viewed": "leads"}}, "invalid_field"),
    ],
)
def test_a_campaign_with_a_bad_field_is_refused_as_the_send_api_refuses_it(
    mailgate, people, change, code
):
    org, _, api, _ = people
    lst = make_list(mailgate, org, f"v-{len(str(change))}-{code}-{hash(str(change))}")
    body = {"name": "x", "list_ids": [lst], "subject": "s", "html": "<p>h</p>", **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = api.post("/api/v1/campaigns", json=body)
    assert r.status_code == 422, r.text
    if code:
        assert r.json()["error"]["code"] == code


def test_another_orgs_list_cannot_be_the_target_and_its_campaign_is_not_found(mailgate, people):
    org, _, api, outsider = people
    lst = make_list(mailgate, org, "isolation")
    r = outsider.post(
        "/api/v1/campaigns", json={"name": "x", "list_ids": [lst], "subject": "s", "text": "t"}
    )
    assert r.status_code == 422
    cid = draft(api, [lst])
    for call in (
        lambda: outsider.get(f"/api/v1/campaigns/{cid}"),
        lambda: outsider.get(f"/api/v1/campaigns/{cid}/members"),
        lambda: outsider.patch(f"/api/v1/campaigns/{cid}", json={"name": "y"}),
        lambda: outsider.post(f"/api/v1/campaigns/{cid}/send", json={}),
        lambda: outsider.post(f"/api/v1/campaigns/{cid}/cancel"),
        lambda: outsider.delete(f"/api/v1/campaigns/{cid}"),
    ):
        assert call().status_code == 404
    assert api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "draft"


def test_a_draft_is_changed_and_deleted_but_a_sent_campaign_is_not(mailgate, people):
    org, _, api, _ = people
    lst = make_list(mailgate, org, "draft-life")
    tpl = api.post(
        "/api/v1/templates",
        json={
            "name": "t",
            "module": "contacts",
            "subject": "S",
            "html": "<p>{{ contact.last_name }}</p>",
        },
    )
    assert tpl.status_code == 201, tpl.text
    cid = draft(api, [lst], register={"opened": "leads", "clicked": "contacts"})
    r = api.patch(f"/api/v1/campaigns/{cid}", json={"html": "<p>{{ lead.last_name }} 様</p>"})
    assert r.status_code == 200, r.text
    assert r.json()["subject"] == "ご案内"  # the part not given is kept
    r = api.patch(
        f"/api/v1/campaigns/{cid}",
        json={"name": "改", "template_id": tpl.json()["id"], "subject": None, "html": None},
    )
    assert r.status_code == 200, r.text
    got = api.get(f"/api/v1/campaigns/{cid}").json()
    assert got["name"] == "改" and got["template_id"] == tpl.json()["id"]
    assert got["register"] == {"opened": "leads", "clicked": "contacts"}
    assert got["stats"]["sent"] == 0 and got["list_ids"] == [lst]
    listed = api.get("/api/v1/campaigns").json()["items"]
    assert cid in [c["id"] for c in listed]
    assert api.post(f"/api/v1/campaigns/{cid}/send", json={}).status_code == 202
    assert api.patch(f"/api/v1/campaigns/{cid}", json={"name": "z"}).status_code == 409
    assert api.delete(f"/api/v1/campaigns/{cid}").status_code == 409
    assert api.post(f"/api/v1/campaigns/{cid}/send", json={}).status_code == 409
    other = draft(api, [lst])
    assert api.delete(f"/api/v1/campaigns/{other}").status_code == 204
    assert api.get(f"/api/v1/campaigns/{other}").status_code == 404


# -- send ------------------------------------------------------------------------------


def test_send_skips_every_ineligible_member_with_its_reason_and_dedupes_across_lists(
    mailgate, people
):
    org, _, api, _ = people
    first, second = make_list(mailgate, org, "skip-1"), make_list(mailgate, org, "skip-2")
    ok = {"status": "subscribed"}
    add_member(mailgate, org, first, "good@example.com", first_name="良子", **ok)
    add_member(mailgate, org, first, "unsub@example.com", status="unsubscribed")
    add_member(mailgate, org, first, "bounced@example.com", status="bounced")
    add_member(mailgate, org, first, "complained@example.com", status="complained")
    add_member(mailgate, org, first, "nonmkt@example.com", subscription="non_marketing")
    add_member(mailgate, org, first, "pending@example.com", consent="pending")
    add_member(mailgate, org, first, "confirmed@example.com", consent="confirmed")
    add_member(mailgate, org, first, "supp@example.com")
    add_member(mailgate, org, first, "dnm@example.com")
    add_member(mailgate, org, first, "bad@@example.com")
    add_member(mailgate, org, first, "山田@example.jp")
    add_member(mailgate, org, first, "name@example.com", first_name="a\nBcc: x@evil.example")
    # In both lists: one message, reached through the first list.
    add_member(mailgate, org, second, "GOOD@example.com")
    add_member(mailgate, org, second, "second@example.com")
    mailgate.call(
        mailgate.db.run_write(
            lambda conn: suppress(conn, org["id"], "supp@example.com", "hard_bounce")
        )
    )
    lead = api.post(
        "/api/v1/leads", json={"last_name": "拒否", "email": "dnm@example.com", "do_not_mail": True}
    )
    assert lead.status_code == 201, lead.text
    linked = api.post("/api/v1/contacts", json={"last_name": "連絡", "email": "second@example.com"})
    assert linked.status_code == 201, linked.text

    cid = draft(api, [first, second])
    r = api.post(f"/api/v1/campaigns/{cid}/send", json={})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["id"] == cid and body["status"] == "sending" and body["recipients"] == 3
    assert {s["email"]: s["reason"] for s in body["skipped"]} == {
        "unsub@example.com": "unsubscribed",
        "bounced@example.com": "bounced",
        "complained@example.com": "complained",
        "nonmkt@example.com": "non_marketing",
        "pending@example.com": "consent_pending",
        "supp@example.com": "suppressed:hard_bounce",
        "dnm@example.com": "do_not_mail",
        "bad@@example.com": "invalid_address",
        "山田@example.jp": "address_not_deliverable",
        "name@example.com": "invalid_name",
    }
    rows = {r["email_norm"]: r for r in recipients(mailgate, cid)}
    assert set(rows) == {"good@example.com", "confirmed@example.com", "second@example.com"}
    assert rows["good@example.com"]["list_id"] == first
    assert rows["second@example.com"]["list_id"] == second
    assert (rows["second@example.com"]["module"], rows["second@example.com"]["record_id"]) == (
        "contacts",
        linked.json()["id"],
    )
    assert rows["good@example.com"]["module"] is None
    assert {r["not_registered_reason"] for r in rows.values()} == {"not_requested"}
    got = api.get(f"/api/v1/campaigns/{cid}").json()
    assert (got["recipients"], got["skipped"]) == (3, 10)
    assert got["status"] in ("sending", "sent")


def test_a_campaign_over_the_mass_quota_is_refused_whole_and_nothing_is_kept(mailgate, people):
    org = mailgate.org("枠超過株式会社", plan="standard")  # 250 mass mails a day
    api = mailgate.api(mailgate.user(org, "quota@example.co.jp"))
    lst = make_list(mailgate, org, "quota")
    for i in range(3):
        add_member(mailgate, org, lst, f"q{i}@example.com")
    seed_usage(mailgate, org["id"], "2026-11-23", 248)
    cid = draft(api, [lst], register={"opened": "leads", "clicked": None})
    r = api.post(f"/api/v1/campaigns/{cid}/send", json={})
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and err["kind"] == "mass"
    assert (err["limit"], err["used"], err["requested"]) == (250, 248, 3)
    assert err["resets_at"].startswith("2026-11-24T00:00:00+09:00")
    assert api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "draft"
    assert recipients(mailgate, cid) == []
    assert used(mailgate, org["id"], "2026-11-23") == 248

    r = api.post(f"/api/v1/campaigns/{cid}/send", json={"defer_excess": True})
    assert r.status_code == 202, r.text
    assert r.json()["recipients"] == 3
    assert used(mailgate, org["id"], "2026-11-23") == 250
    assert used(mailgate, org["id"], "2026-11-24") == 1
    due = sorted(r["due_at"] for r in recipients(mailgate, cid))
    tomorrow = datetime(2026, 11, 24, tzinfo=TOKYO)
    assert [d == tomorrow for d in due] == [False, False, True]
    assert {r["not_registered_reason"] for r in recipients(mailgate, cid)} == {"no_activity"}
    types = [e["type"] for e in api.get("/api/v1/events", params={"limit": 1000}).json()["items"]]
    assert "quota.exhausted" in types


def test_a_recipient_booked_on_a_later_day_waits_for_that_day(mailgate, people, clock):
    org = mailgate.org("翌日送信株式会社", plan="standard")
    api = mailgate.api(mailgate.user(org, "defer@example.co.jp"))
    lst = make_list(mailgate, org, "defer")
    for i in range(2):
        add_member(mailgate, org, lst, f"d{i}@example.com")
    seed_usage(mailgate, org["id"], "2026-11-23", 249)
    cid = draft(api, [lst])
    r = api.post(f"/api/v1/campaigns/{cid}/send", json={"defer_excess": True})
    assert r.status_code == 202, r.text
    mailgate.drain("campaigns")
    wait_until(lambda: [x["status"] for x in recipients(mailgate, cid)].count("pending") == 1)
    assert api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "sending"
    clock.advance(timedelta(hours=12, minutes=1))  # 00:01 the next day in Tokyo
    try:
        mailgate.drain("campaigns")
        wait_until(lambda: api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "sent")
        assert all(x["send_id"] for x in recipients(mailgate, cid))
    finally:
        clock.advance(-timedelta(hours=12, minutes=1))


def test_stats_count_the_recipients_columns_and_unopened_is_sent_but_not_opened(mailgate, people):
    org, _, api, _ = people
    lst = make_list(mailgate, org, "stats")
    for name in ("s1", "s2", "s3"):
        add_member(mailgate, org, lst, f"{name}@example.com")
    cid = draft(api, [lst])
    assert api.post(f"/api/v1/campaigns/{cid}/send", json={}).status_code == 202
    at = datetime(2026, 11, 23, 12, 5, tzinfo=TOKYO)

    def mark(conn):
        r = campaign_recipients.c
        for email, values in (
            ("s1@example.com", {"status": "opened", "sent_at": at, "opened_at": at}),
            ("s2@example.com", {"status": "sent", "sent_at": at}),
        ):
            conn.execute(
                campaign_recipients.update()
                .where(r.campaign_id == cid, r.email_norm == email)
                .values(**values)
            )

    mailgate.call(mailgate.db.run_write(mark))
    stats = api.get(f"/api/v1/campaigns/{cid}").json()["stats"]
    assert stats == {
        "sent": 2,
        "opened": 1,
        "unopened": 1,
        "clicked": 0,
        "bounced": 0,
        "unsubscribed": 0,
        "complained": 0,
    }
    items = api.get(f"/api/v1/campaigns/{cid}/members", params={"status": "unopened"}).json()
    assert [m["email"] for m in items["items"]] == ["s2@example.com"]
    (opened,) = api.get(f"/api/v1/campaigns/{cid}/members", params={"status": "opened"}).json()[
        "items"
    ]
    assert opened["email"] == "s1@example.com" and opened["opened_at"] and opened["record"] is None
    assert opened["not_registered_reason"] == "not_requested"
    assert api.get(f"/api/v1/campaigns/{cid}/members?status=lost").status_code == 400


def test_a_scheduled_campaign_waits_for_send_at_then_goes(mailgate, people, clock):
    org, _, api, _ = people
    lst = make_list(mailgate, org, "scheduled")
    add_member(mailgate, org, lst, "later@example.com")
    cid = draft(api, [lst])
    at = clock.now() + timedelta(hours=2)
    r = api.post(f"/api/v1/campaigns/{cid}/send", json={"send_at": at.isoformat()})
    assert r.status_code == 202 and r.json()["status"] == "scheduled", r.text
    mailgate.drain("campaigns")
    assert api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "scheduled"
    assert [r["status"] for r in recipients(mailgate, cid)] == ["pending"]
    clock.advance(timedelta(hours=3))
    try:
        mailgate.drain("campaigns")
        wait_until(lambda: api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "sent")
        (row,) = recipients(mailgate, cid)
        assert row["status"] != "pending" and row["send_id"]
    finally:
        clock.advance(timedelta(hours=-3))


def test_a_scheduled_campaign_with_everyone_skipped_is_sent_at_send_at_not_before(
    mailgate, people, clock
):
    org, _, api, _ = people
    lst = make_list(mailgate, org, "all-skipped")
    add_member(mailgate, org, lst, "gone@example.com", status="unsubscribed")
    cid = draft(api, [lst])
    at = clock.now() + timedelta(hours=2)
    r = api.post(f"/api/v1/campaigns/{cid}/send", json={"send_at": at.isoformat()})
    assert r.status_code == 202, r.text
    assert (r.json()["recipients"], r.json()["skipped"]) == (
        0,
        [{"email": "gone@example.com", "reason": "unsubscribed"}],
    )
    mailgate.drain("campaigns")
    assert api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "scheduled"
    clock.advance(timedelta(hours=3))
    try:
        mailgate.drain("campaigns")
        assert api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "sent"
    finally:
        clock.advance(timedelta(hours=-3))


def test_a_cancelled_campaign_composes_no_pending_recipient(mailgate, people, clock):
    org, _, api, _ = people
    lst = make_list(mailgate, org, "cancel")
    add_member(mailgate, org, lst, "never@example.com")
    cid = draft(api, [lst])
    at = (clock.now() + timedelta(hours=1)).isoformat()
    assert api.post(f"/api/v1/campaigns/{cid}/send", json={"send_at": at}).status_code == 202
    r = api.post(f"/api/v1/campaigns/{cid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    clock.advance(timedelta(hours=2))
    try:
        mailgate.drain("campaigns")
        assert [r["status"] for r in recipients(mailgate, cid)] == ["pending"]
        assert api.post(f"/api/v1/campaigns/{cid}/cancel").status_code == 409
    finally:
        clock.advance(timedelta(hours=-2))


@pytest.mark.parametrize(
    "body",
    [{"send_at": "tomorrow"}, {"send_at": "2026-11-24T10:00:00"}, {"defer_excess": "yes"}],
)
def test_a_bad_send_request_is_a_422_and_the_campaign_stays_a_draft(mailgate, people, body):
    org, _, api, _ = people
    lst = make_list(mailgate, org, f"badsend-{hash(str(body))}")
    cid = draft(api, [lst])
    assert api.post(f"/api/v1/campaigns/{cid}/send", json=body).status_code == 422
    assert api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "draft"


HOSTILE = ['"a\\u0000b"', '"\\ud800"', "18446744073709551616", "[[[[[]]]]]", "{}", "true", "-1"]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    "template",
    [
        '{{"name": {x}, "list_ids": [LIST], "subject": "s", "text": "t"}}',
        '{{"name": "n", "list_ids": [{x}], "subject": "s", "text": "t"}}',
        '{{"name": "n", "list_ids": [LIST], "subject": {x}, "text": "t"}}',
        '{{"name": "n", "list_ids": [LIST], "template_id": {x}}}',
        '{{"name": "n", "list_ids": [LIST], "subject": "s", "text": "t", "from": {x}}}',
        '{{"name": "n", "list_ids": [LIST], "subject": "s", "text": "t", "register": {x}}}',
    ],
)
def test_hostile_json_in_any_campaign_field_is_refused_never_a_500(
    mailgate, people, value, template
):
    org, _, api, _ = people
    lst = make_list(mailgate, org, f"hostile-{abs(hash((value, template)))}")
    body = template.format(x=value).replace("LIST", str(lst))
    r = api.post(
        "/api/v1/campaigns", content=body.encode(), headers={"content-type": "application/json"}
    )
    if value == "{}" and '"register"' in template:
        assert r.status_code == 201, r.text  # an empty register asks for no registration
    else:
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)


@pytest.mark.parametrize(
    "path", ["/api/v1/campaigns/１", "/api/v1/campaigns/0", "/api/v1/lists/99999999999999999999"]
)
def test_a_path_id_that_names_nothing_is_a_404(people, path):
    _, _, api, _ = people
    assert api.get(path).status_code == 404
