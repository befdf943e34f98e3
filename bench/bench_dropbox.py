"""Dropbox filing throughput vs a bare aiosmtpd sink, both driven by Postfix's smtp-source.

5 KB messages, 10 parallel sessions.  For mailgate a message counts only
once it is filed (our 250 is sent after the filing commit); the sink counts
at 250.  Prints both rates and the ratio.  Usage: python bench/bench_dropbox.py [N]
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKERS = int(os.environ.get("BENCH_SMTP_WORKERS", "1"))
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


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


def drive(port: int, n: int, sender: str, rcpt: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [
            SMTP_SOURCE,
            "-d",
            "-s",
            "10",
            "-m",
            str(n),
            "-l",
            "5120",
            "-f",
            sender,
            "-t",
            rcpt,
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def bench_sink(n: int) -> float:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bare_sink.py"), str(port)], stdout=subprocess.PIPE
    )
    try:
        wait_port(port)
        drive(port, 200, "a@x.test", "b@y.test")  # warm up
        return n / drive(port, n, "a@x.test", "b@y.test")
    finally:
        proc.terminate()
        proc.wait()


def bench_mailgate(n: int, tmp: Path) -> tuple[float, int]:
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
        subprocess.Popen([*cli, "serve", "--only", "smtp"], env=env, stdout=subprocess.DEVNULL)
        for _ in range(WORKERS)
    ]
    try:
        wait_port(port)
        time.sleep(1)
        drive(port, 200, "rep@bench.example", user["dropbox_address"])  # warm up
        elapsed = drive(port, n, "rep@bench.example", user["dropbox_address"])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    with sqlite3.connect(db_path) as conn:
        filed = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    return n / elapsed, filed - 200


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    if not os.path.exists(SMTP_SOURCE):
        sys.exit("smtp-source not found: apt-get install postfix")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        sink = bench_sink(n)
        ours, filed = bench_mailgate(n, Path(tmp))
    loop = "asyncio" if os.environ.get("MAILGATE_EVENT_LOOP") == "asyncio" else "uvloop"
    print(f"messages: {n} x 5 KB, 10 sessions, {os.cpu_count()} cores, {loop} loop (both)")
    print(f"bare aiosmtpd sink: {sink:8.0f} msg/s")
    print(f"mailgate filed:     {ours:8.0f} msg/s  (filed {filed}/{n})")
    print(f"ratio:              {ours / sink:8.2f}")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
