"""Step ``classify``: which way the mail went, and who is on the other side (pure).

Dropbox mail and a mailbox's Sent folder are outgoing (the counterparts are To
and Cc); anything else is incoming unless the user sent it (the counterpart is
the sender).  Mail with a counterpart in one of the org's excluded domains is
still filed, but not shared: seed 004 excludes those domains from *sharing*,
so the owner sees it and colleagues do not.  Those counterparts never become
new records (see ``create``).
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.addresses import in_domains
from gateway.ingest.context import Batch, Delivery, Flow

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


def involves_excluded(d: Delivery, excluded: list[str]) -> bool:
    """Does any counterpart sit in one of the org's ``excluded`` domains?"""
    return bool(excluded) and any(in_domains(a, excluded) for a in d.counterparts)


def run(conn: Connection | None, batch: Batch) -> Flow:
    for d in batch.live():
        classify(d, batch.own_addresses.get(d.user_id, set()))
        d.shared = not involves_excluded(d, batch.excluded.get(d.org_id, []))
    return batch.flow()
