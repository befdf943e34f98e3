"""How fast are the SalesInbox columns over a rep's 10,000 polled messages?

Seeds one org (200 contacts with an open deal, 200 other contacts, 200 leads,
50 colleagues, strangers) and 10,000 incoming polled messages of one user,
round-robin over the five kinds of sender, then times one column's page
(``storage.inbox.read_columns``: the page and the column's total in one
statement) and the whole overview (every column's first page, one statement).
Baseline, in the same run: the plain mailbox listing a client without the CRM
would show (the user's newest 25 incoming messages and their count: two indexed
statements, no classification); the ratio printed is baseline ÷ ours per overview.

The tables are queried right after the bulk load, before PostgreSQL has any
statistics for them (the worst case: an import just ran); ``--analyze``
measures with statistics.

Run: ``python bench/bench_inbox.py [sqlite|postgresql+asyncpg://…] [N] [--analyze]``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import func, insert, select, text  # noqa: E402

from storage import inbox  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.schema import contacts, deals, leads, messages, orgs, users  # noqa: E402

KINDS = ("deal", "contact", "lead", "colleague", "stranger")
DOMAIN = "bench.example.jp"


def sender(kind: str, i: int) -> str:
    if kind == "colleague":
        return f"c{i % 50}@{DOMAIN}"
    return f"{kind}{i % 200}@{kind}.example"


def seed(conn, n: int) -> tuple[int, int]:
    org_id = conn.execute(
        insert(orgs)
        .values(name=f"bench {uuid.uuid4().hex}", plan="enterprise", domains=[DOMAIN])
        .returning(orgs.c.id)
    ).scalar_one()
    user_id = conn.execute(
        insert(users)
        .values(
            org_id=org_id,
            email=f"rep@{DOMAIN}",
            email_norm=f"rep@{DOMAIN}",
            name="rep",
            dropbox_token=uuid.uuid4().hex,
        )
        .returning(users.c.id)
    ).scalar_one()
    people = [
        {
            "org_id": org_id,
            "last_name": f"{k}{i}",
            "email": f"{k}{i}@{k}.example",
            "email_norm": f"{k}{i}@{k}.example",
        }
        for k in ("deal", "contact")
        for i in range(200)
    ]
    ids = conn.execute(insert(contacts).returning(contacts.c.id), people).scalars().all()
    conn.execute(
        insert(deals),
        [
            {"org_id": org_id, "name": f"d{c}", "contact_id": c, "stage": "proposal"}
            for c in ids[:200]
        ],
    )
    conn.execute(
        insert(leads),
        [
            {
                "org_id": org_id,
                "last_name": f"l{i}",
                "email": f"lead{i}@lead.example",
                "email_norm": f"lead{i}@lead.example",
            }
            for i in range(200)
        ],
    )
    rows = []
    for i in range(n):
        kind, h = KINDS[i % len(KINDS)], uuid.uuid4().hex
        rows.append(
            {
                "org_id": org_id,
                "user_id": user_id,
                "message_id": f"{h}@bench",
                "content_hash": h,
                "subject": f"{kind} {i}",
                "from_addr": sender(kind, i),
                "date": datetime.now(UTC),
                "direction": "incoming",
                "source": "imap",
                "size": 10,
                "raw": b"x",
            }
        )
    conn.execute(insert(messages), rows)
    return org_id, user_id


async def main(url: str, n: int) -> None:
    db = Database(url)
    await upgrade(db)
    org_id, user_id = await db.run_write(seed, n)
    if db.dialect == "postgresql" and "--analyze" in sys.argv:
        async with db.begin() as conn:
            await conn.execute(text("ANALYZE"))
    month = (date.today().replace(day=1), date(2100, 1, 1))
    for _ in range(3):
        times = {}
        async with db.connect() as conn:
            for column in inbox.InboxColumn:
                t = time.perf_counter()
                [page] = await inbox.read_columns(
                    conn, org_id, user_id, [column], domains=(DOMAIN,), this_month=month, limit=25
                )
                times[column.value] = (time.perf_counter() - t, page.count)
            t = time.perf_counter()
            pages = await inbox.read_columns(
                conn,
                org_id,
                user_id,
                list(inbox.InboxColumn),
                domains=(DOMAIN,),
                this_month=month,
                limit=25,
            )
            times["overview"] = (time.perf_counter() - t, sum(p.count for p in pages))
            t = time.perf_counter()
            mine = (messages.c.user_id == user_id) & (messages.c.direction == "incoming")
            newest = select(messages.c.id, messages.c.subject, messages.c.from_addr).where(mine)
            await conn.execute(newest.order_by(messages.c.id.desc()).limit(25))
            total = (await conn.execute(select(func.count()).where(mine))).scalar_one()
            times["bare listing"] = (time.perf_counter() - t, total)
        print(
            f"{db.dialect}, {n} messages: "
            + ", ".join(f"{k} {s * 1000:.0f} ms ({c})" for k, (s, c) in times.items())
            + f"; ratio bare/overview {times['bare listing'][0] / times['overview'][0]:.2f}x"
        )
    await db.dispose()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    target = args[0] if args else "sqlite"
    count = int(args[1]) if len(args) > 1 else 10_000
    if target == "sqlite":
        target = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
    asyncio.run(main(target, count))
