"""The campaign runner: composes due recipients through the send path's own steps.

Each round, in one transaction: claim up to :attr:`CampaignRunner.batch` due
``pending`` recipients of ``scheduled``/``sending`` campaigns (locked with
``SKIP LOCKED`` on PostgreSQL, so two workers never take the same one), run
them per campaign through :data:`gateway.sending.steps.COMPOSE_STEPS`
(create sends with ``campaign_id``, render, track links, compose and sign with
one-click List-Unsubscribe, file a copy on linked CRM records, emit), mark
them ``queued`` with their ``send_id``, and mark ``sent`` (with one
``campaign.sent`` event) every live campaign with nothing pending left.  The
quota was booked when the campaign was sent, so no step books it again.  A
round that commits is all done; one that fails leaves every row pending.

A recipient the composer cannot carry (a template over its render limits,
a header the composer refuses) is marked ``failed`` on its own; its
neighbours go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import Connection

from gateway.clock import Clock
from gateway.runner import LoopRunner
from gateway.sending.steps import (
    COMPOSE_STEPS,
    Content,
    Outgoing,
    SendRequest,
    Signer,
    Submission,
)
from storage import campaigns as store
from storage.db import Database
from storage.events import append_sync
from storage.payloads import campaign_sent
from templates.render import TemplateProblem

log = logging.getLogger("mailgate.campaigns")

#: The catalogue a member without a template module renders through.
DEFAULT_CATALOGUE = "leads"


def content_of(campaign: dict[str, Any]) -> Content:
    """What the campaign sends: the snapshot taken when it was made (template or inline)."""
    return Content(
        subject=campaign["subject"],
        html=campaign["html"],
        text=campaign["text"],
        header=campaign["header"],
        footer=campaign["footer"],
        module=campaign["catalogue"],
        template_id=campaign["template_id"],
        template_version=campaign["template_version"],
    )


def merge_record(recipient: dict[str, Any]) -> dict[str, Any]:
    """The fields a recipient renders with: the member's, as a lead's (or a contact's) record.

    ``company`` is a lead's field and a contact's account name, so both
    ``{{ lead.company }}`` and ``{{ contact.account.name }}`` find it.
    """
    company = recipient["company"] or None
    return {
        "email": recipient["email"],
        "email_norm": recipient["email_norm"],
        "first_name": recipient["first_name"],
        "last_name": recipient["last_name"],
        "company": company,
        "account": {"name": company} if company else None,
    }


def outgoing(recipient: dict[str, Any], catalogue: str) -> Outgoing:
    return Outgoing(
        recipient["module"],
        recipient["record_id"],
        merge_record(recipient),
        catalogue=catalogue,
    )


def request_of(
    campaign: dict[str, Any], org: dict[str, Any], user: dict[str, Any] | None
) -> SendRequest:
    return SendRequest(
        org=org,
        # The author may have been deleted since: the sends then have no user.
        user=user or {"id": None},
        kind="mass",
        to=[],
        content=content_of(campaign),
        from_email=campaign["from_email"],
        from_name=campaign["from_name"],
        source="campaign",
        campaign_id=campaign["id"],
    )


def compose_batch(
    conn: Connection, req: SendRequest, signer: Signer, now: datetime, out: list[Outgoing]
) -> list[Outgoing]:
    """Run the compose steps over ``out`` in a savepoint; the composed ones (all or none)."""
    sub = Submission(request=req, signer=signer, now=now, outgoing=out)
    with conn.begin_nested():
        for step in COMPOSE_STEPS:
            step(conn, sub)
    return sub.outgoing


def compose_campaign(
    conn: Connection,
    campaign: dict[str, Any],
    recipients: list[dict[str, Any]],
    signer: Signer,
    now: datetime,
) -> None:
    """Compose one campaign's claimed recipients; one that cannot be composed fails alone."""
    org, user = store.org_and_user(conn, campaign["org_id"], campaign["user_id"])
    req = request_of(campaign, org, user)
    catalogue = campaign["catalogue"] or DEFAULT_CATALOGUE
    try:
        done = compose_batch(conn, req, signer, now, [outgoing(r, catalogue) for r in recipients])
        store.set_queued(
            conn, [(r["id"], o.send_id) for r, o in zip(recipients, done, strict=True)]
        )
        return
    except (TemplateProblem, ValueError) as exc:
        log.warning("campaign %s: batch failed (%s); composing one by one", campaign["id"], exc)
    for r in recipients:
        try:
            (o,) = compose_batch(conn, req, signer, now, [outgoing(r, catalogue)])
        except (TemplateProblem, ValueError) as exc:
            log.warning("campaign %s: %s cannot be composed: %s", campaign["id"], r["email"], exc)
            store.set_failed(conn, r["id"])
            continue
        store.set_queued(conn, [(r["id"], o.send_id)])


def compose_due(conn: Connection, signer: Signer, now: datetime, limit: int) -> tuple[int, int]:
    """One round: (recipients composed or failed, campaigns finished)."""
    claimed = store.claim_due(conn, now, limit)
    if claimed:
        found = store.campaigns_by_ids(conn, {r["campaign_id"] for r in claimed})
        store.mark_sending(conn, found)
        claimed.sort(key=lambda r: (r["campaign_id"], r["id"]))
        for cid, group in groupby(claimed, key=lambda r: r["campaign_id"]):
            compose_campaign(conn, found[cid], list(group), signer, now)
    finished = store.finish(conn, now)
    append_sync(
        conn,
        [
            campaign_sent(
                c["org_id"],
                campaign_id=c["id"],
                name=c["name"],
                list_ids=list(c["list_ids"]),
                recipients=c["recipients"],
                skipped=c["skipped"],
                user_id=c["user_id"],
                at=now,
            )
            for c in finished
        ],
    )
    return len(claimed), len(finished)


class CampaignRunner(LoopRunner):
    """Composes campaign recipients as they fall due, then wakes the relay."""

    name = "campaigns"

    def __init__(
        self,
        db: Database,
        *,
        signer: Signer,
        clock: Clock,
        wake_relay: Callable[[], None],
        batch: int = 200,
        poll_interval: float | None = None,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.db, self.signer, self.clock = db, signer, clock
        self.wake_relay, self.batch = wake_relay, batch

    async def run_once(self) -> int:
        now = self.clock.now()
        if not await self.db.run_read(store.has_work, now):
            return 0
        composed, finished = await self.db.run_write(compose_due, self.signer, now, self.batch)
        if composed:
            self.wake_relay()
        return composed + finished
