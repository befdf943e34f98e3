"""Step ``match``: link each message to the leads and contacts its counterparts already are.

One look-up per org for the whole batch.  Polled (IMAP) mail with no CRM
counterpart is not ours to keep and is ignored here; dropbox mail goes on to
``create``.
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.ingest.context import Batch, Flow, Outcome
from storage import filing

NAME = "match"


def run(conn: Connection, batch: Batch) -> Flow:
    by_org: dict[int, set[str]] = {}
    for d in batch.live():
        by_org.setdefault(d.org_id, set()).update(d.counterparts)
    batch.known = {o: filing.records_by_email(conn, o, emails) for o, emails in by_org.items()}
    for d in batch.live():
        found = batch.known.get(d.org_id, {})
        own = batch.own_addresses.get(d.user_id, set())
        for address in d.counterparts:
            if address not in own:
                d.records.extend(found.get(address, ()))
        d.records = list(dict.fromkeys(d.records))
        if d.channel == "imap" and not d.records:
            d.decide(Outcome.IGNORED, NAME, "no CRM record for its counterparts")
    return batch.flow()
