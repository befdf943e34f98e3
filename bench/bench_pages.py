"""Every dashboard page's server time with 1,000,000 sends on PostgreSQL (issue #13).

Seeds a database of its own (created, and dropped at the end unless ``--keep``)
with one realistic org: 20 users (one admin, who is logged in), 50 templates of
3 versions each, 60,000 leads, 20,000 contacts with 5,000 deals, 1,000,000
sends over 400 days (~35 % opened, ~8 % clicked, ~3 % replied, ~2 % bounced;
70 % to leads, 30 % to contacts), 200,000 received messages filed on the
users (polled, linked to their lead), 10 sent campaigns with 1,000,000
recipients in all (half in the biggest), 3 lists, 2 syncs with runs and skips,
20,000 suppressions, 40 failed inbound mails and 800 quota days.  The big rows
are made server-side with ``generate_series`` (a few minutes), then
``VACUUM ANALYZE`` (autovacuum would have done it on a live database).

Then it starts mailgate's HTTP app in a subprocess (the app of ``mailgate serve
--only http``: ``create_app`` under uvicorn, the same loop) wrapped in an ASGI
timer that adds ``Server-Timing: app;dur=…`` (from the request's arrival to
the response's first byte: the handler, its reads and the template render),
logs in over HTTP as the admin and fetches every dashboard page ``--runs``
times (7), the pages taking turns.  Baseline in the same run and process: a
bare Starlette route (``/__bare``) doing one trivial ``SELECT`` (the org's row
by id) on the same database and pool, timed by the same wrapper.  Printed per
page: median and p95 of server time and of the client's end-to-end time, and
the median ÷ the bare route's.

Run: ``python bench/bench_pages.py [postgresql+asyncpg://…] [--runs 7] [--keep]
[--reuse DBNAME]`` (the URL defaults to ``MAILGATE_TEST_DATABASE_URL``;
``--reuse`` times an existing database seeded by an earlier ``--keep`` run,
after applying any new migration).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.databases import _pg_admin  # noqa: E402
from tests.support.smtp_sink import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ORG_NAME = "bench pages"
DOMAIN = "pages.example.co.jp"
PASSWORD = "correct horse battery staple"
SECRET = "bench-pages-secret"
SENDS = 1_000_000
DAYS = 400
USERS = 20
TEMPLATES = 50
VERSIONS = 3
LEADS = 60_000
CONTACTS = 20_000
DEALS = 5_000
RECEIVED = 200_000
CAMPAIGNS = 10
RECIPIENTS = 1_000_000
SUPPRESSIONS = 20_000
FAILED_INBOUND = 40

RAW_MAIL = (
    "From: Lead <lead@example.jp>\r\nTo: rep@" + DOMAIN + "\r\nSubject: Re: ご提案\r\n"
    "Message-ID: <m@bench>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0900\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\nご提案ありがとうございます。\r\n"
).encode()


# -- the database ---------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def seed_small(conn) -> dict[str, Any]:
    """Org, users, templates, CRM records, lists, syncs: the rows the big ones point at."""
    from sqlalchemy import insert, text

    from storage.schema import orgs, users
    from storage.schema_campaigns import campaigns, mailing_lists
    from storage.schema_sending import template_versions, templates
    from storage.schema_syncs import syncs

    org_id = conn.execute(
        insert(orgs)
        .values(name=ORG_NAME, plan="enterprise", timezone="Asia/Tokyo", domains=[DOMAIN])
        .returning(orgs.c.id)
    ).scalar_one()
    user_ids = [
        conn.execute(
            insert(users)
            .values(
                org_id=org_id,
                email=f"rep{i}@{DOMAIN}",
                email_norm=f"rep{i}@{DOMAIN}",
                name=f"営業 {i}",
                is_admin=i == 0,
                dropbox_token=secrets.token_hex(16),
            )
            .returning(users.c.id)
        ).scalar_one()
        for i in range(USERS)
    ]
    template_ids = []
    for i in range(TEMPLATES):
        tid = conn.execute(
            insert(templates)
            .values(
                org_id=org_id,
                name=f"テンプレート {i}",
                module="leads",
                version=VERSIONS,
                subject=f"ご案内 {i}",
                html="<p>{{first_name}} 様</p>",
                created_by=user_ids[i % USERS],
            )
            .returning(templates.c.id)
        ).scalar_one()
        template_ids.append(tid)
        conn.execute(
            insert(template_versions),
            [
                {
                    "template_id": tid,
                    "version": v,
                    "subject": f"ご案内 {i} v{v}",
                    "html": "<p>x</p>",
                }
                for v in range(1, VERSIONS + 1)
            ],
        )
    p = {"org": org_id, "u0": user_ids[0], "nu": USERS}
    conn.execute(
        text("""
        INSERT INTO leads (org_id, first_name, last_name, email, email_norm, company, phone,
                           title, status, source, owner_id, do_not_mail, created_at, updated_at)
        SELECT :org, '太郎' || g, '見込' || g, 'lead' || g || '@prospect.example',
               'lead' || g || '@prospect.example', '株式会社' || (g % 5000), '', '', 'new', 'api',
               :u0 + g % :nu, false, now() - make_interval(days => g % 400), now()
        FROM generate_series(1, :n) g"""),
        {**p, "n": LEADS},
    )
    conn.execute(
        text("""
        INSERT INTO contacts (org_id, first_name, last_name, email, email_norm, phone, title,
                              source, owner_id, do_not_mail, created_at, updated_at)
        SELECT :org, '花子' || g, '顧客' || g, 'contact' || g || '@client.example',
               'contact' || g || '@client.example', '', '', 'api', :u0 + g % :nu, false,
               now() - make_interval(days => g % 400), now()
        FROM generate_series(1, :n) g"""),
        {**p, "n": CONTACTS},
    )
    first_contact = conn.execute(
        text("SELECT min(id) FROM contacts WHERE org_id = :org"), p
    ).scalar_one()
    conn.execute(
        text("""
        INSERT INTO deals (org_id, name, contact_id, stage, owner_id, closing_date,
                           created_at, updated_at)
        SELECT :org, '商談' || g, :c0 + g * 4,
               (ARRAY['qualification','proposal','closed_won','closed_lost'])[1 + g % 4],
               :u0 + g % :nu, current_date + (g % 60), now(), now()
        FROM generate_series(0, :n - 1) g"""),
        {**p, "n": DEALS, "c0": first_contact},
    )
    list_ids = [
        conn.execute(
            insert(mailing_lists)
            .values(org_id=org_id, name=f"リスト {i}", description="", kind="list", register=False)
            .returning(mailing_lists.c.id)
        ).scalar_one()
        for i in range(3)
    ]
    conn.execute(
        text("""
        INSERT INTO list_members (org_id, list_id, email, email_norm, first_name, last_name,
               company, fields, subscription, consent, status, module, record_id, source,
               created_at, updated_at)
        SELECT :org, (CAST(:lists AS BIGINT[]))[1 + g % 3], 'lead' || g || '@prospect.example',
               'lead' || g || '@prospect.example', '太郎' || g, '見込' || g, '', '{}',
               'marketing', 'none',
               (ARRAY['subscribed','subscribed','subscribed','unsubscribed','bounced'])[1 + g % 5],
               'leads', NULL, 'sync', now(), now()
        FROM generate_series(1, :n) g"""),
        {**p, "lists": list_ids, "n": LEADS},
    )
    sync_ids = [
        conn.execute(
            insert(syncs)
            .values(org_id=org_id, user_id=user_ids[0], module=m, list_id=list_ids[i],
                    subscription="marketing")
            .returning(syncs.c.id)
        ).scalar_one()
        for i, m in enumerate(("leads", "contacts"))
    ]  # fmt: skip
    for sid in sync_ids:
        conn.execute(
            text("""
            INSERT INTO sync_runs (org_id, sync_id, kind, started_at, finished_at, total, added,
                                   updated, removed, skipped, skipped_reasons)
            SELECT :org, :sid, CASE WHEN g = 1 THEN 'full' ELSE 'change' END,
                   now() - make_interval(mins => g * 10), now() - make_interval(mins => g * 10 - 1),
                   100, 80, 10, 5, 5, '{"no_email": 5}'
            FROM generate_series(1, 2000) g"""),
            {**p, "sid": sid},
        )
        conn.execute(
            text("""
            INSERT INTO sync_skips (run_id, org_id, module, record_id, email, reason)
            SELECT r.id, :org, 'leads', r.id, NULL, 'no_email'
            FROM sync_runs r, generate_series(1, 5) g WHERE r.sync_id = :sid"""),
            {**p, "sid": sid},
        )
    campaign_ids = [
        conn.execute(
            insert(campaigns)
            .values(org_id=org_id, user_id=user_ids[i % USERS], name=f"キャンペーン {i}",
                    list_ids=[list_ids[i % 3]], subject="ニュース", html="<p>x</p>",
                    from_email=f"rep0@{DOMAIN}", status="sent", recipients=0,
                    created_at=text(f"now() - interval '{i * 30} days'"),
                    updated_at=text("now()"))
            .returning(campaigns.c.id)
        ).scalar_one()
        for i in range(CAMPAIGNS)
    ]  # fmt: skip
    return {
        "org": org_id,
        "users": user_ids,
        "templates": template_ids,
        "lists": list_ids,
        "syncs": sync_ids,
        "campaigns": campaign_ids,
    }


def seed_big(conn, s: dict[str, Any]) -> None:
    """The million sends, the received mail, the campaigns' recipients, the rest."""
    from sqlalchemy import text

    org, users = s["org"], s["users"]
    first_lead = conn.execute(
        text("SELECT min(id) FROM leads WHERE org_id = :o"), {"o": org}
    ).scalar_one()
    first_contact = conn.execute(
        text("SELECT min(id) FROM contacts WHERE org_id = :o"), {"o": org}
    ).scalar_one()
    common = {
        "org": org,
        "u0": users[0],
        "nu": len(users),
        "t0": s["templates"][0],
        "nt": len(s["templates"]),
        "l0": first_lead,
        "c0": first_contact,
        "nl": LEADS,
        "nc": CONTACTS,
    }
    # Sends: g picks everything (cheap modular arithmetic, no random(): repeatable).
    # One in 8 is a mass send without template; opens 35 %, clicks 8 %, replies 3 %,
    # bounces 2 % (never opened), spread over 400 days.
    conn.execute(
        text("""
        INSERT INTO sends (org_id, user_id, kind, module, record_id, to_email, from_email,
               subject, template_id, template_version, message_id, verp_token, links,
               cc_emails, state, attempts, next_attempt_at, status, sent_at, opened_at,
               clicked_at, replied_at, bounced_at, bounce_type, created_at)
        SELECT :org, :u0 + g % :nu, CASE WHEN g % 8 = 0 THEN 'mass' ELSE 'individual' END,
               m.module, m.rid, m.email, 'rep' || (g % :nu) || '@pages.example.co.jp',
               'ご案内', CASE WHEN g % 5 = 0 THEN NULL ELSE :t0 + g % :nt END,
               CASE WHEN g % 5 = 0 THEN NULL ELSE 1 + (g / 7) % 3 END,
               '<s' || g || '@pages.bench>', 'v' || g, '[]', '[]', 'sent', 1, at, 'sent',
               at,
               CASE WHEN g % 100 < 35 THEN at + interval '2 hours' END,
               CASE WHEN g % 100 < 8 THEN at + interval '3 hours' END,
               CASE WHEN g % 100 BETWEEN 5 AND 7 THEN at + interval '1 day' END,
               CASE WHEN g % 100 >= 98 THEN at + interval '1 minute' END,
               CASE WHEN g % 100 >= 98 THEN 'hard' END,
               at
        FROM generate_series(CAST(1 AS BIGINT), :n) g,
             LATERAL (SELECT now() - make_interval(secs => ((g::bigint * 3456) % 3456000000) / 100.0)
                      AS at) t,
             LATERAL (SELECT CASE WHEN g % 10 < 7 THEN 'leads' ELSE 'contacts' END AS module,
                             CASE WHEN g % 10 < 7 THEN :l0 + (g * 7919) % :nl
                                  ELSE :c0 + (g * 7919) % :nc END AS rid,
                             CASE WHEN g % 10 < 7
                                  THEN 'lead' || 1 + (g * 7919) % :nl || '@prospect.example'
                                  ELSE 'contact' || 1 + (g * 7919) % :nc || '@client.example'
                             END AS email) m"""),
        {**common, "n": SENDS},
    )
    # Received mail: polled, from leads, contacts with deals, colleagues and strangers.
    conn.execute(
        text("""
        INSERT INTO messages (org_id, user_id, message_id, content_hash, subject, from_addr,
               from_name, to_addrs, cc_addrs, date, direction, source, "references",
               text_body, html_body, defects, size, seen, raw, created_at)
        SELECT :org, :u0 + g % :nu, '<r' || g || '@in.bench>', md5('r' || g), 'Re: ご案内',
               CASE g % 4 WHEN 0 THEN 'lead' || 1 + g % :nl || '@prospect.example'
                          WHEN 1 THEN 'contact' || 1 + (g % 5000) * 4 || '@client.example'
                          WHEN 2 THEN 'rep' || g % :nu || '@pages.example.co.jp'
                          ELSE 'stranger' || g || '@elsewhere.example' END,
               '送信者', '["rep0@pages.example.co.jp"]', '[]', at, 'incoming',
               CASE WHEN g % 3 = 0 THEN 'pop' ELSE 'imap' END, '[]',
               'ご提案ありがとうございます。', '', '[]', 300, g % 2 = 0, :raw, at
        FROM generate_series(CAST(1 AS BIGINT), :n) g,
             LATERAL (SELECT now() - make_interval(secs => ((g::bigint * 17280) % 3456000000) / 100.0)
                      AS at) t"""),
        {**common, "n": RECEIVED, "raw": RAW_MAIL},
    )
    conn.execute(
        text("""
        INSERT INTO message_links (org_id, message_id, module, record_id)
        SELECT :org, id, 'leads', :l0 + (id % :nl) FROM messages
        WHERE org_id = :org AND from_addr LIKE 'lead%'"""),
        common,
    )
    conn.execute(
        text("""
        INSERT INTO campaign_recipients
          (org_id, campaign_id, email, email_norm, first_name, last_name, company, due_at,
           status, sent_at, opened_at, clicked_at, bounced_at, unsubscribed_at)
        SELECT :org,
               CASE WHEN g <= :half THEN :first
                    ELSE (CAST(:rest AS BIGINT[]))[1 + g % :nrest] END,
               'p' || g || '@k.example', 'p' || g || '@k.example', '太郎', '見込', '', now(),
               (ARRAY['sent','opened','clicked','bounced','unsubscribed','sent'])[1 + g % 6],
               now(),
               CASE WHEN g % 6 IN (1, 2) THEN now() END,
               CASE WHEN g % 6 = 2 THEN now() END,
               CASE WHEN g % 6 = 3 THEN now() END,
               CASE WHEN g % 6 = 4 THEN now() END
        FROM generate_series(1, :n) g"""),
        {
            "org": org,
            "half": RECIPIENTS // 2,
            "first": s["campaigns"][0],
            "rest": s["campaigns"][1:],
            "nrest": len(s["campaigns"]) - 1,
            "n": RECIPIENTS,
        },
    )
    conn.execute(
        text("""
        UPDATE campaigns c SET recipients = n.n
        FROM (SELECT campaign_id, count(*) n FROM campaign_recipients GROUP BY 1) n
        WHERE n.campaign_id = c.id""")
    )
    conn.execute(
        text("""
        INSERT INTO suppressions (org_id, email_norm, reason, detail, created_at)
        SELECT :org, 'gone' || g || '@prospect.example',
               (ARRAY['hard_bounce','unsubscribe','complaint','manual'])[1 + g % 4], '',
               now() - make_interval(mins => g)
        FROM generate_series(1, :n) g"""),
        {"org": org, "n": SUPPRESSIONS},
    )
    conn.execute(
        text("""
        INSERT INTO inbound (org_id, user_id, channel, mail_from, rcpt_to, state, attempts,
                             failed_stage, last_error, raw, received_at)
        SELECT :org, :u0, 'dropbox', 'rep0@pages.example.co.jp', '[]', 'failed', 5, 'file',
               'boom', :raw, now() - make_interval(mins => g)
        FROM generate_series(1, :n) g"""),
        {"org": org, "u0": users[0], "n": FAILED_INBOUND, "raw": RAW_MAIL},
    )
    conn.execute(
        text("""
        INSERT INTO quota_usage (org_id, kind, day, used, warned)
        SELECT :org, k, to_char(current_date - g, 'YYYY-MM-DD'), 2000 + g % 200, false
        FROM generate_series(0, :days - 1) g, unnest(ARRAY['individual', 'mass']) k"""),
        {"org": org, "days": DAYS},
    )


