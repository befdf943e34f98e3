"""Step ``file``: store the messages, link them to their records, remember where IMAP mail sits.

Bulk statements for the whole batch.  A polled message's location (mailbox,
folder, UIDVALIDITY, UID) is recorded for new mail and for mail filed before
(a duplicate), so a later poll and the \\Seen sync find it; its \\Seen flag is
copied to new mail.  Each new message gets ``email.filed`` (and incoming mail
``email.received``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from gateway.ingest.context import Batch, Delivery, Flow, Outcome
from storage import filing, mailboxes
from storage.payloads import email_filed, email_received

NAME = "file"


def message_row(d: Delivery) -> dict[str, Any]:
    p = d.parsed
    return {
        "org_id": d.org_id,
        "user_id": d.user_id,
        "message_id": p.message_id,
        "content_hash": p.content_hash,
        "subject": p.subject,
        "from_addr": p.sender.email if p.sender else "",
        "from_name": p.sender.name if p.sender else "",
        "to_addrs": [a.as_json() for a in p.to],
        "cc_addrs": [a.as_json() for a in p.cc],
        "date": p.date,
        "direction": d.direction,
        "source": d.channel,
        "in_reply_to": p.in_reply_to,
        "references": p.references,
        "text_body": p.text,
        "html_body": p.html,
        "defects": p.defects,
        "size": len(d.raw),
        "raw": d.raw,
        "shared": d.shared,
    }


def run(conn: Connection, batch: Batch) -> Flow:
    live = batch.live()
    ids = filing.insert_messages(conn, [message_row(d) for d in live])
    links: list[dict[str, Any]] = []
    for d, pk in zip(live, ids, strict=True):
        d.message_pk = pk
        d.decide(Outcome.FILED, NAME)
        links.extend(
            {"org_id": d.org_id, "message_id": pk, "module": m, "record_id": r}
            for m, r in d.records
        )
        sender = d.parsed.sender.email if d.parsed.sender else ""
        batch.new_events.append(
            email_filed(
                d.org_id,
                message_pk=pk,
                header_message_id=d.parsed.message_id,
                user_id=d.user_id,
                direction=d.direction,
                source=d.channel,
                subject=d.parsed.subject,
                records=d.records,
                shared=d.shared,
                at=batch.now,
            )
        )
        if d.direction == "incoming":
            batch.new_events.append(
                email_received(
                    d.org_id,
                    message_pk=pk,
                    user_id=d.user_id,
                    sender=sender,
                    shared=d.shared,
                    at=batch.now,
                )
            )
    filing.insert_links(conn, links)
    locate(conn, batch)
    return batch.flow()


def locate(conn: Connection, batch: Batch) -> None:
    """Where polled mail sits on the server; earlier copies of duplicates are looked up."""
    polled = [
        d
        for d in batch.items
        if d.origin
        and "uid" in d.origin  # POP3 mail has no server location to keep read state at
        and d.outcome in (Outcome.FILED, Outcome.DUPLICATE)
        and d.parsed is not None
    ]
    for mailbox_id in sorted({d.origin["mailbox_id"] for d in polled}):
        mine = [d for d in polled if d.origin["mailbox_id"] == mailbox_id]
        dupes = [d for d in mine if d.outcome is Outcome.DUPLICATE]
        earlier: dict[tuple[str | None, str], int] = {}
        for org_id in sorted({d.org_id for d in dupes}):
            earlier.update(
                mailboxes.message_pks(
                    conn,
                    org_id,
                    [
                        (d.parsed.message_id, d.parsed.content_hash)
                        for d in dupes
                        if d.org_id == org_id
                    ],
                )
            )
        locations, seen = [], []
        for d in mine:
            pk = d.message_pk
            if d.outcome is Outcome.DUPLICATE:
                pk = earlier.get((d.parsed.message_id, d.parsed.content_hash))
            if pk is None:
                continue
            o = d.origin
            locations.append(
                {
                    "mailbox_id": mailbox_id,
                    "message_pk": pk,
                    "folder": o["folder"],
                    "uidvalidity": o["uidvalidity"],
                    "uid": o["uid"],
                    "seen_pending": False,
                }
            )
            if o.get("seen") and d.outcome is Outcome.FILED:
                seen.append(pk)
        mailboxes.store_locations(conn, locations)
        mailboxes.set_seen_sync(conn, seen)
