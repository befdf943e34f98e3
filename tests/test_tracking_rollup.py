"""The email report stays exact when sends change after the fact (PostgreSQL keeps a rollup)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, update

from storage.schema_sending import sends
from tests.support.sends import make_send

T0 = datetime(2026, 11, 2, 1, 7, tzinfo=UTC)  # Monday 10:07 in Tokyo


def _report(mailgate, user) -> dict:
    r = mailgate.api(user).get(
        "/api/v1/reports/emails",
        params={"from": "2026-11-01", "to": "2026-11-30", "group": "day", "by": "template"},
    )
    assert r.status_code == 200, r.text
    return r.json()


def _change(mailgate, stmt) -> None:
    async def go():
        async with mailgate.db.begin() as conn:
            await conn.execute(stmt)

    mailgate.call(go())


def test_report_follows_opens_bounces_and_deletions_after_sending(mailgate):
    org = mailgate.org(f"rollup-{secrets.token_hex(4)}", timezone="Asia/Tokyo")
    user = mailgate.user(org, f"r{secrets.token_hex(3)}@example.co.jp")
    ids = [
        make_send(
            mailgate,
            org,
            user,
            sent_at=T0 + timedelta(minutes=i),
            to=f"{i}@x.jp",
            template_version=1,
        )["id"]
        for i in range(4)
    ]
    [item] = _report(mailgate, user)["items"]
    assert item["sent"] == 4 and item["opened"]["n"] == 0

    _change(mailgate, update(sends).where(sends.c.id == ids[0]).values(opened_at=T0, clicked_at=T0))
    _change(mailgate, update(sends).where(sends.c.id == ids[1]).values(bounced_at=T0))
    _change(mailgate, update(sends).where(sends.c.id == ids[2]).values(template_version=2))
    _change(mailgate, delete(sends).where(sends.c.id == ids[3]))
    _change(mailgate, update(sends).where(sends.c.id.in_(ids)).values(attempts=5))  # not counted

    by_version = {i["template_version"]: i for i in _report(mailgate, user)["items"]}
    v1, v2 = by_version[1], by_version[2]
    assert v1["period"] == "2026-11-02"
    assert v1["sent"] == 2 and v1["bounced"]["n"] == 1
    assert v1["opened"]["n"] == 1 and v1["clicked"]["n"] == 1
    assert v2["sent"] == 1 and v2["opened"]["n"] == 0
    [total] = _report(mailgate, user)["totals"]
    assert total["sent"] == 3


def test_a_quarter_hour_zone_starts_its_day_at_its_own_midnight(mailgate):
    org = mailgate.org(f"rollup-{secrets.token_hex(4)}", timezone="Asia/Kathmandu")  # +05:45
    user = mailgate.user(org, f"r{secrets.token_hex(3)}@example.co.jp")
    # Local midnight of 2026-11-02 is 18:15 UTC: 18:14 belongs to the day before.
    for minute in (14, 15, 16):
        at = datetime(2026, 11, 1, 18, minute, tzinfo=UTC)
        make_send(mailgate, org, user, sent_at=at, to=f"{minute}@x.jp")
    r = mailgate.api(user).get(
        "/api/v1/reports/emails", params={"from": "2026-11-02", "to": "2026-11-02", "group": "day"}
    )
    assert r.status_code == 200, r.text
    assert [t["sent"] for t in r.json()["totals"]] == [2]
