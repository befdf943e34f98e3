"""The page counters of migration 0017 equal what they count (issue #13).

``campaign_stats`` (a campaign's stats, one row per campaign) and ``send_rollup_org``
(the org's sends per quarter hour) are kept on PostgreSQL by statement-level
triggers on ``campaign_recipients`` and ``sends``; the pages read them instead of
counting up to a million rows.  Each must equal its definition whoever wrote the
rows: a campaign made and sent through the API, composed by the ``campaigns``
runner, delivered (or refused) by a real SMTP relay, opened and clicked over HTTP,
unsubscribed with one click, bounced and complained about by mail to its VERP
address, applied by the ``campaigns_to_crm`` consumer — and again after that
consumer replays the log from offset zero; an operator's UPDATE/DELETE in SQL; the
migration's backfill of rows already there.  SQLite installs count the rows (the
tables stay empty there): the same tests check the figures the pages show.
"""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update

from gateway.clock import SystemClock
from storage import campaigns as campaign_store
from storage.db import Database
from storage.migrate import upgrade
from storage.schema_campaigns import campaign_recipients, campaign_stats, campaigns
from storage.schema_sending import sends, templates
from storage.schema_tracking import send_rollup, send_rollup_org, send_rollup_version_day
from tests.support.campaign_sends import (
    LaterClock,
    bounce,
    click,
    complain,
    composed_sends,
    open_mail,
    relayed_server,
    replay,
    send_through_api,
    unsubscribe,
)
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.sends import rows
from tests.support.server import MailgateServer
from tests.test_report_reads import seed
from tracking.reports import Period, email_report, parse_period, version_report

MEMBERS = 24
REFUSED = 23  # the relay refuses this one at RCPT: a hard bounce on the send path
OPENERS = range(0, 10)
CLICKERS = range(0, 4)
BOUNCED = (10, 11)  # a DSN to the VERP address
UNSUBSCRIBED = (1, 12)
COMPLAINED = (13,)


def address(i: int) -> str:
    return f"c{i:02d}@counted.example"


@pytest.fixture(scope="module")
def relay_port() -> int:
    from tests.support import smtp_sink

    return smtp_sink.free_port()


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay_port):
    srv = relayed_server(database_url, tmp_path_factory.mktemp("data"), relay_port)
    yield srv
    srv.stop()


def counters(server: MailgateServer, campaign_id: int) -> dict[str, int] | None:
    """The stored counters (PostgreSQL), or None on SQLite, which keeps none."""
    if server.db.engine.dialect.name != "postgresql":
        return None
    found = rows(server, select(campaign_stats).where(campaign_stats.c.campaign_id == campaign_id))
    if not found:
        return dict.fromkeys(campaign_store.STAT_KEYS, 0)
    return {k: int(found[0][k]) for k in campaign_store.STAT_KEYS}


def counted(server: MailgateServer, campaign_id: int) -> dict[str, int]:
    """The definition: ``COUNT(*)`` of each ``*_at`` over the campaign's recipient rows."""
    return server.call(server.db.run_read(campaign_store.counted_stats, [campaign_id]))[campaign_id]


def assert_counters_exact(server: MailgateServer, campaign_id: int) -> dict[str, int]:
    definition = counted(server, campaign_id)
    stored = counters(server, campaign_id)
    if stored is not None:
        assert stored == definition
    return definition


