"""The relay worker: claims due sends from the database and hands them to the smarthost.

Everything the worker knows is in the ``sends`` table, so a restart loses
nothing: a claim is a lease, and sends whose lease ran out (the process died
mid-delivery) are claimed again.  Delivery runs over a small pool of SMTP
connections that stay open between messages (aiosmtplib resets the envelope
after a refusal); a connection that breaks or gets ``421`` is dropped and
reopened for the next message.  Each round is one claim transaction, the
deliveries, and one transaction recording all outcomes with their events.

Replies decide: 2xx sent; 4xx, ``421``, refused connections and timeouts are
retried with exponential backoff until a deadline; 5xx fails the send and
counts as a hard bounce (:func:`gateway.sending.outcomes.record_hard_bounce_at_smtp`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings
from aiosmtplib.typing import SMTPStatus

from gateway.bounces.verp import verp_address
from gateway.sending import outcomes
from gateway.sending.outcomes import Delivery, RetryPolicy
from gateway.sending.quota import Clock, SystemClock
from storage import sends as send_store
from storage.db import Database

log = logging.getLogger("mailgate.relay")

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """``MAILGATE_RELAY_URL``: ``smtp://[user:pass@]host[:port][?starttls=1]`` or ``smtps://…``."""

    host: str
    port: int
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> RelayConfig:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            raise ValueError(f"relay URL must start with smtp:// or smtps://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"relay URL has no host: {url!r}")
        query = {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}
        starttls = query.get("starttls", "").lower() in _TRUE
        if scheme == "smtps" and starttls:
            raise ValueError("smtps:// is TLS from the start; starttls=1 applies to smtp:// only")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"relay URL has a bad port: {url!r}") from exc
        return cls(
            host=parts.hostname,
            port=port or (465 if scheme == "smtps" else 25),
            implicit_tls=scheme == "smtps",
            starttls=starttls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def client(self, timeout: float, local_hostname: str | None = None) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.implicit_tls,
            start_tls=self.starttls,
            username=self.username,
            password=self.password,
            timeout=timeout,
            local_hostname=local_hostname,
        )


def verdict_for(code: int | None) -> outcomes.Verdict:
    """2xx sent, 5xx failed, anything else (4xx, no reply at all) retried."""
    if code is not None and 200 <= code < 300:
        return "sent"
    if code is not None and 500 <= code < 600:
        return "failed"
    return "deferred"


class _Connection:
    """One pooled SMTP session, opened lazily and reopened after it breaks."""

    def __init__(self, relay: RelayConfig, timeout: float, local_hostname: str | None) -> None:
        self.relay, self.timeout, self.local_hostname = relay, timeout, local_hostname
        self.smtp: aiosmtplib.SMTP | None = None

    async def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is not None and smtp.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(smtp.quit(), 2)
            smtp.close()

    async def _open(self) -> aiosmtplib.SMTP:
        """Connect and greet: the lean transaction skips sendmail, which would send EHLO."""
        smtp = self.relay.client(self.timeout, self.local_hostname)
        self.smtp = smtp
        await smtp.connect()
        if smtp.is_ehlo_or_helo_needed:
            try:
                await smtp.ehlo()
            except aiosmtplib.SMTPHeloError:
                await smtp.helo()
        return smtp

    async def deliver(self, send: dict[str, Any], sender: str) -> Delivery:
        try:
            smtp = self.smtp
            if smtp is None or not smtp.is_connected:
                smtp = await self._open()
            to = send["to_email"]
            if _PLAIN_ADDRESS.match(sender) and _PLAIN_ADDRESS.match(to):
                message = await _transaction(smtp, sender, to, send["raw"])
            else:  # quoting, SMTPUTF8 …: aiosmtplib's own checks and errors
                _errors, message = await smtp.sendmail(sender, [to], send["raw"])
            return Delivery(send, "sent", f"250 {message}".strip(), 250)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return Delivery(
                send, verdict_for(first.code), f"{first.code} {first.message}", first.code
            )
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421 or not (self.smtp and self.smtp.is_connected):
                await self.close()
            return Delivery(send, verdict_for(exc.code), f"{exc.code} {exc.message}", exc.code)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            reason = str(exc) or type(exc).__name__
            return Delivery(send, "deferred", f"relay unreachable: {reason}", None)


