"""The relay runner: claims due sends from the database and hands them to the smarthost.

Everything the worker knows is in the ``sends`` table, so a restart loses
nothing: a claim is a lease (``MAILGATE_RELAY_LEASE``), sends whose lease ran
out (the process died mid-delivery) are claimed again, and a clean stop hands
back what it claimed but never tried.  Delivery runs over a small pool of SMTP
connections that stay open between messages (aiosmtplib resets the envelope
after a refusal); a connection that breaks or gets ``421`` is dropped and
reopened for the next message.  Each outcome is committed with its event as
soon as the database is free (with whatever others came meanwhile), while the
batch is still going out.

Replies decide: 2xx sent; 4xx, ``421``, refused connections and timeouts are
retried with exponential backoff until a deadline.  A 5xx is a bounce only when
it is about the recipient -- the reply to ``RCPT``, or after ``DATA`` naming the
recipient -- and then hard or soft as the bounce policy says
(:func:`gateway.sending.outcomes.record_bounce_at_smtp`).  A 5xx about us (the
greeting, ``AUTH``, ``MAIL FROM``) is the relay refusing us: the send waits and
an alert is raised, and nobody is suppressed (:mod:`gateway.sending.outcomes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import idna
from aiosmtplib.protocol import normalize_message_line_endings
from aiosmtplib.typing import SMTPStatus

from gateway import logs
from gateway.bounces.verp import verp_address
from gateway.clock import Clock, SystemClock
from gateway.metrics import RELAY_LATENCY, SENDS, reply_class
from gateway.runner import LoopRunner
from gateway.sending import outcomes
from gateway.sending.outcomes import Delivery, RetryPolicy, Stage, Verdict
from storage import sends
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


def verdict_for(code: int | None) -> Verdict:
    """2xx sent, 5xx failed, anything else (4xx, no reply at all) retried."""
    if code is not None and 200 <= code < 300:
        return Verdict.SENT
    if code is not None and 500 <= code < 600:
        return Verdict.FAILED
    return Verdict.DEFERRED


class _Connection:
    """One pooled SMTP session, opened lazily and reopened after it breaks."""

    def __init__(self, relay: RelayConfig, timeout: float, local_hostname: str | None) -> None:
        self.relay, self.timeout, self.local_hostname = relay, timeout, local_hostname
        self.smtp: aiosmtplib.SMTP | None = None
        #: In a delivery: set until it returns, so one cut off by a cancel stays set.
        self.mid_transaction = False

    async def close(self, grace: float = 2.0) -> None:
        """Say QUIT (waiting up to ``grace`` s for the reply), then drop the connection.

        A connection cut off mid-transaction is dropped without QUIT: the relay
        would answer the QUIT only after the message it is still judging, and a
        stop must not wait for that past its deadline (measured: two stalled
        connections held a 1 s stop for 5 s).
        """
        smtp, self.smtp = self.smtp, None
        if smtp is not None and smtp.is_connected:
            if grace > 0 and not self.mid_transaction:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(smtp.quit(), grace)
            smtp.close()
        self.mid_transaction = False

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
        """One send over this connection; which stage a refusal came at decides what it means
        (:class:`~gateway.sending.outcomes.Stage`)."""
        self.mid_transaction = True  # a cancel (a stop past its deadline) leaves it set
        delivery = await self._deliver(send, sender)
        self.mid_transaction = False
        return delivery

    async def _deliver(self, send: dict[str, Any], sender: str) -> Delivery:
        try:
            smtp = self.smtp
            if smtp is None or not smtp.is_connected:
                try:
                    smtp = await self._open()
                except aiosmtplib.SMTPResponseException as exc:  # greeting, EHLO, TLS, AUTH
                    await self.close()
                    return _refused(send, exc, Stage.SESSION)
            to = carried_address(send["to_email"])
            if to is None:
                return Delivery(send, Verdict.FAILED, "not sent: the address cannot be encoded")
            carried = {c: a for c in send.get("cc_emails") or () if (a := carried_address(c))}
            cc = list(carried.values())
            if _PLAIN_ADDRESS.match(sender) and all(map(_PLAIN_ADDRESS.match, [to, *cc])):
                message, refused = await _transaction(smtp, sender, to, send["raw"], cc)
                return _sent(send, message, refused, carried)
            elif not to.isascii() and not smtp.supports_extension("smtputf8"):
                # Only this send fails (no bounce, no suppression): the relay cannot carry it.
                return Delivery(
                    send,
                    Verdict.FAILED,
                    "not sent: the address's local part is not ASCII and the relay "
                    "does not offer SMTPUTF8",
                )
            else:  # quoting, SMTPUTF8 …: aiosmtplib's own checks and errors
                errors, message = await smtp.sendmail(sender, [to, *cc], send["raw"])
                if to in errors:  # the CC got it, the To was refused: that is the To's bounce
                    code, text = errors[to]
                    reply = f"{code} {text}"
                    return Delivery(send, verdict_for(code), reply, code, Stage.RECIPIENT)
                refused = [(a, f"{c} {t}") for a, (c, t) in errors.items()]
                return _sent(send, message, refused, carried)
            return Delivery(send, Verdict.SENT, f"250 {message}".strip(), 250)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return Delivery(
                send,
                verdict_for(first.code),
                f"{first.code} {first.message}",
                first.code,
                Stage.RECIPIENT,
            )
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421 or not (self.smtp and self.smtp.is_connected):
                await self.close()
            return _refused(send, exc, _STAGES.get(type(exc), Stage.SESSION))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            reason = str(exc) or type(exc).__name__
            return Delivery(send, Verdict.DEFERRED, f"relay unreachable: {reason}", None)
        except Exception as exc:  # noqa: BLE001 - never leave the connection mid-transaction
            # An unexpected error may leave the session between MAIL and DATA; the next
            # send on it (another org's, perhaps) would get "503 nested MAIL command".
            await self.close()
            log.exception("relay: unexpected error delivering send %s", send.get("id"))
            return Delivery(send, Verdict.DEFERRED, f"not sent: {type(exc).__name__}", None)


#: The transaction stage each refusal of aiosmtplib's comes from; anything else
#: (the greeting, EHLO, STARTTLS, AUTH, a 421 at any time) is about the session.
_STAGES = {
    aiosmtplib.SMTPSenderRefused: Stage.SENDER,
    aiosmtplib.SMTPDataError: Stage.DATA,
}


def _refused(send: dict[str, Any], exc: aiosmtplib.SMTPResponseException, stage: Stage) -> Delivery:
    return Delivery(send, verdict_for(exc.code), f"{exc.code} {exc.message}", exc.code, stage)


def carried_address(address: str) -> str | None:
    """``address`` as the relay can carry it: an IDN domain in its ASCII (IDNA) form.

    ``user@пример.рф`` becomes ``user@xn--e1afmkfd.xn--p1ai``, which any relay
    takes; a non-ASCII local part stays as it is and needs SMTPUTF8.  None when
    the domain cannot be encoded at all.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    if domain.isascii():
        return address
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return None
    return f"{local}@{ascii_domain}"


