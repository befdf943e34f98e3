"""How long do the Campaigns pages' reads take with 1,000,000 campaign recipients?

Seeds one org with one list and 50 sent campaigns whose recipients add up to N
(half in the first campaign, the rest spread over the other 49; statuses
mixed), then times what each page reads, in one read connection as the page
does: ``/campaigns`` (the first 50 lists with member counts, the first 50
campaigns and their stats in one grouped statement) and ``/campaigns/{id}`` of
the biggest campaign (its row, its stats, the first 50 recipients, and 50
recipients filtered by status).  The template render adds about a millisecond.

PostgreSQL only (the rows are made with ``generate_series``).
Run: ``python bench/bench_web_campaigns.py postgresql+asyncpg://… [N]``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import insert, text  # noqa: E402

from storage import campaigns as store  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.schema import orgs, users  # noqa: E402
from storage.schema_campaigns import campaigns, mailing_lists  # noqa: E402

CAMPAIGNS = 50


def seed(conn, n: int) -> tuple[int, int]:
    tag = uuid.uuid4().hex[:8]
    org_id = conn.execute(
        insert(orgs).values(name=f"bench {tag}", plan="enterprise", domains=[f"{tag}.example"])
        .returning(orgs.c.id)
    ).scalar_one()  # fmt: skip
    user_id = conn.execute(
        insert(users).values(org_id=org_id, email=f"rep@{tag}.example",
                             email_norm=f"rep@{tag}.example", name="rep",
                             dropbox_token=uuid.uuid4().hex)
        .returning(users.c.id)
    ).scalar_one()  # fmt: skip
    list_id = conn.execute(
        insert(mailing_lists).values(org_id=org_id, name="bench", description="", kind="list",
                                     register=False)
        .returning(mailing_lists.c.id)
    ).scalar_one()  # fmt: skip
    ids = [
        conn.execute(
            insert(campaigns).values(
                org_id=org_id, user_id=user_id, name=f"c{i}", list_ids=[list_id],
                subject="s", html="<p>x</p>", from_email=f"rep@{tag}.example", status="sent",
                recipients=0, created_at=text("now()"), updated_at=text("now()"),
            ).returning(campaigns.c.id)
        ).scalar_one()
        for i in range(CAMPAIGNS)
    ]  # fmt: skip
    first, rest = ids[0], ids[1:]
    conn.execute(
        text("""
        INSERT INTO campaign_recipients
          (org_id, campaign_id, email, email_norm, first_name, last_name, company, due_at,
           status, sent_at, opened_at, clicked_at)
        SELECT :org,
               CASE WHEN g <= :half THEN :first ELSE (CAST(:rest AS BIGINT[]))[1 + g % :nrest] END,
               'p' || g || '@k.example', 'p' || g || '@k.example', '', '', '', now(),
               (ARRAY['sent','opened','clicked','bounced','unsubscribed','queued'])[1 + g % 6],
               CASE WHEN g % 6 < 5 THEN now() END,
               CASE WHEN g % 6 IN (1, 2) THEN now() END,
               CASE WHEN g % 6 = 2 THEN now() END
        FROM generate_series(1, :n) AS g
        """),
        {"org": org_id, "half": n // 2, "first": first, "rest": rest, "nrest": len(rest), "n": n},
    )
    return org_id, first


def index_page(conn, org_id: int) -> None:
    store.lists_page(conn, org_id, 0, 51)
    rows = store.campaigns_page(conn, org_id, 0, 51)[:50]
    store.stats_of(conn, [r["id"] for r in rows])


def campaign_page(conn, org_id: int, cid: int, status: str | None) -> None:
    store.get_campaign(conn, org_id, cid)
    store.stats(conn, cid)
    store.recipients_page(conn, cid, after=0, limit=51, status=status)


async def main(url: str, n: int) -> None:
    db = Database(url)
    await upgrade(db)
    t0 = time.perf_counter()
    org_id, cid = await db.run_write(seed, n)
    async with db.engine.connect() as conn:
        await conn.execute(text("ANALYZE campaign_recipients"))
    if "--vacuum" in sys.argv:  # as autovacuum leaves a table that is not just loaded
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE campaign_recipients"))
    print(f"seeded {n:,} recipients in {time.perf_counter() - t0:.1f} s")
    cases = {
        "/campaigns": lambda c: index_page(c, org_id),
        "/campaigns/{id} (biggest)": lambda c: campaign_page(c, org_id, cid, None),
        "/campaigns/{id}?status=bounced": lambda c: campaign_page(c, org_id, cid, "bounced"),
    }
    for name, fn in cases.items():
        times = []
        for _ in range(7):
            t = time.perf_counter()
            await db.run_read(fn)
            times.append((time.perf_counter() - t) * 1000)
        print(f"{name:32} median {statistics.median(times):7.1f} ms  max {max(times):7.1f} ms")
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1],
            int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 1_000_000,
        )
    )
