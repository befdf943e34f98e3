"""Step ``parse``: raw bytes → :class:`~gateway.ingest.parse.ParsedMail` (pure, CPU only).

It runs before the filing transaction, in a worker thread, so the database's
one writer is never held while mail is being decoded.
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.ingest.context import Batch, Flow
from gateway.ingest.parse import parse


def run(conn: Connection | None, batch: Batch) -> Flow:
    for d in batch.items:
        if d.parsed is None:
            d.parsed = parse(d.raw)
    return batch.flow()
