"""The dashboard's narrower report reads give the same figures as the full reports.

``/analytics`` reads only what it shows (issue #13, the 1,000,000-send bench): a
filtered user's or template's rows counted in SQL (``email_report(only=…)``), the
A/B table as one row per version over the whole period (``version_report``), and
"who did not respond" grouped from the period index with each record's address
read afterwards.  Each must equal the slow definition on the same data: the
unfiltered report's rows of that key, the by-template report added up per
version, and the no-response rows computed here from the sends themselves.  Both
engines; on PostgreSQL both the rollup (periods on quarter-hour bounds) and the
direct path (exact instants) are compared.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert

from gateway.web.analytics import versions
from storage import tracking_store
from storage.db import Database
from storage.migrate import upgrade
from storage.schema import contacts, leads, orgs, users
from storage.schema_sending import sends
from tracking.reports import Period, email_report, no_response_report, version_report

T0 = datetime(2026, 10, 5, 0, 0, tzinfo=UTC)
#: On quarter-hour bounds (the PostgreSQL rollup) and not (sends counted directly).
PERIODS = {
    "bucket bounds": Period(T0 - timedelta(days=1), T0 + timedelta(days=20), "Asia/Tokyo"),
    "exact instants": Period(
        T0 + timedelta(hours=7, minutes=3), T0 + timedelta(days=17, seconds=11), "Asia/Tokyo"
    ),
}


def seed(conn) -> dict:
    """An org with 3 users, 3 templates of 2 versions, 12 records and ~240 sends over 20
    days: every mix of opened, clicked, replied and bounced, some without a template."""
    tag = secrets.token_hex(4)
    org = conn.execute(
        insert(orgs).values(name=f"rr-{tag}", plan="enterprise", timezone="Asia/Tokyo",
                            domains=[]).returning(orgs.c.id)
    ).scalar_one()  # fmt: skip
    user_ids = [
        conn.execute(
            insert(users).values(org_id=org, email=f"u{i}@{tag}.jp", email_norm=f"u{i}@{tag}.jp",
                                 name=f"u{i}", dropbox_token=secrets.token_hex(16))
            .returning(users.c.id)
        ).scalar_one()
        for i in range(3)
    ]  # fmt: skip
    records = []
    for i in range(6):
        lid = conn.execute(
            insert(leads).values(org_id=org, last_name=f"見込{i}", first_name="太郎",
                                 email=f"l{i}@x.jp", email_norm=f"l{i}@x.jp").returning(leads.c.id)
        ).scalar_one()  # fmt: skip
        cid = conn.execute(
            insert(contacts).values(org_id=org, last_name=f"顧客{i}", first_name="花子",
                                    email=f"c{i}@x.jp", email_norm=f"c{i}@x.jp")
            .returning(contacts.c.id)
        ).scalar_one()  # fmt: skip
        records += [("leads", lid), ("contacts", cid)]
    rows = []
    for g in range(240):
        at = T0 + timedelta(hours=g * 2, minutes=(g * 7) % 60)
        module, rid = records[(g * 5) % len(records)]
        # Records 0 and 1 never respond; the others now and then.
        quiet = (g * 5) % len(records) in (0, 1)
        rows.append(
            {
                "org_id": org,
                "user_id": user_ids[g % 3],
                "kind": "individual",
                "module": module if g % 11 else None,
                "record_id": rid if g % 11 else None,
                "to_email": f"{module[0]}{rid}-{g % 2}@x.jp",
                "from_email": "rep@x.jp",
                "subject": "s",
                "template_id": None,
                "template_version": None if g % 4 == 0 else 1 + g % 2,
                "message_id": f"<{tag}-{g}@x>",
                "verp_token": f"{tag}-{g}",
                "links": [],
                "state": "sent",
                "attempts": 1,
                "next_attempt_at": at,
                "status": "sent",
                "sent_at": at,
                "opened_at": None if quiet or g % 3 else at + timedelta(hours=1),
                "clicked_at": None if quiet or g % 7 else at + timedelta(hours=1),
                "replied_at": None if quiet or g % 13 else at + timedelta(days=1),
                "bounced_at": at if g % 17 == 0 else None,
                "created_at": at,
            }
        )
    # Two unanswered sends of a quiet record at the same instant (a resend in one batch):
    # still one row for the record, with both counted.
    quiet_rows = [
        r for r in rows
        if r["record_id"] == records[0][1] and r["module"] == records[0][0]
        and r["sent_at"] < T0 + timedelta(days=17)
    ]  # fmt: skip
    twin = dict(max(quiet_rows, key=lambda r: r["sent_at"]))
    twin.update(message_id=f"<{tag}-twin@x>", verp_token=f"{tag}-twin", bounced_at=None)
    rows.append(twin)
    return {"org": org, "users": user_ids, "rows": rows}


@pytest.fixture(scope="module")
def data(database_url):
    from storage.schema_sending import templates

    async def go():
        db = Database(database_url)
        await upgrade(db)
        seeded = await db.run_write(seed)

        def add_templates(conn):
            ids = [
                conn.execute(
                    insert(templates).values(org_id=seeded["org"], name=f"t{i}", module="leads",
                                             subject="s", html="h").returning(templates.c.id)
                ).scalar_one()
                for i in range(3)
            ]  # fmt: skip
            for g, row in enumerate(seeded["rows"]):
                if row["template_version"] is not None:
                    row["template_id"] = ids[g % 3]
            conn.execute(insert(sends), seeded["rows"])
            return ids

        seeded["templates"] = await db.run_write(add_templates)
        return db, seeded

    loop = asyncio.new_event_loop()  # one loop: the engine's pool belongs to it
    db, seeded = loop.run_until_complete(go())
    yield Reader(loop, db), seeded
    loop.run_until_complete(db.dispose())
    loop.close()


class Reader:
    def __init__(self, loop: asyncio.AbstractEventLoop, db: Database) -> None:
        self.loop, self.db = loop, db

    def __call__(self, fn, *args, **kwargs):
        return self.loop.run_until_complete(
            self.db.run_read(lambda conn: fn(conn, *args, **kwargs))
        )


@pytest.mark.parametrize("period", PERIODS, ids=list(PERIODS))
@pytest.mark.parametrize("group", ["day", "week"])
def test_a_filtered_report_has_the_full_reports_rows_of_that_user_or_template(data, period, group):
    db, s = data
    p = PERIODS[period]
    for by, key, ids in (("user", "user_id", s["users"]), ("template", "template_id", s["templates"])):  # fmt: skip
        full = db(email_report, s["org"], p, group, by)["items"]
        for wanted in ids:
            only = db(email_report, s["org"], p, group, by, only=wanted)["items"]
            expected = [i for i in full if i[key] == wanted]
            assert expected, f"the seed gives {by} {wanted} sends in the period"
            assert only == expected


@pytest.mark.parametrize("period", PERIODS, ids=list(PERIODS))
def test_the_ab_table_read_whole_equals_the_by_template_report_added_up(data, period):
    db, s = data
    p = PERIODS[period]
    by_day = db(email_report, s["org"], p, "day", "template")["items"]
    whole = db(version_report, s["org"], p)
    assert versions(whole) == versions(by_day)
    assert {(v["template_id"], v["template_version"]) for v in whole} >= {(None, None)}
    one = s["templates"][1]
    assert versions(db(version_report, s["org"], p, template_id=one)) == versions(
        [i for i in by_day if i["template_id"] == one]
    )


def slow_no_response(rows: list[dict], p: Period) -> list[tuple]:
    """The definition, in Python: records mailed in the period with no open, click or
    reply on any of those sends, newest last send first."""
    grouped: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["record_id"] is None or not (p.start <= r["sent_at"] < p.end):
            continue
        grouped.setdefault((r["module"], r["record_id"]), []).append(r)
    out = []
    for (module, rid), mine in grouped.items():
        if any(m["opened_at"] or m["clicked_at"] or m["replied_at"] for m in mine):
            continue
        last = max(m["sent_at"] for m in mine)
        bounced = sum(1 for m in mine if m["bounced_at"])
        out.append((module, rid, max(m["to_email"] for m in mine), len(mine), bounced, last))
    out.sort(key=lambda t: (-t[5].timestamp(), t[1]))
    return out


@pytest.mark.parametrize("period", PERIODS, ids=list(PERIODS))
def test_who_did_not_respond_is_the_grouped_definition_with_each_records_address(data, period):
    db, s = data
    p = PERIODS[period]
    expected = slow_no_response(s["rows"], p)
    assert len(expected) == 2, "records 0 and 1 of the seed never respond"
    found = db(no_response_report, s["org"], p, 10, viewer_id=s["users"][0])
    assert not found["truncated"]
    got = [
        (i["module"], i["id"], i["email"], i["sent"], i["bounced"], i["last_sent_at"])
        for i in found["items"]
    ]
    zone = ZoneInfo(p.tz)
    assert got == [
        (m, rid, email, n, b, last.astimezone(zone).isoformat())
        for m, rid, email, n, b, last in expected
    ]
    assert all(i["last_name"] for i in found["items"]), "names come with the rows"
    first = db(no_response_report, s["org"], p, 1, viewer_id=s["users"][0])
    assert first["truncated"] and [i["id"] for i in first["items"]] == [expected[0][1]]


@pytest.mark.parametrize("way", ["walk", "grouped"])
@pytest.mark.parametrize("period", PERIODS, ids=list(PERIODS))
def test_both_ways_to_who_did_not_respond_give_the_same_rows(data, period, way):
    """The newest-first walk (PostgreSQL's first choice) and the grouping (SQLite, and
    PostgreSQL's fallback when the walk runs long) each give the definition's rows."""
    db, s = data
    p = PERIODS[period]
    fn = tracking_store.no_response_walk if way == "walk" else tracking_store.no_response_grouped
    expected = slow_no_response(s["rows"], p)
    for limit in (1, 2, 5):
        rows = db(fn, s["org"], p.start, p.end, limit=limit)
        got = [
            (r["module"], r["record_id"], r["email"], r["sent"], r["bounced"], r["last_sent_at"])
            for r in rows
        ]
        assert got == expected[:limit]


@pytest.mark.parametrize("period", PERIODS, ids=list(PERIODS))
@pytest.mark.parametrize("group", ["day", "week", "month"])
def test_the_unkeyed_report_counts_each_local_period_as_the_sends_say(data, period, group):
    """The report without ``by`` (on PostgreSQL summed per quarter hour first, then per
    period) has each period's sends, bounces, opens, clicks and replies."""
    db, s = data
    p = PERIODS[period]
    zone = ZoneInfo(p.tz)
    expected: dict[str, dict[str, int]] = {}
    for r in s["rows"]:
        if not (p.start <= r["sent_at"] < p.end):
            continue
        day = r["sent_at"].astimezone(zone).date()
        if group == "week":
            day -= timedelta(days=day.weekday())
        label = day.isoformat()[:7] if group == "month" else day.isoformat()
        counts = expected.setdefault(label, dict.fromkeys(("sent", "b", "o", "c", "r"), 0))
        counts["sent"] += 1
        for key, column in (("b", "bounced_at"), ("o", "opened_at"), ("c", "clicked_at"), ("r", "replied_at")):  # fmt: skip
            counts[key] += r[column] is not None
    totals = db(email_report, s["org"], p, group, None)["totals"]
    got = {
        t["period"]: {
            "sent": t["sent"],
            "b": t["bounced"]["n"],
            "o": t["opened"]["n"],
            "c": t["clicked"]["n"],
            "r": t["replied"]["n"],
        }
        for t in totals
    }
    assert got == expected


def test_a_walk_that_runs_long_gives_way_to_the_grouping_in_the_same_read(data, monkeypatch):
    """PostgreSQL: past NO_RESPONSE_WALK_MS the walk is cancelled (its savepoint rolled
    back, the read's transaction intact) and the grouping answers with the same rows.
    SQLite never walks (it groups)."""
    db, s = data
    from sqlalchemy import text

    def slow_walk(conn, *args, **kwargs):
        assert conn.dialect.name == "postgresql", "SQLite groups; it never walks"
        conn.execute(text("SELECT pg_sleep(2)"))
        raise AssertionError("statement_timeout did not stop the walk")

    monkeypatch.setattr(tracking_store, "no_response_walk", slow_walk)
    p = PERIODS["bucket bounds"]
    t0 = time.monotonic()
    rows = db(tracking_store.no_response, s["org"], p.start, p.end, limit=5)
    assert time.monotonic() - t0 < 1.5, "the walk was cut at its limit, not slept through"
    expected = slow_no_response(s["rows"], p)
    assert [(r["module"], r["record_id"], r["sent"]) for r in rows] == [
        (m, rid, n) for m, rid, _, n, _, _ in expected
    ]


# -- who did not respond, as each colleague may see it (seed 004's excluded domains) --------

EXCLUDED = "private-bank.example.jp"


@pytest.fixture(scope="module")
def relay():
    from tests.support.scripted_relay import Script
    from tests.support.send_peer import scripted_relay

    with scripted_relay(Script()) as script:
        yield script


@pytest.fixture(scope="module")
def sent_office(database_url, tmp_path_factory, relay):
    """An org excluding :data:`EXCLUDED`; ``rep`` sends through the API and the relay to a
    lead at the excluded domain, one with an excluded CC, one at a subdomain, one at a
    look-alike domain, one plainly; ``rep`` and ``peer`` each mail ``shared`` (rep with an
    excluded CC, peer plainly).  Nobody responds."""
    from tests.support.send_peer import delivered, record, relayed, send_state
    from tests.support.web import with_password

    srv = relayed(database_url, tmp_path_factory.mktemp("data"), relay.port).start()
    try:
        tag = secrets.token_hex(3)
        org = srv.org(f"除外 {tag}", domains=[f"{tag}.example.jp"])
        boss = srv.user(org, f"boss@{tag}.example.jp", "部長 一郎", admin=True)
        rep = srv.user(org, f"rep@{tag}.example.jp", "営業 花子")
        peer = srv.user(org, f"peer@{tag}.example.jp", "同僚 次郎")
        for u in (rep, peer):
            with_password(srv, u)
        r = srv.api(boss).put("/api/v1/excluded-domains", json={"domains": [EXCLUDED]})
        assert r.status_code == 200, r.text
        addresses = {
            "excluded_to": f"ceo@{EXCLUDED}",
            "excluded_cc": "buyer@client.example.jp",
            "subdomain": f"cto@mail.{EXCLUDED}",
            "lookalike": f"ceo@not{EXCLUDED}",
            "plain": "owner@shop.example.jp",
            "shared": "head@factory.example.jp",
        }
        leads_by = {
            name: record(srv.api(rep), "leads", last_name=name, email=address)
            for name, address in addresses.items()
        }
        plan = [  # (sender, lead, CC)
            (rep, "excluded_to", []),
            (rep, "excluded_cc", [f"cfo@{EXCLUDED}"]),
            (rep, "subdomain", []),
            (rep, "lookalike", []),
            (rep, "plain", []),
            (rep, "shared", [f"cfo@{EXCLUDED}"]),
            (peer, "shared", []),
        ]
        for sender, lead, cc in plan:
            body = {"to": [{"module": "leads", "id": leads_by[lead]}], "subject": lead,
                    "html": "<p>ご案内</p>", "cc": cc}  # fmt: skip
            r = srv.api(sender).post("/api/v1/emails", json=body)
            assert r.status_code == 202, r.text
            send = r.json()["sends"][0]
            delivered(relay, send)
            send_state(srv.api(sender), send["id"])
        yield srv, {"rep": rep, "peer": peer, "boss": boss}, leads_by, addresses
    finally:
        srv.stop()


def _no_response(srv, user) -> dict[str, tuple[str, int]]:
    r = srv.api(user).get("/api/v1/reports/no-response")
    assert r.status_code == 200, r.text
    return {item["last_name"]: (item["email"], item["sent"]) for item in r.json()["items"]}


def test_a_record_mailed_only_at_an_excluded_domain_is_on_its_senders_no_response_list_alone(
    sent_office,
):
    """Over HTTP: the sender sees every record they mailed; a colleague (and an admin) sees
    none mailed only to, or with a CC at, an excluded domain or its subdomain, but the
    look-alike domain's; of a record both mailed, the colleague counts their own send."""
    srv, users, _, addresses = sent_office
    assert _no_response(srv, users["rep"]) == {
        "excluded_to": (addresses["excluded_to"], 1),
        "excluded_cc": (addresses["excluded_cc"], 1),
        "subdomain": (addresses["subdomain"], 1),
        "lookalike": (addresses["lookalike"], 1),
        "plain": (addresses["plain"], 1),
        "shared": (addresses["shared"], 2),
    }
    others = {
        "lookalike": (addresses["lookalike"], 1),
        "plain": (addresses["plain"], 1),
        "shared": (addresses["shared"], 1),
    }
    assert _no_response(srv, users["peer"]) == others
    assert _no_response(srv, users["boss"]) == others


def test_a_colleagues_analytics_page_does_not_list_the_records_mailed_at_an_excluded_domain(
    sent_office,
):
    """The dashboard's "did not respond" table follows the same rule as the API."""
    from tests.support.web import login

    srv, users, leads_by, addresses = sent_office
    peer_page, rep_page = login(srv, users["peer"]), login(srv, users["rep"])
    try:
        theirs, mine = peer_page.get("/analytics"), rep_page.get("/analytics")
    finally:
        peer_page.close()
        rep_page.close()
    assert theirs.status_code == mine.status_code == 200
    for name in ("excluded_to", "excluded_cc", "subdomain"):
        assert f'data-record="leads/{leads_by[name]}"' in mine.text
        assert f'data-record="leads/{leads_by[name]}"' not in theirs.text
        assert addresses[name] not in theirs.text
    for name in ("lookalike", "plain", "shared"):
        assert f'data-record="leads/{leads_by[name]}"' in theirs.text


def test_the_sql_excluded_domain_rule_is_sharings_rule_address_by_address(data):
    """``SendsSeen``'s SQL picks out exactly the sends ``sharing.involves_excluded`` calls
    unshared: To or any CC, any case, subdomains yes, look-alikes and a local part that
    merely names the domain no, a ``_`` in the domain no wildcard, a Unicode domain by its
    IDNA form; a colleague's unshared send hidden, the viewer's own and ownerless ones kept."""
    from gateway.receive.mailboxes import sharing

    db, s = data
    excluded = ("private-bank.example.jp", "my_corp.example", "xn--r8jz45g.jp")
    cases = [
        ("ceo@private-bank.example.jp", []),
        ("CEO@Private-Bank.Example.JP", []),
        ("cto@mail.private-bank.example.jp", []),
        ("ceo@notprivate-bank.example.jp", []),
        ("private-bank.example.jp@other.example", []),
        ("buyer@client.example.jp", ["cfo@private-bank.example.jp"]),
        ("buyer@client.example.jp", ["a@x.example", "CFO@sub.Private-Bank.example.jp"]),
        ("buyer@client.example.jp", ["private-bank.example.jp@x.example"]),
        ("a@my_corp.example", []),
        ("a@myxcorp.example", []),
        ("a@例え.jp", []),
        ("a@xn--r8jz45g.jp", []),
    ]
    tag = secrets.token_hex(4)

    def write(conn):
        """A fresh org of its own (the module's org keeps its sends as they were)."""
        fresh = seed(conn)
        colleague, viewer = fresh["users"][1], fresh["users"][0]
        rows = [
            {**fresh["rows"][0], "user_id": owner, "to_email": to, "cc_emails": cc,
             "message_id": f"<{tag}-{i}-{owner}@x>", "verp_token": f"{tag}-{i}-{owner}",
             "module": None, "record_id": None}
            for i, (to, cc) in enumerate(cases)
            for owner in (colleague, viewer, None)
        ]  # fmt: skip
        ids = [
            conn.execute(insert(sends).values(r).returning(sends.c.id)).scalar_one() for r in rows
        ]
        return list(zip(ids, rows, strict=True)), colleague, viewer

    from sqlalchemy import select

    written, colleague, viewer = db.loop.run_until_complete(db.db.run_write(write))
    seen = tracking_store.SendsSeen(viewer, excluded)
    ids = [i for i, _ in written]
    visible = set(
        db(lambda conn: conn.execute(
            select(sends.c.id).where(sends.c.id.in_(ids), seen.clause())
        ).scalars().all())
    )  # fmt: skip
    expected = {
        i for i, row in written
        if row["user_id"] != colleague
        or not sharing.involves_excluded([row["to_email"], *row["cc_emails"]], excluded)
    }  # fmt: skip
    assert visible == expected
    hidden = {row["to_email"] for i, row in written if i not in visible}
    assert "ceo@notprivate-bank.example.jp" not in hidden and "a@myxcorp.example" not in hidden
    assert "a@例え.jp" in hidden and "CEO@Private-Bank.Example.JP" in hidden