def test_a_campaign_sent_and_answered_through_the_real_paths_keeps_exact_counters(
    server, relay_port
):
    """Made and sent through the API, composed by the runner, delivered by the relay (one
    refused), opened, clicked, unsubscribed, bounced and complained about through the
    server: the counters equal the recipients' count, the API and the page show it, and a
    replay of ``campaigns_to_crm`` from offset zero changes nothing."""
    org = server.org(f"counters-{secrets.token_hex(3)}")
    owner = server.user(org, f"owner{secrets.token_hex(3)}@example.co.jp", admin=True)
    api = server.api(owner)
    lst = api.post("/api/v1/lists", json={"name": "集計"}).json()["id"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["メールアドレス", "姓", "名"])
    for i in range(MEMBERS):
        writer.writerow([address(i), f"姓{i}", f"名{i}"])
    imported = api.post(
        f"/api/v1/lists/{lst}/members/import",
        content=out.getvalue().encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert imported.status_code == 200, imported.text
    made = api.post(
        "/api/v1/campaigns",
        json={
            "name": "数える",
            "list_ids": [lst],
            "subject": "ご案内",
            "html": '<p>ご案内</p><p><a href="https://shop.example.jp/a">見る</a></p>',
        },
    )
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    assert_counters_exact(server, cid)  # pending recipients: all zeros

    refusal = f"550 5.1.1 <{address(REFUSED)}>: Recipient address rejected: User unknown"
    with ScriptedRelay(relay_port, Script(rcpt={address(REFUSED): refusal})):
        send_through_api(server, api, cid)
    assert_counters_exact(server, cid)

    sent = composed_sends(server, cid)
    services = server.running.services
    services.clock = LaterClock(timedelta(hours=1))  # readers come back later: people
    try:
        for i in OPENERS:
            open_mail(server, sent[address(i)])
        for i in CLICKERS:
            click(server, sent[address(i)])
        for i in UNSUBSCRIBED:
            unsubscribe(server, sent[address(i)])
    finally:
        services.clock = SystemClock()
    for i in BOUNCED:
        bounce(server, sent[address(i)])
    for i in COMPLAINED:
        complain(server, sent[address(i)])

    stats = assert_counters_exact(server, cid)
    expected = {
        "sent": MEMBERS - 1,
        "opened": len(OPENERS),
        "clicked": len(CLICKERS),
        "bounced": len(BOUNCED) + 1,
        "unsubscribed": len(UNSUBSCRIBED),
        "complained": len(COMPLAINED),
        "unopened": MEMBERS - 1 - len(OPENERS),
    }
    assert stats == expected
    assert api.get(f"/api/v1/campaigns/{cid}").json()["stats"] == expected

    assert replay(server) > 0
    assert assert_counters_exact(server, cid) == expected
    assert api.get(f"/api/v1/campaigns/{cid}").json()["stats"] == expected


def test_an_operators_sql_and_a_deleted_campaign_keep_the_counters_exact(server):
    """Whoever writes the recipients (here psql-like UPDATE and DELETE statements) moves
    the PostgreSQL counters in the same statement, and the stats the API shows follow; a
    deleted campaign leaves no counter row behind.  SQLite keeps no counter rows at all
    (its stats are counted on every read)."""
    org = server.org(f"counters-sql-{secrets.token_hex(3)}")
    owner = server.user(org, f"owner{secrets.token_hex(3)}@example.co.jp", admin=True)
    now = datetime.now(UTC)

    def write(conn) -> int:
        cid = conn.execute(
            insert(campaigns).values(org_id=org["id"], user_id=owner["id"], name="sql",
                                     list_ids=[], from_email=owner["email"], status="sent")
            .returning(campaigns.c.id)
        ).scalar_one()  # fmt: skip
        conn.execute(
            insert(campaign_recipients),
            [
                {"org_id": org["id"], "campaign_id": cid, "email": f"s{i}@x.jp",
                 "email_norm": f"s{i}@x.jp", "due_at": now, "status": "sent", "sent_at": now,
                 "opened_at": now if i % 3 == 0 else None}
                for i in range(30)
            ],
        )  # fmt: skip
        r = campaign_recipients.c
        conn.execute(
            update(campaign_recipients)
            .where(r.campaign_id == cid, r.opened_at.is_(None))
            .values(bounced_at=now, status="bounced")
        )
        conn.execute(
            update(campaign_recipients)
            .where(r.campaign_id == cid, r.status == "sent")
            .values(clicked_at=now, status="clicked")
        )
        conn.execute(delete(campaign_recipients).where(r.campaign_id == cid, r.id % 4 == 0))
        return cid

    cid = server.call(server.db.run_write(write))
    stats = assert_counters_exact(server, cid)
    assert 0 < stats["sent"] < 30 and stats["bounced"] > 0 and stats["clicked"] > 0
    assert server.api(owner).get(f"/api/v1/campaigns/{cid}").json()["stats"] == stats
    kept = rows(server, select(campaign_stats).where(campaign_stats.c.campaign_id == cid))
    assert len(kept) == (1 if server.db.engine.dialect.name == "postgresql" else 0)

    def drop(conn) -> None:
        conn.execute(delete(campaigns).where(campaigns.c.id == cid))

    server.call(server.db.run_write(drop))
    assert rows(server, select(campaign_stats).where(campaign_stats.c.campaign_id == cid)) == []


# -- the org rollup ----------------------------------------------------------------------------

ZONES = ("Asia/Tokyo", "Asia/Kolkata", "America/St_Johns")
T0 = datetime(2026, 10, 5, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def reports(database_url):
    """The report tests' org of ~240 sends (``tests.test_report_reads.seed``), some then
    opened, bounced and deleted by SQL statements: the triggers follow every kind of write."""

    async def go():
        db = Database(database_url)
        await upgrade(db)

        def write(conn) -> int:
            seeded = seed(conn)
            made = [
                conn.execute(
                    insert(templates).values(org_id=seeded["org"], name=f"t{i}", module="leads",
                                             subject="s", html="h").returning(templates.c.id)
                ).scalar_one()
                for i in range(3)
            ]  # fmt: skip
            for g, row in enumerate(seeded["rows"]):
                if row["template_version"] is not None:
                    row["template_id"] = made[g % 3]
            conn.execute(insert(sends), seeded["rows"])
            s = sends.c
            mine = s.org_id == seeded["org"]
            later = T0 + timedelta(days=30)
            conn.execute(
                update(sends).where(mine, s.id % 5 == 0, s.opened_at.is_(None))
                .values(opened_at=later)
            )  # fmt: skip
            conn.execute(update(sends).where(mine, s.id % 7 == 0).values(bounced_at=later))
            conn.execute(delete(sends).where(mine, s.id % 9 == 0))
            return seeded

        return db, await db.run_write(write)

    loop = asyncio.new_event_loop()
    db, seeded = loop.run_until_complete(go())
    yield loop, db, seeded
    loop.run_until_complete(db.dispose())
    loop.close()


def _read(reports, fn, *args, **kwargs) -> Any:
    loop, db, _ = reports
    return loop.run_until_complete(db.run_read(lambda conn: fn(conn, *args, **kwargs)))


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("group", ["day", "week", "month"])
def test_the_org_report_from_its_own_rollup_equals_the_keyed_report_added_up(reports, zone, group):
    """The report without a filter (``send_rollup_org`` on PostgreSQL) has each local
    period's counts of the by-user report (``send_rollup``'s keyed rows) added up, in a
    whole-hour, a +05:30 and a -03:30 zone."""
    period = Period(T0 - timedelta(days=1), T0 + timedelta(days=21), zone)
    org = reports[2]["org"]
    whole = _read(reports, email_report, org, period, group, None)["totals"]
    keyed = _read(reports, email_report, org, period, group, "user")["items"]
    added: dict[str, dict[str, int]] = {}
    for item in keyed:
        counts = added.setdefault(item["period"], dict.fromkeys(("sent", "b", "o", "c", "r"), 0))
        counts["sent"] += item["sent"]
        for key, name in (("b", "bounced"), ("o", "opened"), ("c", "clicked"), ("r", "replied")):
            counts[key] += item[name]["n"]
    got = {
        t["period"]: {"sent": t["sent"], "b": t["bounced"]["n"], "o": t["opened"]["n"],
                      "c": t["clicked"]["n"], "r": t["replied"]["n"]}
        for t in whole
        if t["sent"]
    }  # fmt: skip
    assert got == {p: c for p, c in added.items() if c["sent"]}
    assert sum(c["sent"] for c in got.values()) > 100


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(
    "days",
    [("2026-10-04", "2026-10-20"), ("2026-10-06", "2026-10-06"), ("2026-10-09", "2026-10-25")],
)
def test_the_ab_table_over_local_days_counts_each_version_as_the_sends_say(reports, zone, days):
    """The A/B table (on PostgreSQL whole UTC days from ``send_rollup_version_day``, the
    local days' ragged ends from ``send_rollup``) has each template version's sends,
    bounces, opens, clicks and replies of the period, counted here from the sends
    themselves; in whole-hour, +05:30 and -03:30 zones, over weeks and over one day
    (no whole UTC day inside), with one template's versions alone too."""
    _, _, seeded = reports
    period = parse_period(*days, zone)
    s = sends.c

    def definition(conn, only=None):
        where = [s.org_id == seeded["org"], s.sent_at >= period.start, s.sent_at < period.end]
        if only is not None:
            where.append(s.template_id == only)
        q = (
            select(s.template_id, s.template_version, func.count(), func.count(s.bounced_at),
                   func.count(s.opened_at), func.count(s.clicked_at), func.count(s.replied_at))
            .where(*where)
            .group_by(s.template_id, s.template_version)
        )  # fmt: skip
        return {(r[0], r[1]): tuple(int(x) for x in r[2:]) for r in conn.execute(q)}

    def shown(items):
        return {
            (i["template_id"], i["template_version"]): (
                i["sent"], i["bounced"]["n"], i["opened"]["n"], i["clicked"]["n"], i["replied"]["n"]
            )
            for i in items
        }  # fmt: skip

    expected = _read(reports, definition)
    assert sum(c[0] for c in expected.values()) > 0
    assert shown(_read(reports, version_report, seeded["org"], period)) == expected
    one = next(k[0] for k in expected if k[0] is not None)
    assert shown(_read(reports, version_report, seeded["org"], period, template_id=one)) == _read(
        reports, definition, one
    )


def test_the_org_rollup_is_the_keyed_rollup_per_quarter_hour_after_updates_and_deletes(reports):
    """PostgreSQL: after inserts, UPDATEs of opens and bounces and DELETEs, every
    (org, quarter hour) of ``send_rollup_org``, and every (org, UTC day, template,
    version) of ``send_rollup_version_day``, holds the sums of ``send_rollup``'s rows.
    SQLite keeps none of them (its reports count the sends): all stay empty."""
    loop, db, seeded = reports
    names = ("sent", "bounced", "opened", "clicked", "replied")

    def both(conn):
        r = send_rollup.c
        keyed = select(r.bucket, *(func.sum(r[n]) for n in names)).where(r.org_id == seeded["org"])
        keyed = {
            row[0]: tuple(int(x) for x in row[1:]) for row in conn.execute(keyed.group_by(r.bucket))
        }
        o = send_rollup_org.c
        org_rows = select(o.bucket, *(o[n] for n in names)).where(o.org_id == seeded["org"])
        return keyed, {row[0]: tuple(int(x) for x in row[1:]) for row in conn.execute(org_rows)}

    keyed, org_rows = _read(reports, both)
    daily = _read(reports, lambda conn: conn.execute(
        select(send_rollup_version_day).where(send_rollup_version_day.c.org_id == seeded["org"])
    ).all())  # fmt: skip
    if db.engine.dialect.name != "postgresql":
        assert keyed == org_rows == {} and daily == []
        return
    assert len(org_rows) > 100
    assert {k: v for k, v in org_rows.items() if any(v)} == {
        k: v for k, v in keyed.items() if any(v)
    }
    by_day: dict[tuple, list[int]] = {}
    for row in _read(reports, lambda conn: conn.execute(
        select(send_rollup).where(send_rollup.c.org_id == seeded["org"])
    ).mappings().all()):  # fmt: skip
        day = row["bucket"].replace(hour=0, minute=0, second=0, microsecond=0)
        key = (day, row["template_id"], row["template_version"])
        sums = by_day.setdefault(key, [0] * len(names))
        for i, n in enumerate(names):
            sums[i] += int(row[n])
    assert len(daily) > 20
    assert {
        (r.day, r.template_id, r.template_version): [int(getattr(r, n)) for n in names]
        for r in daily
        if any(getattr(r, n) for n in names)
    } == {k: v for k, v in by_day.items() if any(v)}


# -- the migration's backfill ------------------------------------------------------------------


def test_the_migration_backfills_the_counters_from_the_rows_already_there(database_url, tmp_path):
    """Rows written under 0016 (no counters yet) are counted when 0017 runs: a campaign's
    stats and the org rollup equal their definitions straight after the upgrade."""
    from tests.support.databases import fresh_database

    backend = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    with fresh_database(backend, tmp_path) as url:
        (definition, stored, whole, keyed), dialect = asyncio.run(_backfilled(url))
    assert definition["sent"] == 32 and definition["complained"] == 1
    assert stored == definition
    by_day: dict[str, int] = {}
    for item in keyed:
        by_day[item["period"]] = by_day.get(item["period"], 0) + item["sent"]
    assert {t["period"]: t["sent"] for t in whole if t["sent"]} == {
        d: n for d, n in by_day.items() if n
    }
    assert sum(by_day.values()) == 241


def _old_rows(conn) -> tuple[int, int]:
    """Sends (``seed``) and a campaign of 40 recipients, written before 0017."""
    seeded = seed(conn)
    conn.execute(insert(sends), seeded["rows"])
    now = datetime.now(UTC)
    cid = conn.execute(
        insert(campaigns).values(org_id=seeded["org"], name="old", list_ids=[],
                                 from_email="a@x.jp", status="sent")
        .returning(campaigns.c.id)
    ).scalar_one()  # fmt: skip
    conn.execute(
        insert(campaign_recipients),
        [
            {"org_id": seeded["org"], "campaign_id": cid, "email": f"b{i}@x.jp",
             "email_norm": f"b{i}@x.jp", "due_at": now, "status": "sent",
             "sent_at": now if i % 5 else None,
             "opened_at": now if i % 2 else None,
             "complained_at": now if i == 3 else None}
            for i in range(40)
        ],
    )  # fmt: skip
    return seeded["org"], cid


async def _backfilled(url: str):
    """Rows written at 0016, then the upgrade to head; what the pages read afterwards."""
    db = Database(url)
    try:
        await upgrade(db, "0016_page_indexes")
        org, cid = await db.run_write(_old_rows)
        await upgrade(db)

        def read(conn):
            definition = campaign_store.counted_stats(conn, [cid])[cid]
            stored = campaign_store.stats_of(conn, [cid])[cid]
            period = Period(T0 - timedelta(days=1), T0 + timedelta(days=21), "Asia/Kolkata")
            whole = email_report(conn, org, period, "day", None)["totals"]
            keyed = email_report(conn, org, period, "day", "user")["items"]
            return definition, stored, whole, keyed

        return await db.run_read(read), db.engine.dialect.name
    finally:
        await db.dispose()
