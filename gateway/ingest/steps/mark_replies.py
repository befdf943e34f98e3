"""Step ``replies``: incoming mail answering one of our sends marks that send replied.

Dropbox or IMAP, filed or ignored (an answer from someone not in the CRM still
answers the send).  Each newly replied send is an ``email.replied`` event.
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.ingest.context import Batch, Flow, Outcome
from storage import replies
from storage.payloads import email_replied

NAME = "replies"


def run(conn: Connection, batch: Batch) -> Flow:
    for d in batch.items:
        if d.direction != "incoming" or d.outcome not in (Outcome.FILED, Outcome.IGNORED):
            continue
        refs = [*d.parsed.references, d.parsed.in_reply_to]
        if not any(refs):
            continue
        sender = d.parsed.sender.email if d.parsed.sender else ""
        for send in replies.mark_replied(conn, d.org_id, refs, batch.now):
            batch.new_events.append(
                email_replied(
                    d.org_id,
                    send=send,
                    message_pk=d.message_pk,
                    user_id=d.user_id,
                    sender=sender,
                    shared=d.shared,
                    at=batch.now,
                )
            )
    return batch.flow()
