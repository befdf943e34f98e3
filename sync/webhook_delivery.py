"""The ``webhook_delivery`` runner: posts each endpoint's queued events, in order, signed.

Deliveries follow Standard Webhooks (https://www.standardwebhooks.com/): the
body is the event exactly as ``GET /api/v1/events`` shows it
(:func:`gateway.http.events.event_body`), with headers ``webhook-id``
(``msg_<event id>``: the same on every retry, so a receiver drops repeats),
``webhook-timestamp`` (the attempt's Unix time) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, made by the
``standardwebhooks`` package; during a secret rotation's grace both secrets
sign, space separated).

The model, per endpoint:

- one deliverer at a time: an endpoint is claimed whole under a lease
  (:func:`storage.webhooks.claim_due`), so two ``serve --only sync``
  processes never post to one endpoint at once and its order holds;
- strictly in event order, one in flight: a turn reads the next due
  deliveries in batches of ``BATCH`` with their events (one query each) and
  posts them one after another; a 2xx joins a group that is written (marked
  ``delivered``, the claim renewed) every ``GROUP`` deliveries or
  ``GROUP_WAIT`` seconds, and the next goes at once; anything else (non-2xx,
  timeout, connection error, a target that resolves to a refused address)
  counts an attempt, schedules that delivery again after
  ``base * 2**(attempts-1)`` seconds (capped), sets the endpoint's
  ``failing_since`` and ends its turn (the group before it written in the
  same transaction): the endpoint waits;
- an endpoint whose failures have lasted ``disable_after`` is disabled, with
  one ``webhook.disabled`` event; its pending deliveries are kept.

Endpoints are served concurrently (``concurrency`` claimed per round), each
with its own client kept across turns (keep-alive).  At least once: a crash
between a receiver's 2xx and the commit of its group repeats that group's
deliveries (at most ``GROUP``) with the same ``webhook-id``; a failure, the
end of a turn and a stop write the group first.  The target is resolved and checked
(:mod:`gateway.targets`) before every attempt and the connection goes to the
address checked, so DNS rebinding cannot aim a delivery at a private address.
Redirects are not followed (a 3xx is a failure), and no proxy from the
environment is used (it would bypass the check).  Secrets are never logged;
of a response only the status and its first bytes are kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import Connection
from standardwebhooks import Webhook

from gateway.clock import Clock
from gateway.http.events import event_body
from gateway.metrics import WEBHOOK_ATTEMPTS
from gateway.runner import LoopRunner
from gateway.targets import TargetRefused, resolve_target
from storage import events, payloads
from storage import webhooks as store
from storage.db import Database
from storage.events import Event

log = logging.getLogger("mailgate.webhooks")

#: How much of a receiver's answer is kept in the delivery log.
RESPONSE_KEPT = 200
#: Deliveries one endpoint may take per turn before others get a go.
PER_TURN = 200
#: Deliveries read per query (with their events), in order, while due.
BATCH = 50
#: 2xx written together: a group is written when it reaches GROUP deliveries, when its
#: first is GROUP_WAIT seconds old, at a failure, at the end of the turn and on stop.
#: A crash re-sends at most one unwritten group (same ``webhook-id``).
GROUP = 50
GROUP_WAIT = 0.1
#: Endpoints whose client (and its kept-alive connection) is kept between turns.
CLIENTS_KEPT = 64


class Outcome(StrEnum):
    """What one attempt came to."""

    DELIVERED = "delivered"  # a 2xx
    REJECTED = "rejected"  # any other status
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # connection refused, reset, TLS failure …
    REFUSED = "refused"  # the target resolves to an address we may not connect to


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST's result, as the delivery log keeps it."""

    outcome: Outcome
    status: int | None = None
    error: str | None = None
    response: str = ""
    ms: int = 0

    def entry(self, at: datetime) -> dict[str, Any]:
        return {
            "at": at.isoformat(),
            "outcome": str(self.outcome),
            "status": self.status,
            "error": self.error,
            "response": self.response,
            "ms": self.ms,
        }


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failing head is tried again, and when a failing endpoint is given up on."""

    base: float = 10.0
    cap: float = 3600.0
    disable_after: float = 5 * 86400.0

    def delay(self, attempts: int) -> timedelta:
        """The wait after the ``attempts``-th failed attempt: base, 2·base, 4·base … capped."""
        return timedelta(seconds=min(self.cap, self.base * 2 ** max(0, attempts - 1)))

    def gives_up(self, failing_since: datetime, now: datetime) -> bool:
        return (now - failing_since).total_seconds() >= self.disable_after


def message_id(event: Event) -> str:
    """The ``webhook-id``: one per event, the same on every retry and every endpoint."""
    return f"msg_{event.id}"


def signing_secrets(endpoint: dict[str, Any], now: datetime) -> list[str]:
    """The current secret, and the previous one while its rotation grace lasts."""
    found = [endpoint["secret"]]
    until = endpoint.get("previous_secret_until")
    if endpoint.get("previous_secret") and until is not None and until > now:
        found.append(endpoint["previous_secret"])
    return found


def signed_headers(
    secrets: list[str],
    msg_id: str,
    at: datetime,
    body: bytes,
    *,
    signers: dict[str, Webhook] | None = None,
) -> dict[str, str]:
    """The Standard Webhooks headers for ``body`` sent at ``at``.

    ``signers`` keeps each secret's decoded signer between calls (a turn's worth).
    """
    text = body.decode()
    kept = {} if signers is None else signers
    for secret in secrets:
        if secret not in kept:
            kept[secret] = Webhook(secret)
    signature = " ".join(kept[s].sign(msg_id, at, text) for s in secrets)
    return {
        "content-type": "application/json",
        "user-agent": "mailgate-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def pinned(url: str, address: str) -> tuple[str, str, str]:
    """``url`` aimed at the checked ``address``: (URL, Host header, TLS server name)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return urlunsplit(parts._replace(netloc=netloc)), parts.netloc, host


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    allow_private: bool,
) -> Attempt:
    """One attempt: check the target, POST to the address checked, keep the answer's start."""
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout):
            address = await resolve_target(parts.hostname or "", port, allow_private=allow_private)
            target, host, server_name = pinned(url, address)
            extensions = {"sni_hostname": server_name} if parts.scheme == "https" else {}
            request = client.build_request(
                "POST",
                target,
                content=body,
                headers={**headers, "host": host},
                extensions=extensions,
            )
            response = await client.send(request, stream=True)
            try:
                kept = b""
                async for chunk in response.aiter_raw():
                    kept += chunk
                    if len(kept) >= RESPONSE_KEPT:
                        break
            finally:
                await response.aclose()
    except TargetRefused as exc:
        return Attempt(Outcome.REFUSED, error=f"target refused: {exc}", ms=took())
    except (TimeoutError, httpx.TimeoutException):
        return Attempt(Outcome.TIMEOUT, error=f"no answer within {timeout:g} s", ms=took())
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        return Attempt(Outcome.UNREACHABLE, error=f"{type(exc).__name__}: {exc}"[:500], ms=took())
    text = kept[:RESPONSE_KEPT].decode("utf-8", "replace")
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(Outcome.DELIVERED, status=status, response=text, ms=took())
    return Attempt(
        Outcome.REJECTED, status=status, error=f"HTTP {status}", response=text, ms=took()
    )