#: An addr-spec that goes on the MAIL/RCPT line as it is: no quoting, comments,
#: angle brackets, spaces or controls, ASCII only (anything else takes sendmail).
_PLAIN_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+$")


def _size(raw: bytes) -> int:
    """The SIZE (RFC 1870) of ``raw`` as DATA sends it: line endings as CRLF, CRLF at the end."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:  # lone CR or LF: rare
        return len(normalize_message_line_endings(raw))
    return len(raw) + (0 if raw.endswith(b"\r\n") else 2)


def _sent(
    send: dict[str, Any],
    message: str,
    refused_cc: list[tuple[str, str]],
    carried: dict[str, str],
) -> Delivery:
    """Accepted for the To: the relay's reply with any CC it refused named after it, and
    the CC addresses (as the send has them) that did go out."""
    reply = f"250 {message}".strip()
    if refused_cc:
        reply += "; cc refused: " + ", ".join(f"{a} ({r})" for a, r in refused_cc)
    refused = {a for a, _ in refused_cc}
    cc = [c for c, a in carried.items() if a not in refused]
    return Delivery(send, Verdict.SENT, reply, 250, cc=cc)


async def _transaction(
    smtp: aiosmtplib.SMTP, sender: str, to: str, raw: bytes, cc: list[str] | None = None
) -> tuple[str, list[tuple[str, str]]]:
    """One mail transaction for plain addresses; the final reply's text and the CC refused.

    What ``SMTP.sendmail`` does, without re-parsing the addresses and
    normalising the message twice per message (a third of the relay's own
    CPU): MAIL (with SIZE), RCPT for the To and then each CC, DATA, and RSET
    after a refusal so the connection can carry the next message.  The To
    decides the send: its refusal raises what sendmail raises (nobody gets
    the message).  A CC the relay refuses is left out and reported; it is
    neither retried (the To would get the message twice) nor a bounce of the
    send, whose VERP address and status belong to the To.
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
        refused_cc: list[tuple[str, str]] = []
        for address in cc or ():
            reply = await smtp.execute_command(b"RCPT", b"TO:<" + address.encode("ascii") + b">")
            if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
                refused_cc.append((address, f"{reply.code} {reply.message}"))
        return (await smtp.data(raw)).message, refused_cc
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, aiosmtplib.SMTPException):
            await smtp.rset()
        raise


