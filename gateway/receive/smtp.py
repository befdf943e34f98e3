"""The SMTP front end: dropbox and bounce receiver.

It routes each recipient, checks who may write to a dropbox, stores the raw
message and its envelope durably in the spool (fsync'd, see
:mod:`gateway.ingest.spool`) and answers ``250``; the ingest runner files the
mail afterwards.  A ``250`` is a promise that the bytes are on disk; when they
cannot be stored the answer is ``451 4.3.0`` and the client tries again.
Nothing slow happens here: no CRM look-ups, no classification.

Who may file into a dropbox: the envelope sender (checked at RCPT) AND the
``From`` header (checked at DATA) must both be the user's own address or one
of their allowed senders.  Both checks here are answered from a few seconds'
cache of the dropbox owner, so they are cheap; the ingest runner makes them
again, authoritatively, and parks what it then refuses as ``refused`` (see
``mailgate inbound list --state refused``) rather than dropping it.  A forged
envelope alone cannot file mail, and a client whose envelope differs from its
From (some relays rewrite it) needs that address added as an allowed sender.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.addresses import normalise
from gateway.ingest.parse import from_addresses
from gateway.ingest.spool import Spool
from gateway.metrics import SMTP_REPLIES
from gateway.outage import STORAGE
from gateway.runner import Runner
from storage import orgs
from storage.db import Database

log = logging.getLogger("mailgate.smtp")

#: How long an accepted dropbox owner is answered from memory.  A change made in this
#: process (deactivation, regenerate, senders) evicts it at once (:func:`forget_dropbox`);
#: one made elsewhere (the CLI, another node) is seen within this bound, and mail accepted
#: meanwhile is parked as refused by the ingest runner's authoritative check, never filed.
OWNER_CACHE_SECONDS = 5.0

#: Every live receiver of this process, so a change to a dropbox reaches their caches.
_HANDLERS: weakref.WeakSet[DropboxHandler] = weakref.WeakSet()


def forget_dropbox(token: str) -> None:
    """Drop ``token``'s cached owner from every receiver in this process.

    Called after a change to who may write to that dropbox commits: the user
    deactivated, the address regenerated, a sender removed.  The next RCPT
    reads the database, so the change is answered at once (``550``).
    """
    for handler in list(_HANDLERS):
        handler._owners.pop(token, None)


DROPBOX_PREFIX = "dropbox-"

S250_OK = "250 2.0.0 OK: stored"
S451_STORAGE = "451 4.3.0 Storage unavailable, try again later"
S550_UNKNOWN = "550 5.1.1 No such recipient here"
S550_SENDER = "550 5.7.1 Sender not allowed for this dropbox"
S552_SIZE = "552 5.3.4 Message too big for this system"
S250_RCPT = "250 2.1.5 Recipient OK"
S421_SHUTDOWN = "421 4.3.2 Service shutting down, try again later"


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


#: The longest line accepted (1 MiB), headers or body; longer ones get ``500 Line too long``.
MAX_LINE_LENGTH = 1024 * 1024


class _SMTP(SMTP):
    """aiosmtpd with the enhanced status code our contract names for size refusals.

    Lines may be up to :data:`MAX_LINE_LENGTH`: RFC 5321 says 998, but real MTAs
    relay far longer ones (a 48 KB line of HTML is ordinary; Postfix accepts and
    wraps it) and refusing them would lose mail.  The bound stays finite because
    aiosmtpd buffers a whole line per connection before it can count bytes.
    """

    line_length_limit = MAX_LINE_LENGTH

    def __init__(self, *args, sessions: set[_SMTP] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sessions = sessions if sessions is not None else set()
        #: True while a command runs (DATA: from the command to its reply, the data included).
        self.busy = False
        self._closing = False
        # Every command runs through _command, so a stop knows who is between commands.
        self._smtp_methods = {
            name: self._command(method) for name, method in self._smtp_methods.items()
        }

    def _command(self, method):
        @functools.wraps(method)  # keeps aiosmtpd's syntax attributes, which HELP reads
        async def run(arg):
            self.busy = True
            try:
                await method(arg)
            finally:
                self.busy = False
            if self._closing:  # a stop came during the command: it got its reply, now 421
                self.goodbye()

        return run

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)
        self._sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status):  # type: ignore[override]
        if isinstance(status, str) and status.startswith("552 Error"):
            status = S552_SIZE
        await super().push(status)

    def shut_down(self) -> None:
        """The server is stopping: an idle session gets ``421`` now, a busy one after its
        command's reply (a DATA in progress finishes and gets its ``250``/``451`` first)."""
        self._closing = True
        if not self.busy:
            self.goodbye()

    def goodbye(self) -> None:
        """``421 4.3.2`` and close; written straight to the transport (no drain to wait on)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        answer(S421_SHUTDOWN)  # counted like every reply
        transport.write(S421_SHUTDOWN.encode() + b"\r\n")
        transport.close()


class DropboxHandler:
    def __init__(
        self,
        db: Database,
        spool: Spool,
        *,
        mail_domain: str,
        ingest: Runner | None = None,
        bounces: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.ingest = ingest  # woken after storing (None when filing runs in another process)
        self.wake_bounces = bounces
        self.mail_domain = mail_domain.lower()
        self._owners: dict[str, tuple[float, tuple[dict, set[str]] | None]] = {}
        _HANDLERS.add(self)

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
            return answer(S550_UNKNOWN)
        kind, token = found
        if kind == "dropbox":
            sender = normalise(envelope.mail_from or "")
            try:
                owner = await self._owner(token)
                if owner is None or sender not in owner[1]:
                    # Refusals are never answered from the cache: re-read first.
                    owner = await self._owner(token, fresh=True)
            except Exception as exc:  # noqa: BLE001 - any storage failure is a temporary refusal
                STORAGE.failed(exc, "smtp")  # logged once per outage, not per RCPT
                return answer(S451_STORAGE)
            if owner is None:
                return answer(S550_UNKNOWN)
            user, allowed = owner
            if sender not in allowed:
                return answer(S550_SENDER)
            routes = _routes(envelope)
            routes.append(Route("dropbox", address, {**user, "allowed": allowed}))
        else:
            _routes(envelope).append(Route("bounce", address))
        envelope.rcpt_tos.append(address)
        return S250_RCPT

    async def _owner(self, token: str, fresh: bool = False) -> tuple[dict, set[str]] | None:
        """RCPT answers from a few seconds' cache (the look-up cost as much as filing).

        Only acceptances come from the cache (a refusal is re-read first), and the
        ingest runner re-checks token and senders authoritatively, so mail to a
        regenerated address is never filed (it is parked as refused).
        """
        now = time.monotonic()
        hit = self._owners.get(token)
        if hit and hit[0] > now and not fresh:
            return hit[1]
        owner = await self.db.run_read(orgs.dropbox_owner, token)
        STORAGE.succeeded()
        if len(self._owners) > 10_000:
            self._owners.clear()
        self._owners[token] = (now + OWNER_CACHE_SECONDS, owner)
        return owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        routes = _routes(envelope)
        dropboxes = [r for r in routes if r.kind == "dropbox"]
        bounces = [r for r in routes if r.kind == "bounce"]
        if dropboxes and not bounces:
            # Refused now when no dropbox of the transaction allows the From; otherwise
            # everything is stored and the runner parks what it refuses (never dropped).
            froms = set(from_addresses(from_fields(raw)))
            if not froms or not any(froms <= r.user["allowed"] for r in dropboxes):
                return answer(S550_SENDER)
        mail_from = (envelope.mail_from or "")[:998]
        rows = [
            {
                "channel": "dropbox",
                "org_id": r.user["org_id"],
                "user_id": r.user["id"],
                "mail_from": mail_from,
                "rcpt_to": [r.address],
                "raw": raw,
            }
            for r in dropboxes
        ]
        rows.extend(
            {"channel": "bounce", "mail_from": mail_from, "rcpt_to": [r.address], "raw": raw}
            for r in bounces
        )
        if not rows:
            return answer(S550_UNKNOWN)
        try:
            await self.spool.store(rows)
        except Exception as exc:  # noqa: BLE001 - not stored, whatever the reason: try later
            STORAGE.failed(exc, "smtp")  # logged once per outage, not per message
            return answer(S451_STORAGE)
        STORAGE.succeeded()
        if dropboxes and self.ingest is not None:
            self.ingest.wake()
        if bounces and self.wake_bounces is not None:
            self.wake_bounces()
        return answer(S250_OK)


#: A line the stdlib's header parser still reads as part of the header block
#: (``email.feedparser.headerRE``): a field, a continuation, or a stray ``From `` line.
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")


def from_fields(raw: bytes) -> bytes:
    """Only the ``From`` fields of ``raw``'s header block, as a header block of their own.

    ``from_addresses(from_fields(raw)) == from_addresses(raw)``, for about a
    third of the cost: the DATA check then parses one field instead of every
    header.  The block ends where the stdlib parser ends it (the first line
    that is neither a field nor a continuation), and a continuation belongs to
    a ``From`` field only as that parser would join it.
    """
    crlf = raw.find(b"\r\n\r\n")
    # Only before the CRLF blank line: a miss over the whole body costs more than the rest.
    lf = raw.find(b"\n\n", 0, len(raw) if crlf < 0 else crlf + 2)
    end = min((i for i in (crlf, lf) if i >= 0), default=-1)
    head = raw if end < 0 else raw[: end + 2]
    kept: list[bytes] = []
    in_from = False
    for line in head.splitlines(keepends=True):
        if not _HEADER_LINE.match(line):
            break
        if line[:1] in (b" ", b"\t"):
            if in_from:
                kept.append(line)
            continue
        colon = line.find(b":")
        # A ``From `` line (an mbox separator) is no field, and ends the one before it.
        in_from = not line.startswith(b"From ") and colon > 0 and line[:colon].lower() == b"from"
        if in_from:
            kept.append(line)
    if not kept:
        return b""
    block = b"".join(kept)
    return block + (b"\n" if block.endswith((b"\n", b"\r")) else b"\n\n")


def answer(reply: str) -> str:
    """Count the reply by its class (``250``, ``451``, ``550``) and return it."""
    SMTP_REPLIES.labels(reply[:3]).inc()
    return reply


def _routes(envelope: Envelope) -> list[Route]:
    routes = getattr(envelope, "mailgate_routes", None)
    if routes is None:
        routes = []
        envelope.mailgate_routes = routes  # type: ignore[attr-defined]
    return routes


class SmtpServer:
    """The listening SMTP server and its live sessions, so a stop can answer every one."""

    def __init__(self, server: asyncio.base_events.Server, sessions: set[_SMTP]) -> None:
        self.server, self.sessions = server, sessions

    @property
    def sockets(self):  # type: ignore[no-untyped-def]
        return self.server.sockets

    async def stop(self, deadline: float) -> int:
        """Stop accepting, answer every open session, and close them within ``deadline``.

        New connections are refused at once.  A session between commands gets
        ``421 4.3.2`` and is closed; one in the middle of a command (a DATA
        being received or stored) finishes it, gets its ``250`` or ``451``, then
        the ``421``.  Sessions still busy at the deadline get the ``421`` then
        (their transaction was not accepted: the client sends it again).
        Returns how many sessions were cut at the deadline.
        """
        self.server.close()
        for session in list(self.sessions):
            session.shut_down()
        give_up = time.monotonic() + deadline
        while self.sessions and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        cut = list(self.sessions)
        for session in cut:
            session.goodbye()
        if cut:
            log.warning(
                "stop: %d SMTP sessions still busy after %.1f s got 421", len(cut), deadline
            )
        await asyncio.sleep(0)  # let the transports flush their 421 and close
        return len(cut)


async def start_smtp(
    handler: DropboxHandler, host: str, port: int, *, hostname: str, max_size: int
) -> SmtpServer:
    loop = asyncio.get_running_loop()
    sessions: set[_SMTP] = set()
    server = await loop.create_server(
        lambda: _SMTP(
            handler,
            hostname=hostname,  # never a DNS lookup per connection
            ident="mailgate ESMTP",
            data_size_limit=max_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=300,
            sessions=sessions,
        ),
        host=host,
        port=port,
        reuse_port=True,  # several SMTP worker processes may share the port
    )
    return SmtpServer(server, sessions)
