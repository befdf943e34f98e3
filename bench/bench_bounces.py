"""Bench: classify() over every corpus message vs a bare compat32 parse.

Usage: python bench/bench_bounces.py [N]   (N passes over the corpora, default 5)

Prints messages/s for ``gateway.bounces.classify`` and for the baseline
``email.message_from_bytes(raw, policy=compat32)`` over the same messages in
the same run, and the ratio (how many times slower classification is than
merely parsing).
"""

from __future__ import annotations

import email
import os
import sys
import time
from email import policy
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.bounces import classify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("MAILGATE_SHARED_DIR", ROOT.parent / "shared")) / "corpora"


def load() -> list[bytes]:
    files = sorted(CORPORA.glob("*/**/*.eml"))
    if not files:
        sys.exit(f"no corpora under {CORPORA} (set MAILGATE_SHARED_DIR)")
    return [path.read_bytes() for path in files]


def rate(fn, messages: list[bytes], passes: int) -> float:
    start = time.perf_counter()
    for _ in range(passes):
        for raw in messages:
            fn(raw)
    return passes * len(messages) / (time.perf_counter() - start)


def main() -> None:
    passes = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    messages = load()
    rate(classify, messages, 1)  # warm caches and regex compilation
    baseline = rate(
        lambda raw: email.message_from_bytes(raw, policy=policy.compat32), messages, passes
    )
    ours = rate(classify, messages, passes)
    print(f"messages: {len(messages)} x {passes} passes")
    print(f"baseline message_from_bytes(compat32): {baseline:,.0f} msg/s")
    print(f"classify():                            {ours:,.0f} msg/s")
    print(f"ratio baseline/classify: {baseline / ours:.2f}x slower")


if __name__ == "__main__":
    main()
