"""Step ``dedupe``: mail the org already has (same Message-ID or same bytes) is not filed again.

This is what makes filing idempotent: a spool row filed once and then claimed
again (its runner died before deleting it), an IMAP batch fetched twice, a
message BCC'd twice — each is filed once.  Within a batch, the first copy wins.
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.ingest.context import Batch, Flow, Outcome
from storage import filing

NAME = "dedupe"


def run(conn: Connection, batch: Batch) -> Flow:
    live = batch.live()
    keys = [(d.org_id, d.parsed.message_id, d.parsed.content_hash) for d in live]
    seen_ids, seen_hashes = filing.existing(conn, keys)
    for d in live:
        p = d.parsed
        if (d.org_id, p.content_hash) in seen_hashes or (
            p.message_id and (d.org_id, p.message_id) in seen_ids
        ):
            d.decide(Outcome.DUPLICATE, NAME)
            continue
        seen_hashes.add((d.org_id, p.content_hash))
        if p.message_id:
            seen_ids.add((d.org_id, p.message_id))
    return batch.flow()
