"""What a second process of each role adds, on PostgreSQL (issue #14).

Three paths, each with 1 and then 2 processes of the roles doing the work, all
``mailgate serve --only …`` subprocesses on one fresh PostgreSQL database per
run, and each against a bare baseline run with the same number of processes
just before it (the machine is shared; a ratio is only fair between
neighbouring runs):

- **filed**: Postfix's smtp-source (10 sessions in all, 5 KB, a new connection
  per message) → k × ``--only smtp`` (250 once spooled) + k × ``--only worker``
  (ingest), timed until the last ``email.filed``.  Baseline: k bare aiosmtpd
  sinks (``bench/bare_sink.py``) driven the same way, counted at ``250``.
- **hits**: wrk (50 connections in all) on the open pixel → k × ``--only http``
  (raw hits appended) + k × ``--only worker`` (verdicts), counted as
  ``tracking_hits`` rows once the inbox is empty.  Baseline: k bare Starlette
  GIF endpoints (``bench_tracking.py --serve-bare``).
- **sent**: N composed ~5 KB sends committed to the queue at once → k ×
  ``--only worker`` (relay, 4 connections each) → Postfix's smtp-sink, timed
  until every send is ``sent`` (outcome committed).  Baseline: a bare aiosmtplib
  loop over 4·k reused connections into the same smtp-sink.  (Queueing through
  the API is the ``http`` role's work, measured by ``bench_send.py``; here the
  sends are inserted as the API stores them.)

Usage: MAILGATE_BENCH_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \
       python bench/bench_scale.py [filed,hits,sent] [--n N] [--seconds S]
It creates and drops its own databases (``mgbench_…``).  Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sqlalchemy.engine import make_url  # noqa: E402

from tests.support.databases import _pg_admin  # noqa: E402
from tests.support.smtp_sink import free_port  # noqa: E402

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
CLI = [sys.executable, "-c", "from gateway.cli.main import main; main()"]
SECRET = "bench-secret-key"
DOMAIN = "bench.example"


# -- plumbing ----------------------------------------------------------------------------


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


@contextlib.contextmanager
def fresh_pg(base: str) -> Iterator[str]:
    """A new, migrated PostgreSQL database for one run; dropped afterwards."""
    from storage.db import Database
    from storage.migrate import upgrade

    name = "mgbench_" + secrets.token_hex(4)
    _pg_admin(base, f'CREATE DATABASE "{name}"')
    url = make_url(base).set(database=name).render_as_string(hide_password=False)

    async def migrate() -> None:
        db = Database(url)
        await upgrade(db)
        await db.dispose()

    try:
        asyncio.run(migrate())
        yield url
    finally:
        _pg_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Counter:
    """One open asyncpg connection for the polling loops: a fresh engine per poll would
    cost the measured processes CPU on a 2-core machine."""

    def __init__(self, url: str) -> None:
        import asyncpg

        u = make_url(url)
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(
            asyncpg.connect(
                host=u.host or "127.0.0.1",
                port=u.port or 5432,
                user=u.username or "postgres",
                password=u.password,
                database=u.database,
            )
        )

    def __call__(self, sql: str) -> int:
        return self.loop.run_until_complete(self.conn.fetchval(sql))

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def serve(url: str, only: str, tmp: Path, **settings: object) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MAILGATE_DATABASE_URL": url,
        "MAILGATE_DATA_DIR": str(tmp),
        "MAILGATE_SECRET_KEY": SECRET,
        "MAILGATE_MAIL_DOMAIN": DOMAIN,
        "MAILGATE_SMTP_LISTEN": "127.0.0.1:0",
        "MAILGATE_HTTP_LISTEN": "127.0.0.1:0",
    }
    env.update({f"MAILGATE_{k.upper()}": str(v) for k, v in settings.items()})
    return subprocess.Popen(
        [*CLI, "serve", "--only", only], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def wait_serving(proc: subprocess.Popen, timeout: float = 90) -> dict[str, int]:
    """Until ``serve`` prints its roles line; the ports it listens on (it binds port 0, so
    no other process on the machine can take a port between our pick and its bind)."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    ports: dict[str, int] = {}
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"serve exited with {proc.wait()}")
        if m := re.search(r"SMTP dropbox \+ bounces on [\d.]+:(\d+)", line):
            ports["smtp"] = int(m.group(1))
        if m := re.search(r"HTTP API on http://[\d.]+:(\d+)", line):
            ports["http"] = int(m.group(1))
        if line.startswith("roles:"):
            return ports
    raise RuntimeError("serve did not come up")


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_count(count: Counter, sql: str, target: int, timeout: float = 600) -> float:
    """Seconds until ``sql`` counts ``target`` (polled every 50 ms)."""
    t0 = time.perf_counter()
    while count(sql) < target:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{sql}: only {count(sql)} of {target} after {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - t0


# -- filed ---------------------------------------------------------------------------------


def smtp_source(ports: list[int], n: int, sender: str, rcpt: str) -> None:
    """n messages split over the ports, 10 sessions in all, a new connection per message."""
    sessions = max(1, 10 // len(ports))
    runs = [
        subprocess.Popen(
            [SMTP_SOURCE, "-s", str(sessions), "-m", str(n // len(ports)), "-l", "5120"]
            + ["-f", sender, "-t", rcpt, f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
        )
        for port in ports
    ]
    for r in runs:
        if r.wait() != 0:
            raise RuntimeError("smtp-source failed")


def bare_smtp(k: int, n: int) -> float:
    ports = [free_port() for _ in range(k)]
    sinks = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "bare_sink.py"), str(p)], stdout=subprocess.PIPE
        )
        for p in ports
    ]
    try:
        for p in ports:
            wait_port(p)
        smtp_source(ports, 200, "a@x.test", "b@y.test")
        t0 = time.perf_counter()
        smtp_source(ports, n, "a@x.test", "b@y.test")
        return n / (time.perf_counter() - t0)
    finally:
        stop(sinks)


async def _dropbox_user(url: str) -> dict:
    from sqlalchemy import insert

    from gateway.org import admin
    from storage.db import Database
    from storage.schema import leads

    db = Database(url)
    org = await admin.create_org(db, "bench", plan="enterprise", timezone="Asia/Tokyo", domains=[])
    user = await admin.create_user(
        db, str(org["id"]), "rep@bench.example", name="Bench Rep", mail_domain=DOMAIN
    )
    # smtp-source's To header is its recipient: a lead with that address makes every
    # message go through matching and linking, as mail to a lead does.
    address = user["dropbox_address"].lower()
    async with db.begin() as conn:
        await conn.execute(
            insert(leads).values(
                org_id=org["id"],
                last_name="Lead",
                email=address,
                email_norm=address,
                owner_id=user["id"],
            )
        )
    await db.dispose()
    return user


def ours_filed(base: str, k: int, n: int, tmp: Path) -> tuple[float, list[float]]:
    filed = "SELECT count(*) FROM events WHERE type = 'email.filed'"
    with fresh_pg(base) as url:
        user = asyncio.run(_dropbox_user(url))
        procs = [serve(url, "smtp", tmp) for _ in range(k)]
        procs += [serve(url, "worker", tmp) for _ in range(k)]
        count = Counter(url)
        try:
            ports = [wait_serving(p).get("smtp") for p in procs][:k]
            smtp_source(ports, 200, "rep@bench.example", user["dropbox_address"])
            wait_count(count, filed, 200)
            cpu0 = [cpu_seconds(p.pid) for p in procs]
            t0 = time.perf_counter()
            smtp_source(ports, n, "rep@bench.example", user["dropbox_address"])
            wait_count(count, filed, 200 + n)
            elapsed = time.perf_counter() - t0
            cpu = [(cpu_seconds(p.pid) - c) / n * 1e6 for p, c in zip(procs, cpu0, strict=True)]
        finally:
            count.close()
            stop(procs)
    return n / elapsed, cpu


# -- hits ----------------------------------------------------------------------------------


def wrk(ports: list[int], script: Path, seconds: int) -> float:
    """wrk on every port at once, 50 connections in all; requests per second summed."""
    conns = max(1, 50 // len(ports))
    runs = [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(script)]
            + [f"http://127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for port in ports
    ]
    total = 0.0
    for r in runs:
        out, _ = r.communicate()
        total += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return total


def pixel_script(url: str, tmp: Path) -> Path:
    from bench_tracking import LUA, UA, seed_sends

    tokens, _ = asyncio.run(seed_sends(url, 20_000))
    (tmp / "tokens.txt").write_text("\n".join(tokens) + "\n")
    script = tmp / "opens.lua"
    script.write_text(LUA % (tmp / "tokens.txt", UA))
    return script


def bare_hits(k: int, seconds: int, script: Path) -> float:
    ports = [free_port() for _ in range(k)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "bench_tracking.py"), "--serve-bare", str(p)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        for p in ports:
            wait_port(p)
        wrk(ports, script, 2)
        return wrk(ports, script, seconds)
    finally:
        stop(procs)


def ours_hits(
    base: str, k: int, seconds: int, tmp: Path
) -> tuple[float, float, float, Path, list[float]]:
    """(requests/s, recorded/s over the load, recorded/s including the judge's catch-up,
    the token script, CPU µs per recorded hit of each process)."""
    hits = "SELECT count(*) FROM tracking_hits"
    inbox = "SELECT count(*) FROM tracking_inbox"
    with fresh_pg(base) as url:
        script = pixel_script(url, tmp)
        procs = [serve(url, "http", tmp) for _ in range(k)]
        procs += [serve(url, "worker", tmp) for _ in range(k)]
        count = Counter(url)
        try:
            ports = [wait_serving(p).get("http") for p in procs][:k]
            wrk(ports, script, 2)  # warm-up
            time.sleep(3)
            while count(inbox):
                time.sleep(0.2)
            before = count(hits)
            cpu0 = [cpu_seconds(p.pid) for p in procs]
            rate = wrk(ports, script, seconds)
            t_end = time.perf_counter()
            last = -1
            while True:  # until the inbox is empty and the count still
                time.sleep(0.5)
                now = count(hits)
                if now == last and not count(inbox):
                    break
                last = now
            catch_up = time.perf_counter() - t_end
            recorded = last - before
            cpu = [
                (cpu_seconds(p.pid) - c) / recorded * 1e6 for p, c in zip(procs, cpu0, strict=True)
            ]
        finally:
            count.close()
            stop(procs)
    return rate, recorded / seconds, recorded / (seconds + catch_up), script, cpu


# -- sent ----------------------------------------------------------------------------------


def composed(n: int) -> list[tuple[str, bytes]]:
    from bench_send import message

    return [message(i) for i in range(n)]


def bare_sent(k: int, messages: list[tuple[str, bytes]]) -> float:
    from bench_send import bare

    from tests.support.smtp_sink import SmtpSink

    port = free_port()
    sink = SmtpSink(port, dump=False).start()
    try:
        raws = [raw for _, raw in messages]
        asyncio.run(bare(port, raws[:200], 4 * k))
        return asyncio.run(bare(port, raws, 4 * k))
    finally:
        sink.stop()


async def _queue(url: str, messages: list[tuple[str, bytes]]) -> float:
    """Queue the sends in one transaction; when it committed (``perf_counter``)."""
    from gateway.org import admin
    from gateway.sending.tokens import new_verp_token
    from storage import sends as send_store
    from storage.db import Database

    db = Database(url)
    org = await admin.create_org(db, "bench", plan="enterprise", timezone="Asia/Tokyo")
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
    # One transaction: the workers see all of it at once, as after a campaign's send.
    await db.run_write(send_store.insert_sends, rows)
    committed = time.perf_counter()
    await db.dispose()
    return committed


def ours_sent(
    base: str, k: int, messages: list[tuple[str, bytes]], tmp: Path
) -> tuple[float, list[float]]:
    from tests.support.smtp_sink import SmtpSink

    sent = "SELECT count(*) FROM sends WHERE state = 'sent'"
    port = free_port()
    sink = SmtpSink(port, dump=False).start()
    try:
        with fresh_pg(base) as url:
            relay = {
                "relay_url": f"smtp://127.0.0.1:{port}",
                "relay_pool_size": 4,
                "relay_poll_interval": 0.05,
            }
            procs = [serve(url, "worker", tmp, **relay) for _ in range(k)]
            try:
                for p in procs:
                    wait_serving(p)
                count = Counter(url)
                try:
                    cpu0 = [cpu_seconds(p.pid) for p in procs]
                    t0 = asyncio.run(_queue(url, messages))
                    wait_count(count, sent, len(messages))
                    rate = len(messages) / (time.perf_counter() - t0)
                    n = len(messages)
                    cpu = [
                        (cpu_seconds(p.pid) - c) / n * 1e6 for p, c in zip(procs, cpu0, strict=True)
                    ]
                    return rate, cpu
                finally:
                    count.close()
            finally:
                stop(procs)
    finally:
        sink.stop()


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="?", default="filed,hits,sent")
    parser.add_argument("--n", type=int, default=2000, help="messages (filed, sent)")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration (hits)")
    args = parser.parse_args()
    base = os.environ.get("MAILGATE_BENCH_DATABASE_URL", "")
    if not base.startswith("postgresql"):
        sys.exit("set MAILGATE_BENCH_DATABASE_URL=postgresql+asyncpg://…/postgres")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, PostgreSQL, {load()}",
        flush=True,
    )
    wanted = args.scenarios.split(",")
    with tempfile.TemporaryDirectory(dir="/tmp") as t:  # a real disk, not /dev/shm
        tmp = Path(t)
        results: dict[str, dict[int, float]] = {}
        if "filed" in wanted:
            results["filed"] = {}
            for k in (1, 2):
                bare = bare_smtp(k, args.n)
                rate, cpu = ours_filed(base, k, args.n, tmp)
                results["filed"][k] = rate
                print(
                    f"filed, {k} smtp + {k} worker: {rate:6.0f} msg/s | bare aiosmtpd x{k} "
                    f"{bare:6.0f} msg/s | ratio {rate / bare:.2f} | CPU µs/msg "
                    f"{' + '.join(f'{c:.0f}' for c in cpu)} | {load()}",
                    flush=True,
                )
        if "hits" in wanted:
            results["hits"] = {}
            for k in (1, 2):
                rate, recorded, sustained, script, cpu = ours_hits(base, k, args.seconds, tmp)
                bare = bare_hits(k, args.seconds, script)
                # Recorded rows over the load plus the judge's catch-up: a judge that falls
                # behind the endpoints is charged for it.
                results["hits"][k] = sustained
                print(
                    f"hits, {k} http + {k} worker: {rate:6.0f} req/s answered; recorded "
                    f"{sustained:6.0f}/s incl. catch-up ({recorded:6.0f}/s over the load alone) | "
                    f"bare GIF x{k} {bare:6.0f} req/s | ratio {sustained / bare:.2f} "
                    f"({recorded / bare:.2f}) | CPU µs/hit {' + '.join(f'{c:.0f}' for c in cpu)} "
                    f"| {load()}",
                    flush=True,
                )
        if "sent" in wanted:
            results["sent"] = {}
            messages = composed(args.n)
            for k in (1, 2):
                bare = bare_sent(k, messages)
                rate, cpu = ours_sent(base, k, messages, tmp)
                results["sent"][k] = rate
                print(
                    f"sent, {k} worker (4 conns each): {rate:6.0f} msg/s | bare aiosmtplib "
                    f"{4 * k} conns {bare:6.0f} msg/s | ratio {rate / bare:.2f} | CPU µs/msg "
                    f"{' + '.join(f'{c:.0f}' for c in cpu)} | {load()}",
                    flush=True,
                )
        for name, by_k in results.items():
            print(f"{name}: 2 processes / 1 process = {by_k[2] / by_k[1]:.2f}x")


if __name__ == "__main__":
    main()