class WebhookDelivery(LoopRunner):
    """Delivers queued webhook events, per endpoint in order, retrying with backoff."""

    name = "webhook_delivery"

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock,
        policy: RetryPolicy | None = None,
        timeout: float = 10.0,
        concurrency: int = 16,
        allow_private: bool = False,
        poll_interval: float | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.db = db
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.concurrency = concurrency
        self.allow_private = allow_private
        #: Longer than a turn's slowest attempt, so a live claim never runs out mid-POST.
        self.lease = timedelta(seconds=max(60.0, 3 * timeout))
        #: Claims this runner holds: endpoint id → its ``claimed_until``.
        self._held: dict[int, datetime] = {}
        #: Per claimed endpoint, the 2xx posted but not yet written, and when the first came.
        self._groups: dict[int, list[store.Delivered]] = {}
        self._group_started: dict[int, float] = {}
        #: One client per endpoint, kept across turns (keep-alive).
        self._clients: dict[int, httpx.AsyncClient] = {}
        #: How receivers' certificates are verified (the system's CAs; tests give their own).
        self._tls = tls or ssl.create_default_context()

    async def run_once(self) -> int:
        now = self.clock.now()
        if not await self.db.run_read(store.any_due, now):
            return 0
        claimed = await self.db.run_write(store.claim_due, now, self.concurrency, self.lease)
        for endpoint in claimed:
            self._held[endpoint["id"]] = endpoint["claimed_until"]
        done = await asyncio.gather(*(self._turn(e) for e in claimed), return_exceptions=True)
        handled = 0
        for endpoint, result in zip(claimed, done, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "webhook %s: turn failed: %s: %s",
                    endpoint["id"],
                    type(result).__name__,
                    result,
                )
                continue
            handled += result
        return handled

    async def hand_back(self) -> None:
        """Write the groups a stop cut short and release every claim still held.

        Another process takes over at once; what was posted but not written is
        written here while the claim is still ours (else it is sent again).
        """
        held, self._held = list(self._held.items()), {}
        groups, self._groups = self._groups, {}
        if held:
            await self.db.run_write(self._flush_and_release, held, groups)

    async def close(self) -> None:
        """Close the endpoints' kept-alive clients."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def _client(self, webhook_id: int) -> httpx.AsyncClient:
        """The endpoint's client, kept across turns so its connection stays alive.

        Past ``CLIENTS_KEPT`` the oldest client of an endpoint not being served is closed.
        """
        client = self._clients.pop(webhook_id, None)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                verify=self._tls, follow_redirects=False, trust_env=False, timeout=self.timeout
            )
        self._clients[webhook_id] = client  # last: the most recently used
        idle = [w for w in self._clients if w not in self._held]
        for victim in idle[: max(0, len(self._clients) - CLIENTS_KEPT)]:
            await self._clients.pop(victim).aclose()
        return client

    def _flush_and_release(
        self,
        conn: Connection,
        held: list[tuple[int, datetime]],
        groups: dict[int, list[store.Delivered]],
    ) -> None:
        for webhook_id, until in held:
            group = groups.get(webhook_id)
            if group:
                store.record_delivered(
                    conn, webhook_id=webhook_id, held=until, group=group, renew_to=until
                )
        store.release(conn, held)

    async def _turn(self, endpoint: dict[str, Any]) -> int:
        """Deliver the endpoint's due deliveries in order until one fails; how many attempts.

        Deliveries are read in batches (one query each) and their 2xx written
        in groups (:meth:`_flush`): every ``GROUP`` deliveries or ``GROUP_WAIT``
        seconds, with a failure, and at the end of the turn together with the
        release.  The claim is this turn's alone (the database gave it to one
        claimer), so only this turn touches ``_held``/``_groups`` of its endpoint.
        """
        webhook_id = endpoint["id"]
        client = await self._client(webhook_id)
        signers: dict[str, Webhook] = {}
        self._groups[webhook_id] = []
        attempts = 0
        last_id = 0
        try:
            while attempts < PER_TURN and not self.stopping and webhook_id in self._held:
                batch = await self.db.run_read(
                    partial(
                        store.due_batch,
                        webhook_id=webhook_id,
                        now=self.clock.now(),
                        after=last_id,
                        limit=min(BATCH, PER_TURN - attempts),
                    )
                )
                if not batch:
                    break
                for delivery, event in batch:
                    if self.stopping or webhook_id not in self._held:
                        break
                    attempts += 1
                    last_id = delivery["id"]
                    if not await self._attempt(client, signers, endpoint, delivery, event):
                        return attempts
                else:
                    continue
                break
        finally:
            # Written and released before forgotten: a stop that cuts this short leaves
            # both in ``_held``/``_groups`` for :meth:`hand_back`.
            held = self._held.get(webhook_id)
            if held is not None:
                group = self._groups.get(webhook_id, [])
                await self.db.run_write(
                    self._flush_and_release, [(webhook_id, held)], {webhook_id: group}
                )
                self._held.pop(webhook_id, None)
            self._groups.pop(webhook_id, None)
            self._group_started.pop(webhook_id, None)
        return attempts

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        signers: dict[str, Webhook],
        endpoint: dict[str, Any],
        delivery: dict[str, Any],
        event: Event,
    ) -> bool:
        """POST one delivery; True to go on with the endpoint's next.

        A 2xx joins the endpoint's group (written by :meth:`_flush` when due);
        a failure is written at once, together with the group before it.
        """
        at = self.clock.now()
        body = event_body(event)
        headers = signed_headers(
            signing_secrets(endpoint, at), message_id(event), at, body, signers=signers
        )
        attempt = await post(
            client,
            endpoint["url"],
            body,
            headers,
            timeout=self.timeout,
            allow_private=self.allow_private,
        )
        WEBHOOK_ATTEMPTS.labels(str(attempt.outcome)).inc()
        webhook_id = endpoint["id"]
        held = self._held[webhook_id]
        done = self.clock.now()
        group = self._groups[webhook_id]
        if attempt.outcome == Outcome.DELIVERED:
            assert attempt.status is not None
            group.append(store.Delivered(delivery, done, attempt.status, attempt.entry(at)))
            if len(group) == 1:
                self._group_started[webhook_id] = time.monotonic()
            waited = time.monotonic() - self._group_started.get(webhook_id, 0.0)
            if len(group) >= GROUP or waited >= GROUP_WAIT:
                return await self._flush(webhook_id, held)
            return True
        self._groups[webhook_id] = []
        await self.db.run_write(
            self._record_failure, endpoint, group, delivery, held, done, attempt, at
        )
        self._held.pop(webhook_id, None)
        return False

    async def _flush(self, webhook_id: int, held: datetime) -> bool:
        """Write the endpoint's group of 2xx and renew its claim; False when the claim is lost."""
        group, self._groups[webhook_id] = self._groups[webhook_id], []
        renewed = self.clock.now() + self.lease
        kept = await self.db.run_write(
            partial(
                store.record_delivered,
                webhook_id=webhook_id,
                held=held,
                group=group,
                renew_to=renewed,
            )
        )
        if kept:
            self._held[webhook_id] = renewed
        else:
            self._held.pop(webhook_id, None)
        return kept

    def _record_failure(
        self,
        conn: Connection,
        endpoint: dict[str, Any],
        group: list[store.Delivered],
        delivery: dict[str, Any],
        held: datetime,
        now: datetime,
        attempt: Attempt,
        started: datetime,
    ) -> None:
        """Write the 2xx before it, count the failed attempt, schedule the retry, and disable
        a long-failing endpoint (one transaction)."""
        if group and not store.record_delivered(
            conn, webhook_id=endpoint["id"], held=held, group=group, renew_to=held
        ):
            return
        error = attempt.error or "failed"
        since = store.record_failed(
            conn,
            delivery,
            held=held,
            at=now,
            status=attempt.status,
            error=error,
            next_attempt_at=now + self.policy.delay(delivery["attempts"] + 1),
            entry=attempt.entry(started),
        )
        if since is None or not self.policy.gives_up(since, now):
            return
        pending = store.disable(conn, endpoint["id"], now)
        if pending is None:
            return
        log.warning(
            "webhook %s disabled: failing since %s (%s)", endpoint["id"], since.isoformat(), error
        )
        events.append_sync(
            conn,
            [
                payloads.webhook_disabled(
                    endpoint["org_id"],
                    webhook_id=endpoint["id"],
                    url=endpoint["url"],
                    failing_since=since,
                    last_error=error,
                    pending=pending,
                    at=now,
                )
            ],
        )
