"""Relay throughput: our relay worker vs a bare aiosmtplib loop, both into Postfix's smtp-sink.

Both sides use the same number of reused SMTP connections and the same ~5 KB
composed messages.  The bare loop only sends.  Ours claims the queued sends
from the database in batches, delivers them with the VERP sender, and
records every outcome (state, status, ``email.sent`` event) — a message
counts only once its outcome is committed.  Prints both rates and the ratio.

Usage: python bench/bench_send.py [N] [CONNECTIONS]
(MAILGATE_BENCH_DATABASE_URL=postgresql+asyncpg://… to measure on PostgreSQL;
MAILGATE_BENCH_LOOP=uvloop to run both sides on uvloop instead of asyncio's loop.)
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402

from gateway.org import admin  # noqa: E402
from gateway.sending.compose import compose, make_message_id  # noqa: E402
from gateway.sending.relay import RelayConfig, RelayWorker  # noqa: E402
from gateway.sending.tokens import new_verp_token  # noqa: E402
from storage import sends as send_store  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from tests.support.smtp_sink import SmtpSink, available, free_port  # noqa: E402

DOMAIN = "bench.example"


def message(i: int) -> tuple[str, bytes]:
    mid = make_message_id(DOMAIN)
    html = "<p>" + ("ご案内の本文です。" * 20 + "<br>\n") * 5 + f"</p><p>#{i}</p>"
    raw = compose(
        from_addr="sender@bench.example",
        from_name="送信者",
        to_addr=f"rcpt{i}@example.net",
        to_name="山田 太郎",
        subject=f"新製品のご案内 #{i}",
        html=html,
        text="本文 " * 200,
        message_id=mid,
        headers={"X-Mailgate-Send": str(i)},
    )
    return mid[1:-1], raw


async def bare(port: int, raws: list[bytes], connections: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for raw in raws:
        queue.put_nowait(raw)

    async def one() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
        await smtp.connect()
        while not queue.empty():
            await smtp.sendmail("bounces@bench.example", ["rcpt@example.net"], queue.get_nowait())
        await smtp.quit()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return len(raws) / (time.perf_counter() - t0)


async def ours(url: str, port: int, messages: list[tuple[str, bytes]], connections: int) -> float:
    db = Database(url)
    await upgrade(db)
    org = await admin.create_org(db, f"bench-{time.time_ns()}", plan="enterprise")
    user = await admin.create_user(
        db, str(org["id"]), "s@bench.example", name="S", mail_domain=DOMAIN
    )
    now = datetime.now(UTC)
    rows = [
        {
            "org_id": org["id"],
            "user_id": user["id"],
            "kind": "mass",
            "to_email": f"rcpt{i}@example.net",
            "from_email": "s@bench.example",
            "subject": "bench",
            "message_id": mid,
            "verp_token": new_verp_token(),
            "links": [],
            "raw": raw,
            "state": "queued",
            "attempts": 0,
            "status": "queued",
            "next_attempt_at": now,
            "created_at": now,
        }
        for i, (mid, raw) in enumerate(messages)
    ]
    for start in range(0, len(rows), 1000):
        await db.run_write(send_store.insert_sends, rows[start : start + 1000])
    worker = RelayWorker(
        db, RelayConfig.parse(f"smtp://127.0.0.1:{port}"), mail_domain=DOMAIN, pool_size=connections
    )
    t0 = time.perf_counter()
    done = 0
    while done < len(rows):
        n = await worker.run_once()
        if n == 0:
            raise RuntimeError("queue drained early: some sends were not delivered")
        done += n
    rate = len(rows) / (time.perf_counter() - t0)
    await worker.stop()
    await db.dispose()
    return rate


async def main(n: int, connections: int) -> None:
    sys.setswitchinterval(0.0005)  # as `mailgate serve` runs (gateway/serve.py)
    messages = [message(i) for i in range(n)]
    port = free_port()
    sink = SmtpSink(port, dump=False).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = (
                os.environ.get("MAILGATE_BENCH_DATABASE_URL")
                or f"sqlite+aiosqlite:///{tmp}/bench.db"
            )
            await bare(port, [raw for _, raw in messages[:200]], connections)  # warm-up
            base = await bare(port, [raw for _, raw in messages], connections)
            mine = await ours(url, port, messages, connections)
    finally:
        sink.stop()
    size = sum(len(r) for _, r in messages) // n
    print(f"messages: {n} x ~{size} bytes, {connections} reused connections, smtp-sink relay")
    print(
        f"database: {url.split('://')[0]}, event loop: {type(asyncio.get_running_loop()).__module__}"
    )
    print(f"bare aiosmtplib loop : {base:8.0f} msg/s")
    print(f"mailgate relay worker: {mine:8.0f} msg/s (claimed, delivered, outcome committed)")
    print(f"ratio: {mine / base:.2f}")


if __name__ == "__main__":
    if not available():
        sys.exit("smtp-sink not installed (apt-get install postfix)")
    loop_factory = None
    if os.environ.get("MAILGATE_BENCH_LOOP") == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(
            main(
                int(sys.argv[1]) if len(sys.argv) > 1 else 5000,
                int(sys.argv[2]) if len(sys.argv) > 2 else 4,
            )
        )
