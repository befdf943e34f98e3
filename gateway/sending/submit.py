"""Accepting a send: the guard steps of :mod:`gateway.sending.steps`, in one transaction.

:func:`enqueue` runs as synchronous SQL inside ``Database.run_write``.  The
quota reservation, the send rows with their composed bytes, the filed copy
of each message and the events all commit together or not at all, so a 202
from the API means the mail will go out (the relay worker finds it in the
database even after a restart) and a refusal leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from gateway.sending.steps import STEPS, Flow, SendRequest, Signer, Step, Submission


@dataclass
class Accepted:
    """The API's 202 body: one entry per queued or scheduled send, one per skipped recipient."""

    sends: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: CC entries dropped (suppressed, no address, a To's address …), each with its reason.
    cc_skipped: list[dict[str, Any]] = field(default_factory=list)


def accepted(sub: Submission) -> Accepted:
    """What the caller is told: ids, addresses, and when a deferred send is due."""
    sends = []
    for out in sub.outgoing:
        to: dict[str, Any] = {"module": out.module, "id": out.record_id}
        if out.deal is not None:  # named as asked, with the contact it went to
            to = {"module": "deals", "id": out.deal["id"], "contact_id": out.record_id}
        item: dict[str, Any] = {
            "id": out.send_id,
            "to": {**to, "email": out.record["email"]},
            "status": "scheduled" if out.scheduled else "queued",
            "message_id": f"<{out.row['message_id']}>",
        }
        if sub.cc:
            item["cc"] = [c.email for c in sub.cc]
        if out.scheduled:
            item["send_at"] = out.day.starts_at.isoformat()
        sends.append(item)
    return Accepted(
        sends=sends,
        skipped=[s.as_json() for s in sub.skipped],
        cc_skipped=[s.as_json() for s in sub.cc_skipped],
    )


def enqueue(
    conn: Connection,
    req: SendRequest,
    signer: Signer,
    now: datetime,
    steps: tuple[Step, ...] = STEPS,
) -> Accepted:
    """Queue one message per deliverable recipient; refuse whole when over quota."""
    sub = Submission(request=req, signer=signer, now=now)
    for step in steps:
        if step(conn, sub) is Flow.DONE:
            break
    return accepted(sub)