#: An addr-spec that goes on the MAIL/RCPT line as it is: no quoting, comments,
#: angle brackets, spaces or controls, ASCII only (anything else takes sendmail).
_PLAIN_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$")


def _size(raw: bytes) -> int:
    """The SIZE (RFC 1870) of ``raw`` as DATA sends it: line endings as CRLF, CRLF at the end."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:  # lone CR or LF: rare
        return len(normalize_message_line_endings(raw))
    return len(raw) + (0 if raw.endswith(b"\r\n") else 2)


async def _transaction(smtp: aiosmtplib.SMTP, sender: str, to: str, raw: bytes) -> str:
    """One mail transaction for plain addresses; the final reply's text.

    What ``SMTP.sendmail`` does for one recipient, without re-parsing both
    addresses and normalising the message twice per message (a third of the
    relay's own CPU): MAIL (with SIZE), RCPT, DATA, and RSET after a refusal
    so the connection can carry the next message.  Raises what sendmail
    raises.
    """
    mail = [b"FROM:<" + sender.encode("ascii") + b">"]
    if smtp.supports_extension("size"):
        mail.append(b"SIZE=%d" % _size(raw))
    try:
        reply = await smtp.execute_command(b"MAIL", *mail)
        if reply.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
        reply = await smtp.execute_command(b"RCPT", b"TO:<" + to.encode("ascii") + b">")
        if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            refused = aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, to)
            raise aiosmtplib.SMTPRecipientsRefused([refused])
        return (await smtp.data(raw)).message
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPException):
            await smtp.rset()
        raise


class RelayWorker:
    """Delivers due sends until stopped; :meth:`wake` after enqueueing skips the poll wait."""

    def __init__(
        self,
        db: Database,
        relay: RelayConfig,
        *,
        mail_domain: str,
        pool_size: int = 4,
        timeout: float = 30.0,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        poll_interval: float = 1.0,
        lease: timedelta = timedelta(minutes=5),
        batch_per_connection: int = 50,
        local_hostname: str | None = None,
    ) -> None:
        self.db, self.relay, self.mail_domain = db, relay, mail_domain
        self.policy = policy or RetryPolicy()
        self.clock = clock or SystemClock()
        self.poll_interval, self.lease = poll_interval, lease
        self.batch = pool_size * batch_per_connection
        self.pool = [_Connection(relay, timeout, local_hostname) for _ in range(pool_size)]
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()
        for conn in self.pool:
            await conn.close()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                handled = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database may be away; try again later
                log.exception("relay round failed")
                handled = 0
            if handled:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def flush(self) -> None:
        """Wait until the outcomes of the last batch are committed."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def _claim(self) -> list[dict[str, Any]]:
        now = self.clock.now()
        return await self.db.run_write(send_store.claim_due, now, self.batch, self.lease)

    async def _deliver(self, claimed: list[dict[str, Any]]) -> list[Delivery]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for send in claimed:
            queue.put_nowait(send)
        results: list[Delivery] = []

        async def drain(conn: _Connection) -> None:
            while not queue.empty():
                send = queue.get_nowait()
                sender = verp_address(send["verp_token"], self.mail_domain)
                if send["raw"] is None:  # cannot happen for an enqueued send; never crash on it
                    results.append(Delivery(send, "failed", "no composed message stored", None))
                    continue
                results.append(await conn.deliver(send, sender))

        await asyncio.gather(*(drain(c) for c in self.pool[: len(claimed)]))
        return results

    async def run_once(self) -> int:
        """Deliver every send that is due now; how many were handled.

        A pipeline: the next batch is claimed while this one is delivered, and
        each batch's outcomes are committed in the background while the next
        is delivered, so the relay connections rarely wait for the database.
        Should an outcome commit fail, those sends stay claimed until their
        lease runs out and go out again — at least once, never lost.
        """
        total = 0
        next_claim = asyncio.ensure_future(self._claim())
        try:
            while True:
                claimed = await next_claim
                if not claimed:
                    break
                next_claim = asyncio.ensure_future(self._claim())
                results = await self._deliver(claimed)
                await self.flush()
                self._writing = asyncio.ensure_future(
                    self.db.run_write(outcomes.apply, results, self.clock.now(), self.policy)
                )
                total += len(claimed)
        finally:
            # A batch claimed but not delivered (stopping) waits for its lease to run out.
            next_claim.cancel()
            await self.flush()
        return total
