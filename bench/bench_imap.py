"""Backfill throughput of our IMAP fetch path vs a bare aioimaplib loop, same Dovecot, same run.

    /work/devvenv/bin/python bench/bench_imap.py [--messages 5000] [--size 5120] [--rounds 3]

Both sides fetch every message of a seeded INBOX with
``UID FETCH <200 UIDs> (UID FLAGS INTERNALDATE BODY.PEEK[])``.  The baseline
only counts the literals aioimaplib hands back; ours goes through
``MailboxSource.fetch_new`` (EXAMINE, UID SEARCH, batching, timeouts,
parsing into ``FetchedMessage``, checkpoints).  Needs Dovecot (Debian
``dovecot-imapd``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aioimaplib import aioimaplib  # noqa: E402

from gateway.receive.imap import MailboxConfig, MailboxSource, connect  # noqa: E402
from tests.support.dovecot import Dovecot  # noqa: E402

BATCH = 200
ITEMS = "(UID FLAGS INTERNALDATE BODY.PEEK[])"


def make_message(i: int, size: int) -> bytes:
    head = (
        f"From: sender{i}@example.com\nTo: crm@example.org\nMessage-ID: <b{i}@example.com>\n"
        f"Subject: bench {i}\nDate: Mon, 23 Nov 2026 12:00:00 +0000\n\n"
    ).encode()
    line = b"z" * 75 + b"\n"
    return head + line * max(0, (size - len(head)) // len(line))


async def bare_aioimaplib(server: Dovecot, count: int) -> tuple[int, float]:
    started = time.perf_counter()
    client = aioimaplib.IMAP4(server.host, server.port, timeout=30)
    await client.wait_hello_from_server()
    await client.login("alice", "secret")
    await client.select("INBOX")
    fetched = 0
    for first in range(1, count + 1, BATCH):
        last = min(first + BATCH - 1, count)
        response = await client.uid("fetch", f"{first}:{last}", ITEMS)
        fetched += sum(1 for line in response.lines if isinstance(line, bytearray))
    elapsed = time.perf_counter() - started
    await client.logout()
    return fetched, elapsed


async def ours(server: Dovecot) -> tuple[int, float]:
    started = time.perf_counter()
    config = MailboxConfig(server.host, server.port, "alice", "secret", security="none")
    session = await connect(config, timeout=30)
    fetched = 0
    async for batch in MailboxSource(session).fetch_new("INBOX", None, since=date.min):
        fetched += len(batch.messages)
    elapsed = time.perf_counter() - started
    await session.logout()
    return fetched, elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with Dovecot() as server:
        server.add_user("alice", "secret")
        t = time.perf_counter()
        server.seed("alice", "INBOX", (make_message(i, args.size) for i in range(args.messages)))
        print(f"seeded {args.messages} x {args.size} B in {time.perf_counter() - t:.2f} s")
        await bare_aioimaplib(server, args.messages)  # warm Dovecot's index and page cache
        base_rates, our_rates = [], []
        for _ in range(args.rounds):
            n, s = await bare_aioimaplib(server, args.messages)
            assert n == args.messages, n
            base_rates.append(n / s)
            n, s = await ours(server)
            assert n == args.messages, n
            our_rates.append(n / s)
    base, mine = statistics.median(base_rates), statistics.median(our_rates)
    print(f"cpus={os.cpu_count()} rounds={args.rounds} (median)")
    print(f"bare aioimaplib batched UID FETCH: {base:8.0f} msg/s")
    print(f"gateway.receive.imap MailboxSource:        {mine:8.0f} msg/s")
    print(f"ratio ours/bare: {mine / base:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