def targets(conn) -> dict[str, Any]:
    """What the pages are asked about, found in a seeded database."""
    from sqlalchemy import text

    def one(sql: str, **p: Any) -> Any:
        return conn.execute(text(sql), p).scalar_one()

    org = one("SELECT id FROM orgs WHERE name = :n", n=ORG_NAME)
    return {
        "org": org,
        "admin": one(
            "SELECT id FROM users WHERE org_id = :o AND is_admin ORDER BY id LIMIT 1", o=org
        ),
        "admin_email": one(
            "SELECT email FROM users WHERE org_id = :o AND is_admin ORDER BY id LIMIT 1", o=org
        ),
        "user": one("SELECT id FROM users WHERE org_id = :o ORDER BY id OFFSET 3 LIMIT 1", o=org),
        "template": one(
            "SELECT id FROM templates WHERE org_id = :o ORDER BY id OFFSET 7 LIMIT 1", o=org
        ),
        "lead": one(
            "SELECT record_id FROM message_links WHERE org_id = :o AND module = 'leads' "
            "ORDER BY id LIMIT 1",
            o=org,
        ),
        "email": one(
            "SELECT m.id FROM messages m JOIN users u ON u.id = m.user_id "
            "WHERE m.org_id = :o AND u.is_admin ORDER BY m.id DESC LIMIT 1",
            o=org,
        ),
        "campaign": one(
            "SELECT id FROM campaigns WHERE org_id = :o ORDER BY recipients DESC, id LIMIT 1",
            o=org,
        ),
        "sync": one("SELECT id FROM syncs WHERE org_id = :o ORDER BY id LIMIT 1", o=org),
        "counts": {
            t: one(f"SELECT count(*) FROM {t}")  # noqa: S608 - fixed table names
            for t in ("sends", "messages", "campaign_recipients", "leads", "contacts")
        },
    }


