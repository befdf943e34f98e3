"""IMAP backfill from ``imap add`` to the last ``email.filed`` vs a bare aioimaplib batched FETCH loop.

    .venv/bin/python bench/bench_imap_filing.py [--messages 5000] [--size 5120] [--rounds 3]

Ours: ``MailboxService.add`` (the clock starts here), then ``backfill`` — EXAMINE,
UID SEARCH, batched FETCH, each batch stored in the durable spool with its
checkpoint — while the ingest runner files what was stored (parse, authorise,
dedupe, match the lead, insert message + link + location, events).  The clock
stops when the last ``email.filed`` event exists.  ``--mode split`` (default)
files in a second process, ``mailgate serve --only worker``, as an operator
running the imap and worker roles apart would; ``--mode one`` runs the runner
in the same process, as ``mailgate imap backfill`` does.  A fresh SQLite
database on /tmp (a real disk) each round.  The baseline only counts the
literals aioimaplib hands back.  Needs Dovecot (Debian ``dovecot-imapd``).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_imap import bare_aioimaplib  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.ingest.runner import IngestRunner  # noqa: E402
from gateway.ingest.spool import Spool  # noqa: E402
from gateway.org import admin  # noqa: E402
from gateway.receive.mailboxes import MailboxService, mailbox_values  # noqa: E402
from gateway.serve import event_loop_factory  # noqa: E402
from storage import crm  # noqa: E402
from storage import mailboxes as store  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from tests.support.dovecot import Dovecot  # noqa: E402

LEAD = "lead@customer.example.com"


def make_message(i: int, size: int) -> bytes:
    head = (
        f"From: 鈴木 一郎 <{LEAD}>\nTo: rep@acme.example.jp\nMessage-ID: <f{i}@example.com>\n"
        f"Subject: =?UTF-8?B?44GU5o+Q5qGI?= {i}\nDate: Mon, 23 Nov 2026 12:00:00 +0900\n"
        "Content-Type: text/plain; charset=utf-8\n\n"
    ).encode()
    line = "お世話になっております。ご提案ありがとうございます。\n".encode()
    return head + line * max(1, (size - len(head)) // len(line))


async def ours(
    server: Dovecot, workdir: Path, round_no: int, expected: int, mode: str
) -> tuple[int, float, list[float]]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{workdir}/r{round_no}.db",
        data_dir=workdir,
        secret_key="bench",
        mail_domain="mailgate.bench",
        allow_private_targets=True,  # the benchmark's Dovecot listens on loopback
    )
    db = Database(settings.database_url)
    await upgrade(db)
    org = await admin.create_org(db, f"Bench {round_no}", plan="professional", domains=[])
    user = await admin.create_user(
        db, str(org["id"]), "rep@acme.example.jp", name="山田 太郎", mail_domain="x"
    )
    async with db.begin() as conn:
        await crm.create(
            conn, "leads", org["id"], {"last_name": "鈴木", "email": LEAD, "email_norm": LEAD}
        )
    spool = Spool(db)
    await spool.start()
    runner = worker = None
    if mode == "one":
        runner = IngestRunner(db, mail_domain=settings.mail_domain)
        await runner.start()
    else:
        worker = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
            [sys.executable, "-c", "from gateway.cli.main import main; main()"]
            + ["serve", "--only", "worker"],
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "MAILGATE_DATA_DIR": str(workdir),
                "MAILGATE_DATABASE_URL": settings.database_url,
                "MAILGATE_MAIL_DOMAIN": settings.mail_domain,
                "MAILGATE_SECRET_KEY": "bench",
            },
            stdout=subprocess.PIPE,
        )
        # Up (it prints its roles once its runners run) and idle before the clock starts:
        # a fixed 2 s sleep was too short on a loaded machine, and the figure then
        # included the worker's start-up.
        ready = await asyncio.to_thread(worker.stdout.readline)  # type: ignore[union-attr]
        if not ready.startswith(b"roles:"):
            raise RuntimeError(f"serve --only worker did not start: {ready!r}")
        await asyncio.sleep(0.5)
    service = MailboxService(db, spool, settings, ingest=runner)
    values = mailbox_values(
        {
            "host": server.host,
            "port": server.port,
            "login": "alice",
            "password": "secret",
            "security": "none",
        }
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    worker_cpu = cpu_seconds(worker.pid) if worker is not None else 0.0
    created = await service.add(org["id"], user["id"], values)
    async with db.connect() as conn:
        row = await store.get_mailbox(conn, created["id"])
    await service.backfill(row, 0)
    filed = 0
    while filed < expected:
        async with db.connect() as conn:
            filed = (
                await conn.exec_driver_sql("SELECT count(*) FROM events WHERE type = 'email.filed'")
            ).scalar()
        if filed < expected:
            await asyncio.sleep(0.01)
        if time.perf_counter() - started > 600:
            break
    elapsed = time.perf_counter() - started
    cpu = [time.process_time() - cpu_started]
    if worker is not None:
        cpu.append(cpu_seconds(worker.pid) - worker_cpu)
    if runner is not None:
        await runner.stop()
    if worker is not None:
        worker.terminate()
        worker.wait()
    await spool.stop()
    await db.dispose()
    return filed, elapsed, [c / max(filed, 1) * 1e6 for c in cpu]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=("split", "one"), default="split")
    args = parser.parse_args()

    with Dovecot() as server, tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        server.add_user("alice", "secret")
        server.seed("alice", "INBOX", (make_message(i, args.size) for i in range(args.messages)))
        await bare_aioimaplib(server, args.messages)  # warm Dovecot's index and page cache
        base_rates, our_rates, cpus = [], [], []
        for r in range(args.rounds):
            n, s = await bare_aioimaplib(server, args.messages)
            assert n == args.messages, n
            base_rates.append(n / s)
            n, s, cpu = await ours(server, Path(tmp), r, args.messages, args.mode)
            assert n == args.messages, f"filed {n} of {args.messages}"
            our_rates.append(n / s)
            cpus.append(cpu)
            print(
                f"round {r + 1}: bare {base_rates[-1]:.0f} msg/s, ours {n / s:.0f} msg/s, "
                f"ratio {n / s / base_rates[-1]:.2f}; CPU "
                + " + ".join(f"{c:.0f}" for c in cpu)
                + (" µs/msg (fetching + filing)" if args.mode == "split" else " µs/msg"),
                flush=True,
            )
    base, mine = statistics.median(base_rates), statistics.median(our_rates)
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"cpus={os.cpu_count()} messages={args.messages} size={args.size} B "
        f"rounds={args.rounds} (median), SQLite on /tmp, {loop} loop, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, "
        + ("fetch here, filing in `serve --only worker`" if args.mode == "split" else "one process")
    )
    print(f"bare aioimaplib batched UID FETCH:        {base:8.0f} msg/s")
    print(f"imap add -> last email.filed:             {mine:8.0f} msg/s")
    print(f"ratio ours/bare: {mine / base:.2f}x (of the medians)")


if __name__ == "__main__":
    # The loop ``mailgate serve`` runs the imap role on (uvloop unless
    # MAILGATE_EVENT_LOOP=asyncio); both sides of the ratio share it.
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())