class RelayWorker(LoopRunner):
    """The ``relay`` runner: delivers due sends; :meth:`wake` after enqueueing skips the poll wait.

    A round claims a batch under a lease and delivers it over the pool while
    the next batch is claimed.  Each outcome goes to the database as soon as it
    can (:meth:`_record`), so a crash loses at most the record of the messages
    on the wire and of the commits in progress, never that of a whole batch
    the relay already accepted: those few go out again, with the same
    Message-ID (the stored bytes), which is where at least once is the honest
    promise.  On a clean stop no new message is started,
    the outcomes are committed and what was claimed but never tried is handed
    back (:meth:`hand_back`), so the next process sends it at once instead of
    waiting out the lease.  A message that was on the wire when a stop ran
    past its deadline keeps its lease: it may have been accepted, and it goes
    out again only once the lease has run out (at least once, never lost).
    """

    name = "relay"

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
        lease: timedelta = timedelta(seconds=60),
        batch_per_connection: int = 25,
        group: int = 50,
        local_hostname: str | None = None,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.db, self.relay, self.mail_domain = db, relay, mail_domain
        self.policy = policy or RetryPolicy()
        self.clock = clock or SystemClock()
        self.lease = lease
        self.batch = pool_size * batch_per_connection
        self.group = group
        self.pool = [_Connection(relay, timeout, local_hostname) for _ in range(pool_size)]
        #: Claimed and not yet tried, oldest first, with the end of each one's lease.
        self._held: dict[int, tuple[dict[str, Any], datetime]] = {}
        #: Every claim of this round whose outcome is not yet committed (held, on the
        #: wire, waiting for the recorder): send id → the end of its lease, renewed.
        self._leases: dict[int, datetime] = {}
        self._recording_failed = False

    async def run_once(self) -> int:
        """Deliver every send that is due now; how many were tried.

        Stops taking new sends once :meth:`stop` is called or outcomes can no
        longer be written (the database went away): what is still held is then
        handed back, and a recording failure is raised for the loop's back-off.
        """
        self._recording_failed = False
        results: asyncio.Queue[Delivery | None] = asyncio.Queue(maxsize=self.group)
        recording = asyncio.create_task(self._record(results), name="relay-outcomes")
        renewing = asyncio.create_task(self._renew(), name="relay-leases")
        tried = 0
        try:
            more = await self._claim()
            while self._held and not self.stopping and not self._recording_failed:
                # The next batch is claimed while this one goes out.
                claiming = asyncio.ensure_future(self._claim()) if more else None
                try:
                    tried += await self._deliver(results)
                finally:
                    if claiming is not None:
                        more = await claiming  # known, so a stop hands it back
        finally:
            await results.put(None)
            try:
                await recording  # raises what stopped the recording
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                if self._held and not self.stopping:  # a stop hands back by itself
                    with contextlib.suppress(Exception):  # the database may be what failed
                        await self.hand_back()
                # What is left (a recording failure) keeps its lease in the database.
                self._leases = {i: end for i, end in self._leases.items() if i in self._held}
        return tried

    async def _renew(self) -> None:
        """While the round runs, renew its claims every third of the lease.

        A claim covers a whole batch (``pool_size`` x 25 sends), so a relay
        slower than the lease allows per message (2.4 s at 60 s) would otherwise
        let another worker -- or this one's next claim -- take a send that is
        still on the wire, and send it twice with no crash at all.  A dead
        worker renews nothing: its claims run out one lease after its last
        renewal, as before.
        """
        every = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            by_end: dict[datetime, list[int]] = {}
            for send_id, end in self._leases.items():
                by_end.setdefault(end, []).append(send_id)
            until = self.clock.now() + self.lease
            for end, ids in by_end.items():
                try:
                    kept = set(await self.db.run_write(sends.renew_claims, ids, end, until))
                except Exception as exc:  # noqa: BLE001 - the lease then runs out as before
                    log.warning("relay: renewing %d claims failed: %s", len(ids), exc)
                    continue
                for send_id in ids:
                    if send_id not in self._leases:
                        continue  # recorded meanwhile
                    if send_id in kept:
                        self._leases[send_id] = until
                        if send_id in self._held:
                            self._held[send_id] = (self._held[send_id][0], until)
                    else:  # recorded meanwhile, or taken by another worker once it ran out
                        self._leases.pop(send_id, None)

    async def hand_back(self) -> None:
        """Release the claims not yet tried: due again at once, their attempt uncounted."""
        held, self._held = self._held, {}
        for send_id in held:
            self._leases.pop(send_id, None)
        if held:
            until = max(lease_end for _, lease_end in held.values())
            released = await self.db.run_write(sends.release_claims, list(held), until)
            log.info("relay: handed back %d of %d claimed sends", released, len(held))

    async def close(self) -> None:
        """Close the pool at once, within what is left of a stop's deadline."""
        grace = min(2.0, self.time_left()) if self.stopping else 2.0
        await asyncio.gather(*(conn.close(grace) for conn in self.pool))

    async def _claim(self) -> bool:
        """Claim a batch into :attr:`_held`; True when it was full (more may be due).

        Sends to addresses suppressed since they were queued are failed by the
        claim itself (:func:`gateway.sending.outcomes.claim`), never delivered.
        """
        now = self.clock.now()
        rows, claimed = await self.db.run_write(outcomes.claim, now, self.batch, self.lease)
        lease_end = now + self.lease
        for row in rows:
            self._held[row["id"]] = (row, lease_end)
            self._leases[row["id"]] = lease_end
        return claimed == self.batch

    def _next(self) -> dict[str, Any] | None:
        """The oldest held send whose lease still has time left; None when none is left.

        One whose lease has run out is dropped, not tried: another worker may
        have claimed it since.
        """
        now = self.clock.now()
        while self._held:
            send, lease_end = self._held.pop(next(iter(self._held)))
            if lease_end > now:
                return send
            self._leases.pop(send["id"], None)
            log.warning("relay: lease of send %s ran out before it was tried", send["id"])
        return None

    async def _deliver(self, results: asyncio.Queue[Delivery | None]) -> int:
        """Drain :attr:`_held` over the pool; every result goes to the recorder."""

        async def work(conn: _Connection) -> int:
            tried = 0
            while not self.stopping and not self._recording_failed:
                send = self._next()
                if send is None:
                    break
                sender = verp_address(send["verp_token"], self.mail_domain)
                if send["raw"] is None:  # cannot happen for an enqueued send; never crash on it
                    delivery = Delivery(send, Verdict.FAILED, "no composed message stored", None)
                else:
                    started = time.monotonic()
                    with logs.bind(send_id=send["id"]):
                        delivery = await conn.deliver(send, sender)
                    RELAY_LATENCY.observe(time.monotonic() - started)
                SENDS.labels(
                    str(send["org_id"]), delivery.verdict.value, reply_class(delivery.code)
                ).inc()
                await results.put(delivery)
                tried += 1
            return tried

        counts = await asyncio.gather(*(work(c) for c in self.pool[: len(self._held)]))
        return sum(counts)

    async def _record(self, results: asyncio.Queue[Delivery | None]) -> None:
        """Commit each outcome as soon as the database is free, with whatever came meanwhile.

        No outcome waits for others: when a commit ends, everything that arrived
        during it (up to ``group``) is the next group.  A slow relay therefore
        costs one commit per message and its 250 is on record within one commit
        of arriving; a fast one fills the groups by itself (group commit).  The
        window a ``kill -9`` can re-send is only that: the messages on the wire
        and the outcomes of the commit in progress and the one queued behind it
        (the queue holds one group, so the connections wait for the database
        rather than run ahead of what is on record).  Waiting for company
        (``linger``, once 50 ms) widened that window for nothing; each
        connection waiting for its own commit would shrink it to one message
        per connection, but cost 4-6x the throughput on PostgreSQL (measured,
        bench/README.md).  After a failed commit the rest is taken off the
        queue unwritten (those sends keep their lease and go out again once it
        has run out) and the error is raised.
        """
        error: Exception | None = None
        while True:
            group = [await results.get()]
            while len(group) < self.group and group[-1] is not None and not results.empty():
                group.append(results.get_nowait())
            done = group[-1] is None  # the end marker comes after every result
            deliveries = [d for d in group if d is not None]
            if deliveries and error is None:
                try:
                    now = self.clock.now()
                    await self.db.run_write(outcomes.apply, deliveries, now, self.policy)
                except Exception as exc:  # noqa: BLE001 - raised below, after the queue is empty
                    error = exc
                    self._recording_failed = True
                else:
                    for d in deliveries:  # on record: no longer ours to renew
                        self._leases.pop(d.send["id"], None)
            if done:
                break
        if error is not None:
            raise error
