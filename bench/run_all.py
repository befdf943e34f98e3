"""Run every benchmark once, one after another (``make bench``).

Each prints its own rate, the bare baseline's rate from the same run, and the
ratio; copy the figures with the date and core count into bench/README.md.
With ``MAILGATE_BENCH_DATABASE_URL`` (a PostgreSQL server's ``postgres`` database;
each benchmark creates and drops its own) the PostgreSQL-only ones run too: one
and two processes per role (``bench_scale.py``) and every dashboard page at
1,000,000 sends (``bench_pages.py``, ~2 minutes of seeding).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["bench_dropbox.py", "3000"],
    ["bench_render.py", "10000"],
    ["bench_send.py", "3000", "4"],
    ["bench_tokens.py"],
    ["bench_tracking.py", "pixel"],
    ["bench_bounces.py", "3"],
    ["bench_imap.py"],
    ["bench_imap_filing.py"],
    ["bench_consumers.py", "10000"],
    ["bench_campaign.py", "10000", "4"],
]


def postgresql_runs(url: str) -> list[list[str]]:
    """The benchmarks that need a PostgreSQL server (none without ``url``)."""
    if not url:
        return []
    return [["bench_scale.py"], ["bench_pages.py", url]]


def main() -> int:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    failed = 0
    runs = RUNS + postgresql_runs(os.environ.get("MAILGATE_BENCH_DATABASE_URL", ""))
    for args in runs:
        print(f"\n=== {' '.join(args)}", flush=True)
        failed += (
            subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], env=env).returncode
            != 0
        )
    print(f"\n{len(runs) - failed} benchmarks ran, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
