"""Run every benchmark once, one after another (``make bench``).

Each prints its own rate, the bare baseline's rate from the same run, and the
ratio; copy the figures with the date and core count into bench/README.md.
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


def main() -> int:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    failed = 0
    for args in RUNS:
        print(f"\n=== {' '.join(args)}", flush=True)
        failed += (
            subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], env=env).returncode
            != 0
        )
    print(f"\n{len(RUNS) - failed} benchmarks ran, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
