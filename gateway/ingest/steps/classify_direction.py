"""Step ``classify``: which way the mail went, and who is on the other side (pure).

Dropbox mail and a mailbox's Sent folder are outgoing (the counterparts are To
and Cc); anything else is incoming unless the user sent it (the counterpart is
the sender).  Counterparts in the org's excluded domains are dropped, and mail
that only involves excluded domains is ignored altogether.
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.addresses import in_domains
from gateway.ingest.context import Batch, Delivery, Flow, Outcome

NAME = "classify"


def classify(d: Delivery, own: set[str]) -> None:
    p = d.parsed
    sender = p.sender.email if p.sender else None
    if d.channel == "dropbox" or d.folder_kind == "sent" or (sender in own):
        d.direction = "outgoing"
        d.counterparts = [a.email for a in (*p.to, *p.cc)]
    else:
        d.direction = "incoming"
        d.counterparts = [sender] if sender else []


def exclude_counterparts(d: Delivery, excluded: list[str]) -> bool:
    """Drop counterparts in ``excluded`` domains; True when nobody is left."""
    if not excluded or not d.counterparts:
        return False
    d.counterparts = [a for a in d.counterparts if not in_domains(a, excluded)]
    return not d.counterparts


def run(conn: Connection | None, batch: Batch) -> Flow:
    for d in batch.live():
        classify(d, batch.own_addresses.get(d.user_id, set()))
        if exclude_counterparts(d, batch.excluded.get(d.org_id, [])):
            d.decide(Outcome.IGNORED, NAME, "only excluded domains")
    return batch.flow()
