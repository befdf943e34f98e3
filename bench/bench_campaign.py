"""A campaign to N members, from ``send`` to the last message accepted by the relay (#11).

Postfix's ``smtp-sink`` is the relay for both sides.

- **ours**: a list of N members (CSV import through the API), a campaign with
  ~5 KB of HTML and merge fields (``lead.first_name``, ``lead.last_name``,
  ``lead.company``, ``unsubscribe_url``), ``POST /api/v1/campaigns/{id}/send``
  through the HTTP API, then a ``serve --only worker`` process (the
  ``campaigns`` runner composes, the ``relay`` runner delivers over
  ``MAILGATE_RELAY_POOL_SIZE`` = CONNS reused connections) — timed from the
  ``send`` request until every send of the campaign is ``sent`` (accepted by
  the relay, outcome committed).
- **bare**: an aiosmtplib loop over CONNS reused connections sending N
  messages already composed, of our messages' average size.

The product caps the mass quota at 2,250 a day (``gateway.org.plans.MASS_CAP``).
**This benchmark lifts it in its own process** (``plans.MASS_CAP`` = N, and the
org gets a ``mass_addon`` of N): the ``send`` request is answered there.  The
worker process does not check the quota.

Rounds alternate which side goes first; each round has a fresh database.
Prints both rates, the ratio per round, the median, and the load average.

Usage: python bench/bench_campaign.py [N] [CONNS] [--rounds R]
(``MAILGATE_BENCH_DATABASE_URL=postgresql+asyncpg://…/postgres`` for PostgreSQL,
a new database per round; else SQLite in a temporary directory under /tmp.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402
import uvloop  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bench.bench_consumers import cpu_seconds, fresh_database  # noqa: E402
from gateway.org import plans  # noqa: E402
from gateway.sending.compose import compose, make_message_id  # noqa: E402
from storage.db import Database  # noqa: E402
from tests.support.server import MAIL_DOMAIN, MailgateServer  # noqa: E402
from tests.support.smtp_sink import SmtpSink, available, free_port  # noqa: E402

SECRET = "test-secret-key"  # MailgateServer's, so tokens made by the worker verify on the API

HTML = (
    "<html><body><p>{{ lead.last_name }} {{ lead.first_name | default('お客様') }} 様</p>"
    "<p>{{ lead.company }} ご担当者様へ、新製品のご案内です。</p>"
    + "".join(
        f"<p>第{i}章: 新しいサービスの詳細をご案内いたします。"
        f'<a href="https://www.example.com/product/{i}">詳しくはこちら</a></p>\n'
        for i in range(30)
    )
    + '<p><a href="{{ unsubscribe_url }}">配信停止</a></p></body></html>'
)


def members_csv(n: int) -> bytes:
    rows = ["email,last_name,first_name,company"]
    rows += [f"member{i}@example.net,山田{i},太郎,株式会社{i % 97}" for i in range(n)]
    return ("\n".join(rows) + "\n").encode()


def start_worker(url: str, tmp: Path, relay_port: int, conns: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MAILGATE_DATABASE_URL": url,
        "MAILGATE_SECRET_KEY": SECRET,
        "MAILGATE_MAIL_DOMAIN": MAIL_DOMAIN,
        "MAILGATE_DATA_DIR": str(tmp / "worker"),
        "MAILGATE_RELAY_URL": f"smtp://127.0.0.1:{relay_port}",
        "MAILGATE_RELAY_POOL_SIZE": str(conns),
    }
    cli = [sys.executable, "-c", "from gateway.cli.main import main; main()"]
    return subprocess.Popen([*cli, "serve", "--only", "worker"], env=env, stdout=subprocess.DEVNULL)


def sent_count(conn: Any, campaign_id: int) -> int:
    q = text("SELECT count(*) FROM sends WHERE campaign_id = :c AND state = 'sent'")
    return conn.execute(q, {"c": campaign_id}).scalar_one()


def raw_size(conn: Any, campaign_id: int) -> int:
    """Average size of composed messages still queued (``raw`` is dropped once delivered)."""
    q = text(
        "SELECT avg(l) FROM (SELECT length(raw) AS l FROM sends"
        " WHERE campaign_id = :c AND raw IS NOT NULL LIMIT 200) AS queued"
    )
    return int(conn.execute(q, {"c": campaign_id}).scalar_one() or 0)


def ours(url: str, tmp: Path, relay_port: int, n: int, conns: int) -> dict[str, Any]:
    plans.MASS_CAP = max(plans.MASS_CAP, n)  # lifted for the benchmark, in this process only
    server = MailgateServer(url, tmp / "http").start({"http"})
    worker = start_worker(url, tmp, relay_port, conns)
    try:
        org = server.org("Bench", plan="enterprise", domains=["bench.example"])
        server.call(_set_addon(server.db, org["id"], n))
        user = server.user(org, "rep@bench.example")
        with server.api(user) as api:
            api.timeout = 300
            list_id = api.post("/api/v1/lists", json={"name": "全員"}).json()["id"]
            r = api.post(
                f"/api/v1/lists/{list_id}/members/import",
                content=members_csv(n),
                headers={"content-type": "text/csv"},
            )
            assert r.status_code == 200 and r.json()["added"] == n, r.text[:300]
            r = api.post(
                "/api/v1/campaigns",
                json={
                    "name": "新製品のご案内",
                    "list_ids": [list_id],
                    "subject": "{{ lead.last_name }}様へ 新製品のご案内",
                    "html": HTML,
                },
            )
            assert r.status_code == 201, r.text
            campaign_id = r.json()["id"]
            time.sleep(1.0)  # the worker is up and idle
            cpu0 = cpu_seconds(worker.pid)
            t0 = time.perf_counter()
            r = api.post(f"/api/v1/campaigns/{campaign_id}/send", json={})
            assert r.status_code == 202 and r.json()["recipients"] == n, r.text[:300]
            answered = time.perf_counter() - t0
            deadline = t0 + 900
            size = 0
            while (done := server.call(server.db.run_read(sent_count, campaign_id))) < n:
                if not size:
                    size = server.call(server.db.run_read(raw_size, campaign_id))
                if worker.poll() is not None:
                    raise RuntimeError("the worker died")
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"only {done} of {n} sent after 900 s")
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            cpu = (cpu_seconds(worker.pid) - cpu0) / n * 1e6
    finally:
        worker.terminate()
        worker.wait(30)
        server.stop()
    return {"rate": n / elapsed, "answered": answered, "cpu": cpu, "size": size}


async def _set_addon(db: Database, org_id: int, n: int) -> None:
    def go(conn: Any) -> None:
        conn.execute(text("UPDATE orgs SET mass_addon = :n WHERE id = :o"), {"n": n, "o": org_id})

    await db.run_write(go)


def bare_messages(n: int, size: int) -> list[bytes]:
    """N composed messages of about ``size`` bytes (our campaign's average)."""
    out = []
    for i in range(n):
        html = HTML.replace("{{ lead.last_name }}", f"山田{i}").replace(
            "{{ lead.first_name | default('お客様') }}", "太郎"
        )
        raw = compose(
            from_addr="rep@bench.example",
            from_name="Rep",
            to_addr=f"member{i}@example.net",
            to_name=f"山田{i} 太郎",
            subject=f"山田{i}様へ 新製品のご案内",
            html=html,
            text="本文 " * 100,
            message_id=make_message_id("bench.example"),
            headers={"X-Bench": str(i)},
        )
        out.append(raw)
    pad = size - sum(len(r) for r in out) // n
    if pad > 0:
        out = [_pad(r, pad) for r in out]
    return out


def _pad(raw: bytes, extra: int) -> bytes:
    """Add ``extra`` bytes to the message as a header, so it stays a valid message."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    fill = b"".join(b"X-Pad: " + b"x" * 70 + b"\r\n" for _ in range(extra // 79))
    return head + b"\r\n" + fill.rstrip(b"\r\n") + sep + body if fill else raw


def bare(port: int, raws: list[bytes], conns: int) -> float:
    async def run() -> float:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for raw in raws:
            queue.put_nowait(raw)

        async def one() -> None:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
            await smtp.connect()
            while not queue.empty():
                await smtp.sendmail(
                    "bounces@bench.example", ["rcpt@example.net"], queue.get_nowait()
                )
            await smtp.quit()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(conns)))
        return len(raws) / (time.perf_counter() - t0)

    return uvloop.run(run())  # the loop `mailgate serve` runs on


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=10_000)
    parser.add_argument("conns", nargs="?", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not available():
        sys.exit("smtp-sink not installed (apt-get install postfix)")
    engine = "postgresql" if os.environ.get("MAILGATE_BENCH_DATABASE_URL") else "sqlite (/tmp)"
    print(
        f"campaign: {args.n} members, ~5 KB HTML with merge fields, {args.conns} relay connections,"
        f" smtp-sink relay; {engine}; mass cap lifted in this process to {max(args.n, plans.MASS_CAP)}"
        f" (product: {plans.MASS_CAP}/day); {os.cpu_count()} cores;"
        f" {time.strftime('%Y-%m-%d %H:%M')} UTC; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    ratios = []
    size = 0
    for r in range(1, args.rounds + 1):
        port = free_port()
        sink = SmtpSink(port, dump=False).start()
        try:
            with (
                tempfile.TemporaryDirectory(dir="/tmp") as tmp_name,
                fresh_database(Path(tmp_name)) as url,
            ):
                tmp = Path(tmp_name)
                if r % 2 == 0 and size:
                    base = bare(port, bare_messages(args.n, size), args.conns)
                    mine = ours(url, tmp, port, args.n, args.conns)
                else:
                    mine = ours(url, tmp, port, args.n, args.conns)
                    size = mine["size"]
                    raws = bare_messages(args.n, size)
                    bare(port, raws[:200], args.conns)  # warm-up
                    base = bare(port, raws, args.conns)
        finally:
            sink.stop()
        ratios.append(mine["rate"] / base)
        print(
            f"round {r}: bare aiosmtplib {base:6.0f} msg/s | ours {mine['rate']:6.0f} msg/s"
            f" (send answered in {mine['answered']:.2f} s; worker CPU {mine['cpu']:.0f} µs/msg;"
            f" ~{mine['size']} bytes/msg) | ratio {ratios[-1]:.2f} | load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    print(
        f"ratio median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f});"
        f" load average {os.getloadavg()[0]:.1f} at the end"
    )


if __name__ == "__main__":
    main()