async def prepare(url: str, reuse: bool) -> dict[str, Any]:
    from sqlalchemy import text

    from gateway.org import admin
    from storage.db import Database
    from storage.migrate import upgrade

    db = Database(url)
    await upgrade(db)
    if not reuse:
        t0 = time.perf_counter()
        small = await db.run_write(seed_small)
        await db.run_write(seed_big, small)
        print(f"seeded in {time.perf_counter() - t0:.0f} s", flush=True)
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE"))
        print(f"vacuumed and analysed at {time.perf_counter() - t0:.0f} s", flush=True)
    found = await db.run_read(targets)
    await admin.set_password(db, found["org"], str(found["admin"]), PASSWORD)
    await db.dispose()
    return found


# -- the server (a subprocess) -------------------------------------------------------------


def serve(port: int) -> None:
    """mailgate's HTTP app and the bare route, behind one timer (run as a subprocess)."""
    import uvicorn
    from sqlalchemy import text
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gateway.config import load_settings
    from gateway.http.app import create_app
    from gateway.serve import event_loop_factory
    from gateway.services import Services

    services = Services.build(load_settings())
    app = create_app(services)
    org_id = int(os.environ["BENCH_ORG"])

    async def bare_select(request):
        async with services.db.connect() as conn:
            name = (
                await conn.execute(text("SELECT name FROM orgs WHERE id = :o"), {"o": org_id})
            ).scalar_one()
        return PlainTextResponse(name)

    bare = Starlette(routes=[Route("/__bare", bare_select)])

    async def timed(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        target = bare if scope["path"] == "/__bare" else app
        t0 = time.perf_counter()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1000
                headers = [*message.get("headers", []), (b"server-timing", b"app;dur=%.2f" % ms)]
                message = {**message, "headers": headers}
            await send(message)

        await target(scope, receive, timed_send)

    config = uvicorn.Config(
        timed,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:  # as `mailgate serve`
        runner.run(uvicorn.Server(config).serve())


# -- the client ----------------------------------------------------------------------------


def pages(t: dict[str, Any]) -> dict[str, str]:
    from datetime import date, timedelta

    today = date.today()
    year_from = (today - timedelta(days=DAYS - 1)).isoformat()
    return {
        "bare SELECT (baseline)": "/__bare",
        "/ (quotas)": "/",
        "/analytics (30 days)": "/analytics",
        "/analytics 400 days by month": f"/analytics?from={year_from}&to={today}&group=month",
        "/analytics user, by week": f"/analytics?user={t['user']}&group=week",
        "/analytics template, 400 days": f"/analytics?template={t['template']}&from={year_from}",
        "/records/leads/{id}": f"/records/leads/{t['lead']}",
        "/emails/{id}": f"/emails/{t['email']}",
        "/inbox": "/inbox",
        "/dropbox": "/dropbox",
        "/campaigns": "/campaigns",
        "/campaigns/{biggest}": f"/campaigns/{t['campaign']}",
        "/campaigns/{biggest}?status=bounced": f"/campaigns/{t['campaign']}?status=bounced",
        "/syncs": "/syncs",
        "/syncs/{id}": f"/syncs/{t['sync']}",
        "/suppressions": "/suppressions",
        "/attention": "/attention",
    }


_TIMING = re.compile(r"app;dur=([\d.]+)")


def login(client, email: str) -> None:
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = client.post("/login", data={"csrf": csrf, "email": email, "password": PASSWORD})
    assert r.status_code == 303, (r.status_code, r.text[:300])


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


#: An excluded domain for the second pass: the org's contacts' (30 % of the sends), so a
#: colleague's "did not respond" skips every such send not their own (issue #13's leak fix).
EXCLUDED = "client.example"


def excluded_pages(t: dict[str, Any]) -> dict[str, str]:
    """The pages whose reads change when the org excludes a domain, timed once more."""
    every = pages(t)
    return {
        "bare SELECT (baseline)": every["bare SELECT (baseline)"],
        **{
            f"{name} [excludes {EXCLUDED}]": every[name]
            for name in ("/analytics (30 days)", "/analytics 400 days by month")
        },
    }


def set_excluded(url: str, org: int, on: bool) -> None:
    """Add (or remove) :data:`EXCLUDED` for the org, as an admin's PUT would store it."""
    from sqlalchemy import delete, insert

    from storage.db import Database
    from storage.schema_mailboxes import excluded_domains

    async def go() -> None:
        db = Database(url)
        try:
            async with db.engine.begin() as conn:
                await conn.execute(delete(excluded_domains).where(excluded_domains.c.org_id == org))
                if on:
                    await conn.execute(insert(excluded_domains).values(org_id=org, domain=EXCLUDED))
        finally:
            await db.dispose()

    asyncio.run(go())


def measure(
    port: int, t: dict[str, Any], runs: int, cases: dict[str, str] | None = None
) -> dict[str, dict[str, list[float]]]:
    import httpx

    cases = cases or pages(t)
    out: dict[str, dict[str, list[float]]] = {n: {"server": [], "client": []} for n in cases}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        login(client, t["admin_email"])
        for name, path in cases.items():  # warm-up: connections, template compilation
            r = client.get(path)
            if r.status_code != 200:
                sys.exit(f"{name}: {path} answered {r.status_code}: {r.text[:300]}")
        for _ in range(runs):  # the pages take turns: load that comes and goes hits all
            for name, path in cases.items():
                c0 = time.perf_counter()
                r = client.get(path)
                client_ms = (time.perf_counter() - c0) * 1000
                assert r.status_code == 200, (path, r.status_code)
                out[name]["server"].append(float(_TIMING.search(r.headers["server-timing"])[1]))
                out[name]["client"].append(client_ms)
    return out


def report(results: dict[str, dict[str, list[float]]], t: dict[str, Any], runs: int) -> None:
    one, five, _ = os.getloadavg()
    counts = ", ".join(f"{k} {v:,}" for k, v in t["counts"].items())
    print(f"\n{counts}; {runs} runs per page, {os.cpu_count()} cores, load {one:.2f} {five:.2f}")
    bare = statistics.median(results["bare SELECT (baseline)"]["server"])
    print(
        f"{'page':40} {'server median':>13} {'p95':>8} {'client median':>13} {'p95':>8} "
        f"{'÷ bare':>8}  < 200 ms"
    )
    for name, r in results.items():
        med = statistics.median(r["server"])
        print(
            f"{name:40} {med:10.1f} ms {p95(r['server']):5.1f} ms "
            f"{statistics.median(r['client']):10.1f} ms {p95(r['client']):5.1f} ms "
            f"{med / bare:7.1f}x  {'yes' if p95(r['server']) < 200 else 'NO'}"
        )


def wait_http(port: int, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("MAILGATE_TEST_DATABASE_URL"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument("--reuse", metavar="DBNAME", help="time an existing seeded database")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if not args.url or not args.url.startswith("postgresql"):
        sys.exit("needs a PostgreSQL URL (argument or MAILGATE_TEST_DATABASE_URL)")
    name = args.reuse or f"mg_bench_pages_{secrets.token_hex(4)}"
    if not args.reuse:
        _pg_admin(args.url, f'CREATE DATABASE "{name}"')
    url = with_database(args.url, name)
    proc = None
    try:
        t = asyncio.run(prepare(url, reuse=bool(args.reuse)))
        port = free_port()
        tmp = tempfile.mkdtemp(prefix="mg-bench-pages-")
        env = dict(
            os.environ,
            MAILGATE_DATABASE_URL=url,
            MAILGATE_SECRET_KEY=SECRET,
            MAILGATE_DATA_DIR=tmp,
            MAILGATE_HTTP_LISTEN=f"127.0.0.1:{port}",
            BENCH_ORG=str(t["org"]),
            PYTHONPATH=str(ROOT),
        )
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], env=env, cwd=ROOT)
        wait_http(port)
        report(measure(port, t, args.runs), t, args.runs)
        set_excluded(url, t["org"], on=True)
        try:
            report(measure(port, t, args.runs, excluded_pages(t)), t, args.runs)
        finally:
            set_excluded(url, t["org"], on=False)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        if args.keep or args.reuse:
            print(f"database kept: {name}")
        else:
            _pg_admin(args.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
