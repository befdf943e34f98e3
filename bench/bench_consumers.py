"""Events/s through the consumer runtime vs a bare loop over the same events (#11).

Set-up, per round, on a fresh database: an org, two lists, a leads sync into
the first, and one webhook endpoint (``record.created``) made through the
HTTP API of an in-process ``http`` role; the endpoint points at a fast bare
HTTP receiver in its own process (asyncio + uvloop, answers ``204`` with
keep-alive, so it is not the bottleneck).  ``serve --only sync`` processes
(1 or 2) start and settle (the sync's first full run, an empty one), then are
frozen (SIGSTOP) while N leads are imported by CSV
(``gateway.records.csv_import.import_file``: N ``record.created`` events
waiting).

- **ours**: SIGCONT the processes; time until every consumer's offset is past
  the import's last event, the list holds N members, and every one of the N
  webhook deliveries is ``delivered``.
- **bare**: the same events, read in batches of 500 with plain SQL on the same
  database; per batch the leads are read, the equivalent member rows go into
  the second list (one executemany, one commit), then each event's JSON is
  POSTed to the same receiver, in order, awaiting each answer, with one
  keep-alive ``httpx.AsyncClient``.

Rounds alternate which side goes first.  Prints both rates, the ratio per
round, the median, the CPU each sync process spent per event, and the load.

Usage: python bench/bench_consumers.py [N] [--processes 1|2] [--rounds R]
(``MAILGATE_BENCH_DATABASE_URL=postgresql+asyncpg://…/postgres`` for PostgreSQL:
a new database is made per round and dropped after; else SQLite in a temporary
directory under /tmp, a real disk.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import bindparam, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from gateway.records.csv_import import import_file  # noqa: E402
from storage.db import Database  # noqa: E402
from sync import CONSUMERS  # noqa: E402
from tests.support.server import MailgateServer  # noqa: E402
from tests.support.smtp_sink import free_port  # noqa: E402

BATCH = 500


# -- the receiver (its own process) ---------------------------------------------------


class _Answer(asyncio.Protocol):
    """Minimal HTTP/1.1: read a request's head and body, answer 204, keep the connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = 0
            for line in self.buf[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            self.buf = self.buf[end:]
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


def receiver_main(port: int) -> None:
    import uvloop

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


# -- databases ------------------------------------------------------------------------


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        database=u.database or "postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database(tmp: Path) -> Iterator[str]:
    base = os.environ.get("MAILGATE_BENCH_DATABASE_URL")
    if not base:
        yield f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        return
    name = "mgbench_" + secrets.token_hex(4)
    asyncio.run(_pg_admin(base, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- set-up -----------------------------------------------------------------------------


def set_up(url: str, tmp: Path, receiver_url: str) -> dict[str, int]:
    """Org, lists, sync and endpoint through the HTTP API of an in-process ``http`` role."""
    server = MailgateServer(url, tmp / "http").start({"http"})
    try:
        org = server.org("Bench", plan="enterprise")
        admin = server.user(org, "admin@bench.example", admin=True)
        with server.api(admin) as api:
            ours = api.post("/api/v1/lists", json={"name": "ours"}).json()["id"]
            bare = api.post("/api/v1/lists", json={"name": "bare"}).json()["id"]
            r = api.post(
                "/api/v1/syncs",
                json={
                    "module": "leads",
                    "list_id": ours,
                    "subscription": "marketing",
                    "do_not_mail": "exclude",
                },
            )
            r.raise_for_status()
            r = api.post(
                "/api/v1/webhooks", json={"url": receiver_url, "events": ["record.created"]}
            )
            r.raise_for_status()
            return {"org": org["id"], "ours": ours, "bare": bare, "webhook": r.json()["id"]}
    finally:
        server.stop()


def leads_csv(n: int) -> bytes:
    rows = ["email,first_name,last_name,company"]
    rows += [f"lead{i}@bench.example,名{i},姓{i},株式会社{i % 97}" for i in range(n)]
    return ("\n".join(rows) + "\n").encode()


def progress(conn: Any, ids: dict[str, int]) -> dict[str, Any]:
    offsets = dict(conn.execute(text("SELECT consumer, position FROM consumer_offsets")).all())
    return {
        "offsets": [offsets.get(c.name, 0) for c in CONSUMERS],
        "members": conn.execute(
            text("SELECT count(*) FROM list_members WHERE list_id = :l"), {"l": ids["ours"]}
        ).scalar_one(),
        "delivered": conn.execute(
            text(
                "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = :w AND state = 'delivered'"
            ),
            {"w": ids["webhook"]},
        ).scalar_one(),
        "full_pending": conn.execute(
            text("SELECT count(*) FROM syncs WHERE full_requested_at IS NOT NULL")
        ).scalar_one(),
        "last": conn.execute(text("SELECT coalesce(max(id), 0) FROM events")).scalar_one(),
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_sync(url: str, tmp: Path, count: int) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MAILGATE_DATABASE_URL": url,
        "MAILGATE_SECRET_KEY": "bench",
        "MAILGATE_DATA_DIR": str(tmp / "data"),
        "MAILGATE_ALLOW_PRIVATE_TARGETS": "1",
    }
    cli = [sys.executable, "-c", "from gateway.cli.main import main; main()"]
    return [
        subprocess.Popen([*cli, "serve", "--only", "sync"], env=env, stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]


async def wait_for(db: Database, ready: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.perf_counter() + timeout
    while True:
        now = await db.run_read(progress, IDS)
        if ready(now):
            return now
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what}: not done after {timeout:.0f} s: {now}")
        await asyncio.sleep(0.02)


IDS: dict[str, int] = {}


# -- the two sides ------------------------------------------------------------------------


async def ours(
    db: Database, procs: list[subprocess.Popen], n: int, first: int, last: int
) -> dict[str, Any]:
    cpu0 = [cpu_seconds(p.pid) for p in procs]
    t0 = time.perf_counter()
    for p in procs:
        p.send_signal(signal.SIGCONT)

    def done(now: dict[str, Any]) -> bool:
        return min(now["offsets"]) >= last and now["members"] >= n and now["delivered"] >= n

    # The sync alone (offsets past the import and every member written) is timed too.
    synced = await wait_for(
        db, lambda now: now["members"] >= n and min(now["offsets"]) >= last, 900, "sync"
    )
    t_sync = time.perf_counter() - t0
    final = await wait_for(db, done, 900, "ours")
    elapsed = time.perf_counter() - t0
    assert synced and final["members"] == n, final
    cpu = [(cpu_seconds(p.pid) - c) / n * 1e6 for p, c in zip(procs, cpu0, strict=True)]
    return {"rate": n / elapsed, "sync_rate": n / t_sync, "cpu": cpu}


def _bare_batch(conn: Any, after: int, last: int, list_id: int) -> list[tuple[int, bytes]]:
    rows = conn.execute(
        text(
            "SELECT id, org_id, type, at, data FROM events"
            " WHERE id > :a AND id <= :l AND type = 'record.created' ORDER BY id LIMIT :n"
        ),
        {"a": after, "l": last, "n": BATCH},
    ).all()
    if not rows:
        return []
    datas = [r.data if isinstance(r.data, dict) else json.loads(r.data) for r in rows]
    ids = [d["id"] for d in datas]
    leads = conn.execute(
        text(
            "SELECT id, org_id, email, email_norm, first_name, last_name, company FROM leads"
            " WHERE id IN :ids"
        ).bindparams(bindparam("ids", expanding=True)),
        {"ids": ids},
    ).all()
    now = rows[-1].at
    conn.execute(
        text(
            "INSERT INTO list_members (org_id, list_id, email, email_norm, first_name, last_name,"
            " company, fields, subscription, consent, status, module, record_id, source,"
            " created_at, updated_at) VALUES (:org_id, :list_id, :email, :email_norm, :first_name,"
            " :last_name, :company, '{}', 'marketing', 'none', 'subscribed', 'leads', :record_id,"
            " 'sync', :now, :now)"
        ),
        [
            {
                "org_id": r.org_id,
                "list_id": list_id,
                "email": r.email,
                "email_norm": r.email_norm,
                "first_name": r.first_name or "",
                "last_name": r.last_name or "",
                "company": r.company or "",
                "record_id": r.id,
                "now": now,
            }
            for r in leads
        ],
    )
    return [
        (
            r.id,
            json.dumps(
                {
                    "id": r.id,
                    "type": r.type,
                    "at": r.at if isinstance(r.at, str) else r.at.isoformat(),
                    "org_id": r.org_id,
                    "data": d,
                },
                ensure_ascii=False,
                separators=(",", ":"),
            ).encode(),
        )
        for r, d in zip(rows, datas, strict=True)
    ]


def _members_of(conn: Any, list_id: int) -> int:
    q = text("SELECT count(*) FROM list_members WHERE list_id = :l")
    return conn.execute(q, {"l": list_id}).scalar_one()


async def bare(db: Database, receiver_url: str, n: int, first: int, last: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    posted = 0
    after = first - 1
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            batch = await db.run_write(_bare_batch, after, last, IDS["bare"])
            if not batch:
                break
            for event_id, body in batch:
                r = await client.post(
                    receiver_url,
                    content=body,
                    headers={"content-type": "application/json", "webhook-id": f"msg_{event_id}"},
                )
                if r.status_code != 204:
                    raise RuntimeError(f"receiver answered {r.status_code}")
                posted += 1
            after = batch[-1][0]
    elapsed = time.perf_counter() - t0
    inserted = await db.run_read(_members_of, IDS["bare"])
    if posted != n or inserted != n:
        raise RuntimeError(f"bare posted {posted} and inserted {inserted} of {n}")
    return {"rate": n / elapsed}


# -- a round ---------------------------------------------------------------------------


def one_round(n: int, processes: int, bare_first: bool) -> dict[str, Any]:
    port = free_port()
    receiver = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)])
    receiver_url = f"http://127.0.0.1:{port}/hook"
    procs: list[subprocess.Popen] = []
    try:
        with (
            tempfile.TemporaryDirectory(dir="/tmp") as tmp_name,
            fresh_database(Path(tmp_name)) as url,
        ):
            tmp = Path(tmp_name)
            IDS.clear()
            IDS.update(set_up(url, tmp, receiver_url))
            procs = start_sync(url, tmp, processes)

            async def go() -> dict[str, Any]:
                db = Database(url)
                try:
                    before = await wait_for(
                        db,
                        lambda now: now["full_pending"] == 0 and min(now["offsets"]) >= now["last"],
                        60,
                        "settling",
                    )
                    await asyncio.sleep(0.3)
                    for p in procs:
                        p.send_signal(signal.SIGSTOP)
                    report = await import_file(db, "leads", str(IDS["org"]), leads_csv(n))
                    assert not report["errors"], report
                    last = (await db.run_read(progress, IDS))["last"]
                    first = before["last"] + 1
                    if bare_first:
                        b = await bare(db, receiver_url, n, first, last)
                        o = await ours(db, procs, n, first, last)
                    else:
                        o = await ours(db, procs, n, first, last)
                        b = await bare(db, receiver_url, n, first, last)
                    return {"ours": o, "bare": b}
                finally:
                    await db.dispose()

            with open(os.devnull, "w") as quiet, _stderr_to(quiet):
                found = asyncio.run(go())
            for p in procs:
                p.send_signal(signal.SIGCONT)
                p.terminate()
            for p in procs:
                p.wait(30)
            return found
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
        receiver.terminate()
        receiver.wait()


@contextmanager
def _stderr_to(stream: Any) -> Iterator[None]:
    """The CSV import draws a progress bar on stderr; keep the bench's output readable."""
    old = sys.stderr
    sys.stderr = stream
    try:
        yield
    finally:
        sys.stderr = old


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=10_000)
    parser.add_argument("--processes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver_main(args.receiver)
        return
    engine = "postgresql" if os.environ.get("MAILGATE_BENCH_DATABASE_URL") else "sqlite (/tmp)"
    print(
        f"events: {args.n} record.created (CSV import), one leads sync + one webhook endpoint;"
        f" {args.processes} x serve --only sync; {engine}; {os.cpu_count()} cores;"
        f" {time.strftime('%Y-%m-%d %H:%M')} UTC; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    ratios, sync_ratios = [], []
    for r in range(1, args.rounds + 1):
        bare_first = r % 2 == 0
        found = one_round(args.n, args.processes, bare_first)
        o, b = found["ours"], found["bare"]
        ratios.append(o["rate"] / b["rate"])
        sync_ratios.append(o["sync_rate"] / b["rate"])
        print(
            f"round {r} ({'bare' if bare_first else 'ours'} first): bare loop {b['rate']:7.0f} ev/s"
            f" | ours {o['rate']:7.0f} ev/s (synced alone: {o['sync_rate']:.0f} ev/s)"
            f" | ratio {ratios[-1]:.3f}"
            f" | CPU per event {' + '.join(f'{c:.0f}' for c in o['cpu'])} µs"
            f" | load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    print(
        f"ratio median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f});"
        f" sync-only ÷ bare median {statistics.median(sync_ratios):.3f};"
        f" load average {os.getloadavg()[0]:.1f} at the end"
    )


if __name__ == "__main__":
    main()
