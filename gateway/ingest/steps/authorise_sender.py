"""Step ``authorise``: the authoritative dropbox checks, after the ``250``.

The SMTP session answered RCPT (and DATA) from a few seconds' cache; here, in
the filing transaction, a regenerated address, a deactivated user or a sender
removed meanwhile still refuses the mail.  Both the envelope sender and every
From address must be the user's own address or one of their allowed senders.
Refused mail is not dropped: the runner parks it as ``refused`` with the reason.

It also reads what the later steps need about orgs and users, fresh for each
batch (who may file, and who is a colleague, must be current).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from gateway.addresses import normalise
from gateway.ingest.context import Batch, Delivery, Flow, Outcome
from storage import filing

NAME = "authorise"


def load(conn: Connection, batch: Batch) -> None:
    ctx = filing.load_context(
        conn,
        sorted({d.org_id for d in batch.items}),
        sorted({d.user_id for d in batch.items if d.user_id is not None}),
    )
    batch.orgs, batch.users, batch.own_addresses = ctx.orgs, ctx.users, ctx.own
    batch.excluded = ctx.excluded


def dropbox_address(token: str, mail_domain: str) -> str:
    return f"dropbox-{token}@{mail_domain}".lower()


def verdict(
    d: Delivery, user: dict[str, Any] | None, own: set[str], mail_domain: str
) -> tuple[Outcome, str] | None:
    """(refusal, reason) for mail that may not be filed; None when it may."""
    if user is None:
        if d.channel == "dropbox":
            return Outcome.UNKNOWN_DROPBOX, "the dropbox's user no longer exists"
        return Outcome.IGNORED, "the mailbox's user no longer exists"
    if d.channel != "dropbox" or d.accepted_earlier:
        return None
    if not user["active"]:
        return Outcome.UNKNOWN_DROPBOX, "the dropbox's user is deactivated"
    if dropbox_address(user["dropbox_token"], mail_domain) not in {normalise(r) for r in d.rcpt_to}:
        return Outcome.UNKNOWN_DROPBOX, "the dropbox address was regenerated"
    envelope = normalise(d.mail_from)
    if envelope not in own:
        return Outcome.SENDER_REFUSED, f"envelope sender {envelope} is not an allowed sender"
    froms = d.parsed.from_addresses
    if not froms:
        return Outcome.SENDER_REFUSED, "the message has no From address"
    strangers = sorted(set(froms) - own)
    if strangers:
        return Outcome.SENDER_REFUSED, f"From {', '.join(strangers)} is not an allowed sender"
    return None


def run(conn: Connection, batch: Batch) -> Flow:
    load(conn, batch)
    for d in batch.live():
        user = batch.users.get(d.user_id) if d.user_id is not None else None
        found = verdict(d, user, batch.own_addresses.get(d.user_id, set()), batch.mail_domain)
        if found is not None:
            d.decide(found[0], NAME, found[1])
    return batch.flow()
