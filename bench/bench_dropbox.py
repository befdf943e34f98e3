"""Dropbox end to end vs a bare aiosmtpd sink, both driven by Postfix's smtp-source.

2,000 x 5 KB messages to a lead, 10 sessions, a new connection per message.
For mailgate a message counts only once it is filed: the clock stops when the
last ``email.filed`` event exists, not at the last ``250``.  The sink counts at
``250``.  SQLite on a real disk (a temporary directory under /tmp), never
/dev/shm.  Prints both rates and the ratio for the two ways an operator runs it:

- ``split``: ``serve --only smtp`` and ``serve --only worker`` as two processes
  (receiving and filing on separate cores);
- ``one``: ``serve --only smtp,worker``, both in one process.

It also prints the resident memory of the serve processes at the end.
Usage: python bench/bench_dropbox.py [N] (``BENCH_MODES=split`` runs one mode;
``BENCH_ROUNDS`` rounds, 3 by default, each with its own sink run just before).
Both servers run on uvloop (``mailgate serve``'s default when installed);
``MAILGATE_EVENT_LOOP=asyncio`` runs both on the standard loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
MODES = {"split": ["smtp", "worker"], "one": ["smtp,worker"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def drive(port: int, n: int, sender: str, rcpt: str) -> None:
    """smtp-source: 10 sessions, 5 KB, a new connection per message (no ``-d``)."""
    subprocess.run(
        [SMTP_SOURCE, "-s", "10", "-m", str(n), "-l", "5120", "-f", sender, "-t", rcpt]
        + [f"127.0.0.1:{port}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def bench_sink(n: int) -> tuple[float, float]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bare_sink.py"), str(port)], stdout=subprocess.PIPE
    )
    try:
        wait_port(port)
        drive(port, 200, "a@x.test", "b@y.test")  # warm up
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        drive(port, n, "a@x.test", "b@y.test")
        rate = n / (time.perf_counter() - t0)
        return rate, (cpu_seconds(proc.pid) - cpu0) / n * 1e6
    finally:
        proc.terminate()
        proc.wait()


def filed(db_path: Path) -> int:
    with sqlite3.connect(db_path, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM events WHERE type = 'email.filed'").fetchone()[0]


def wait_filed(db_path: Path, count: int, timeout: float = 600) -> None:
    deadline = time.perf_counter() + timeout
    while filed(db_path) < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {filed(db_path)} of {count} filed after {timeout} s")
        time.sleep(0.01)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def add_lead(db_path: Path, user: dict) -> None:
    """smtp-source's To header is its recipient: a lead with that address makes every
    message go through matching and linking, as mail to a lead does."""
    from sqlalchemy import create_engine, insert

    from storage.schema import leads

    engine = create_engine(f"sqlite:///{db_path}")
    with engine.begin() as conn:
        address = user["dropbox_address"].lower()
        conn.execute(
            insert(leads).values(
                org_id=user["org_id"],
                last_name="Lead",
                email=address,
                email_norm=address,
                owner_id=user["id"],
            )
        )
    engine.dispose()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_mailgate(
    n: int, roles: list[str], tmp: Path
) -> tuple[float, float, list[float], list[float]]:
    port = free_port()
    db_path = tmp / "bench.db"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MAILGATE_DATA_DIR": str(tmp),
        "MAILGATE_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
        "MAILGATE_SMTP_LISTEN": f"127.0.0.1:{port}",
        "MAILGATE_MAIL_DOMAIN": "bench.test",
        "MAILGATE_SECRET_KEY": "bench",
    }
    cli = [sys.executable, "-c", "from gateway.cli.main import main; main()"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [*cli, "org", "create", "Bench", "--plan", "enterprise"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    user = json.loads(
        subprocess.run(
            [*cli, "user", "create", "--org", "Bench", "rep@bench.example", "--name", "Bench Rep"],
            env=env,
            check=True,
            capture_output=True,
        ).stdout
    )
    procs = [
        subprocess.Popen([*cli, "serve", "--only", only], env=env, stdout=subprocess.DEVNULL)
        for only in roles
    ]
    add_lead(db_path, user)
    try:
        wait_port(port)
        time.sleep(1)
        drive(port, 200, "rep@bench.example", user["dropbox_address"])  # warm up
        wait_filed(db_path, 200)
        warm = filed(db_path)
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        t0 = time.perf_counter()
        drive(port, n, "rep@bench.example", user["dropbox_address"])
        answered = time.perf_counter() - t0
        wait_filed(db_path, warm + n)
        elapsed = time.perf_counter() - t0
        rss = [rss_mb(p.pid) for p in procs]
        cpu = [(cpu_seconds(p.pid) - c) / n * 1e6 for p, c in zip(procs, cpu0, strict=True)]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    return n / elapsed, n / answered, rss, cpu


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    modes = os.environ.get("BENCH_MODES", "split,one").split(",")
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    if not os.path.exists(SMTP_SOURCE):
        sys.exit("smtp-source not found: apt-get install postfix")
    loop = "asyncio" if os.environ.get("MAILGATE_EVENT_LOOP") == "asyncio" else "uvloop"
    print(
        f"messages: {n} x 5 KB, 10 sessions, new connection each, {os.cpu_count()} cores, "
        f"{loop} loop (both), SQLite on /tmp, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    # The sink runs again before each of our runs: on a shared machine the load changes
    # from minute to minute, and a ratio is only fair between neighbouring runs.
    ratios: dict[str, list[float]] = {mode: [] for mode in modes}
    for r in range(1, rounds + 1):
        for mode in modes:
            sink, sink_cpu = bench_sink(n)
            # /tmp, not /dev/shm: the spool's fsync must hit a real disk.
            with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
                rate, answered, rss, cpu = bench_mailgate(n, MODES[mode], Path(tmp))
            ratios[mode].append(rate / sink)
            how = " + ".join(f"serve --only {role}" for role in MODES[mode])
            print(
                f"round {r}: bare aiosmtpd sink (at 250) {sink:6.0f} msg/s [CPU {sink_cpu:.0f} µs/msg]"
                f"\n  mailgate {mode:5} (to last filed): {rate:6.0f} msg/s  ratio {rate / sink:5.2f}"
                f"  (to last 250: {answered:.0f} msg/s)\n    [{how}; "
                f"CPU {' + '.join(f'{c:.0f}' for c in cpu)} µs/msg; "
                f"RSS {' + '.join(f'{m:.0f}' for m in rss)} MB]",
                flush=True,
            )
    for mode, found in ratios.items():
        print(
            f"{mode}: ratio median {statistics.median(found):.2f}, "
            f"range {min(found):.2f}-{max(found):.2f} over {len(found)} rounds; "
            f"load average {os.getloadavg()[0]:.1f} at the end"
        )


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
