"""The SMTP front end: dropbox and bounce receiver.

It routes each recipient, checks who may write to a dropbox, hands the
message to the intake writer and answers ``250`` only once that is
committed.  Nothing slow happens here: no CRM look-ups beyond the dropbox
owner, no classification.

Who may file into a dropbox: the envelope sender (checked at RCPT) AND the
``From`` header (checked at DATA) must both be the user's own address or one
of their allowed senders.  A forged envelope alone cannot file mail, and a
client whose envelope differs from its From (some relays rewrite it) needs
that address added as an allowed sender.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.addresses import normalise
from gateway.ingest.pipeline import Delivery, Outcome
from gateway.ingest.runner import Intake
from storage import orgs as org_store
from storage.db import Database, StorageUnavailable

log = logging.getLogger("mailgate.smtp")

OWNER_CACHE_SECONDS = 5.0

DROPBOX_PREFIX = "dropbox-"

S250_OK = "250 2.0.0 OK: stored"
S451_STORAGE = "451 4.3.0 Storage unavailable, try again later"
S550_UNKNOWN = "550 5.1.1 No such recipient here"
S550_SENDER = "550 5.7.1 Sender not allowed for this dropbox"
S552_SIZE = "552 5.3.4 Message too big for this system"
S250_RCPT = "250 2.1.5 Recipient OK"


@dataclass(slots=True)
class Route:
    kind: str  # dropbox | bounce
    address: str
    user: dict | None = None


def route_for(address: str, mail_domain: str) -> tuple[str, str] | None:
    """(kind, token) for one of our addresses, or None for anything else."""
    norm = normalise(address)
    if norm is None:
        return None
    local, _, domain = norm.rpartition("@")
    if domain != mail_domain.lower():
        return None
    if local.startswith("bounces+") and len(local) > len("bounces+"):
        return "bounce", local[len("bounces+") :]
    if local.startswith(DROPBOX_PREFIX) and len(local) > len(DROPBOX_PREFIX):
        return "dropbox", local[len(DROPBOX_PREFIX) :]
    return None


class _SMTP(SMTP):
    """aiosmtpd with the enhanced status code our contract names for size refusals.

    Lines may be up to 16 KiB: RFC 5321 says 998, but real MTAs send longer ones
    (9 of the 629 real bounces in our corpus do) and refusing them would lose mail.
    """

    line_length_limit = 16 * 1024

    async def push(self, status):  # type: ignore[override]
        if isinstance(status, str) and status.startswith("552 Error"):
            status = S552_SIZE
        await super().push(status)


class DropboxHandler:
    def __init__(self, db: Database, intake: Intake, *, mail_domain: str) -> None:
        self.db = db
        self.intake = intake
        self.mail_domain = mail_domain.lower()
        self._owners: dict[str, tuple[float, tuple[dict, set[str]] | None]] = {}

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        found = route_for(address, self.mail_domain)
        if found is None:
            return S550_UNKNOWN
        kind, token = found
        if kind == "dropbox":
            sender = normalise(envelope.mail_from or "")
            try:
                owner = await self._owner(token)
                if owner is None or sender not in owner[1]:
                    # Refusals are never answered from the cache: re-read first.
                    owner = await self._owner(token, fresh=True)
            except Exception:  # noqa: BLE001 - any storage failure is a temporary refusal
                log.warning("storage unavailable at RCPT")
                return S451_STORAGE
            if owner is None:
                return S550_UNKNOWN
            user, allowed = owner
            if sender not in allowed:
                return S550_SENDER
            routes = _routes(envelope)
            routes.append(Route("dropbox", address, {**user, "allowed": allowed}))
        else:
            _routes(envelope).append(Route("bounce", address))
        envelope.rcpt_tos.append(address)
        return S250_RCPT

    async def _owner(self, token: str, fresh: bool = False) -> tuple[dict, set[str]] | None:
        """RCPT answers from a few seconds' cache (the look-up cost as much as filing).

        Only acceptances come from the cache (a refusal is re-read first), and the
        filing transaction re-checks token and senders authoritatively, so a
        regenerated address is still refused at once, at DATA at the latest.
        """
        now = time.monotonic()
        hit = self._owners.get(token)
        if hit and hit[0] > now and not fresh:
            return hit[1]
        owner = await self.db.run_read(org_store.dropbox_owner, token)
        if len(self._owners) > 10_000:
            self._owners.clear()
        self._owners[token] = (now + OWNER_CACHE_SECONDS, owner)
        return owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        routes = _routes(envelope)
        deliveries: list[Delivery] = []
        keep: list[dict] = []
        for r in routes:
            if r.kind == "dropbox":
                deliveries.append(
                    Delivery(
                        raw=raw,
                        channel="dropbox",
                        org_id=r.user["org_id"],
                        user_id=r.user["id"],
                        mail_from=envelope.mail_from or "",
                        rcpt_to=[r.address],
                        dropbox_token=r.user["dropbox_token"],
                    )
                )
            else:
                keep.append(
                    {
                        "channel": "bounce",
                        "mail_from": (envelope.mail_from or "")[:998],
                        "rcpt_to": [r.address],
                        "state": "pending",
                        "raw": raw,
                    }
                )
        if not deliveries and not keep:
            return S550_UNKNOWN
        try:
            await self.intake.submit(deliveries, keep)
        except StorageUnavailable:
            return S451_STORAGE
        return reply_for(deliveries, kept=bool(keep))


def reply_for(deliveries: list[Delivery], *, kept: bool) -> str:
    """One reply for the whole transaction: 250 if anything was stored, else why not."""
    outcomes = {d.outcome for d in deliveries}
    if kept or outcomes - {Outcome.SENDER_REFUSED, Outcome.UNKNOWN_DROPBOX}:
        return S250_OK
    if Outcome.SENDER_REFUSED in outcomes:
        return S550_SENDER
    return S550_UNKNOWN


def _routes(envelope: Envelope) -> list[Route]:
    routes = getattr(envelope, "mailgate_routes", None)
    if routes is None:
        routes = []
        envelope.mailgate_routes = routes  # type: ignore[attr-defined]
    return routes


async def start_smtp(
    handler: DropboxHandler, host: str, port: int, *, hostname: str, max_size: int
) -> asyncio.base_events.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _SMTP(
            handler,
            hostname=hostname,  # never a DNS lookup per connection
            ident="mailgate ESMTP",
            data_size_limit=max_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=300,
        ),
        host=host,
        port=port,
        reuse_port=True,  # several SMTP worker processes may share the port
    )
