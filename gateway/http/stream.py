"""``GET /api/v1/stream``: the rep's live signals as Server-Sent Events (seed 004's
メールマグネット and セールスシグナル).

A signal is a moment a rep acts on, read from the event log:

========== ==========================================================================
kind       from
========== ==========================================================================
received   ``email.filed``, incoming, filed on at least one record (mail from a lead …)
replied    ``email.replied`` (a record answered one of our sends)
opened     ``email.opened`` with verdict ``human`` (machine opens never)
clicked    ``email.clicked`` with verdict ``human``
bounced    ``email.bounced`` of one of our sends
========== ==========================================================================

**Whom it concerns** (:func:`audience`): the mail's owner (the user who sent
the send, or whose mailbox or dropbox the mail came through; for a reply, also
the user who sent what it answers) and the owners of the records it is about
(a lead's owner hears that the lead wrote, even through a colleague's
mailbox).  Each of them gets it only if the sharing rules let them see that
mail (:func:`gateway.receive.mailboxes.sharing.sees_event`): a colleague's
private mail never reaches a record owner, CRM-sent mail is public, unshared
(excluded-domain) mail is its owner's only — a send whose To or a CC sits in an
excluded domain included, whose opens, clicks, bounces and replies reach its
sender alone (:func:`gateway.http.events.event_rules`, as the event log).
Other orgs' events are never read for a stream (every statement names the org).

**One poller per process** (:class:`SignalHub`, the ``signals`` runner of the
``http`` role) reads the log every ``poll_interval`` (0.25 s) for every org
with a stream open — one ``max(id)`` and, when the log moved, one range
statement over ``ix_events_org_id``, whatever the number of streams — and
fans each signal out to the streams of the users it concerns.  An idle
process (no stream open) does not poll at all.

**Resuming**: every message's ``id:`` is the event's id.  ``Last-Event-ID``
(or ``?after=`` for clients that cannot set headers; the header wins, as a
browser's ``EventSource`` reconnects with the header to the same URL) replays
what the user missed after that id — at most :data:`REPLAY_MAX` signals and
:data:`REPLAY_WINDOW` back, the newest when more — then goes live without a
gap or a repeat: the replay ends exactly where live delivery starts (the
poller's cursor when the stream subscribed).  No id: from now.  An id that is
not a non-negative 64-bit integer is a ``400``; an id past the log's end means
now.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy.ext.asyncio import AsyncConnection
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.clock import Clock, SystemClock
from gateway.http.errors import ApiError
from gateway.http.events import event_rules
from gateway.http.resource import Resource
from gateway.runner import LoopRunner
from storage import orgs, signals
from storage.db import Database
from storage.events import Event, EventType
from templates.render import full_name

log = logging.getLogger("mailgate.stream")

#: Open streams one user may hold in one process; the next gets ``429 too_many_streams``.
MAX_STREAMS_PER_USER = 5
#: A replay after ``Last-Event-ID`` gives at most this many signals (the newest) …
REPLAY_MAX = 1000
#: … from at most this far back …
REPLAY_WINDOW = timedelta(days=7)
#: … reading at most this many of the org's candidate events (opens of every rep included).
REPLAY_SCAN_MAX = 20_000
REPLAY_PAGE = 500
#: Signal-type events one poll reads at most; more and the next poll follows at once.
POLL_BATCH = 1000
#: Signals waiting for one slow client; past it the stream ends and the client resumes
#: with ``Last-Event-ID`` (memory stays bounded whatever the client does).
QUEUE_MAX = 2000
#: Keep-alive comment every this many seconds (proxies drop silent connections).
PING_SECONDS = 15
MAX_EVENT_ID = 2**63 - 1


class SignalKind(StrEnum):
    """The ``event:`` of a stream message."""

    RECEIVED = "received"
    REPLIED = "replied"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"


#: Signals about one of our sends (``send_id`` names it).
_SEND_KINDS = frozenset(
    {SignalKind.REPLIED, SignalKind.OPENED, SignalKind.CLICKED, SignalKind.BOUNCED}
)
#: Signals about a filed message (``message_id`` is its ``messages`` id, not a header).
_FILED_KINDS = frozenset({SignalKind.RECEIVED, SignalKind.REPLIED})
#: What :func:`record_keys` falls back to before the details are read: the event's own names.
_NO_DETAILS = signals.Details()
RecordKey = tuple[str, int]


def kind_of(event_type: str, data: Mapping[str, Any]) -> SignalKind | None:
    """Which signal an event is, or None (machine verdicts, outgoing or unlinked mail …)."""
    if event_type == EventType.EMAIL_FILED:
        incoming = data.get("direction") == "incoming" and bool(data.get("records"))
        return SignalKind.RECEIVED if incoming else None
    if event_type == EventType.EMAIL_REPLIED:
        return SignalKind.REPLIED
    if event_type in (EventType.EMAIL_OPENED, EventType.EMAIL_CLICKED):
        if data.get("verdict") != "human":
            return None
        return SignalKind.OPENED if event_type == EventType.EMAIL_OPENED else SignalKind.CLICKED
    if event_type == EventType.EMAIL_BOUNCED and isinstance(data.get("send_id"), int):
        return SignalKind.BOUNCED
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def record_keys(
    kind: SignalKind, data: Mapping[str, Any], details: signals.Details
) -> list[RecordKey]:
    """The (module, id) records a signal is about, in the order it shows them.

    Received mail: the records it was filed on.  A send's signal: the send's
    record (the event's ``module``/``record_id`` when the send row is gone) and
    the deal it was sent from.
    """
    if kind is SignalKind.RECEIVED:
        found = [
            (r["module"], r["id"])
            for r in data.get("records") or ()
            if isinstance(r, Mapping) and isinstance(r.get("module"), str) and _int(r.get("id"))
        ]
        return list(dict.fromkeys(found))
    send = details.sends.get(_int(data.get("send_id")) or -1)
    found: list[RecordKey] = []
    if send is not None and send["module"] and send["record_id"] is not None:
        found.append((send["module"], send["record_id"]))
    elif isinstance(data.get("module"), str) and _int(data.get("record_id")) is not None:
        found.append((data["module"], data["record_id"]))
    if send is not None and send["deal_id"] is not None:
        found.append(("deals", send["deal_id"]))
    return list(dict.fromkeys(found))


def audience(kind: SignalKind, data: Mapping[str, Any], details: signals.Details) -> set[int]:
    """Users a signal concerns, before sharing: the mail's owner(s) and the records' owners."""
    found: list[int | None] = [_int(data.get("user_id"))]
    if kind in _SEND_KINDS:
        send = details.sends.get(_int(data.get("send_id")) or -1)
        if send is not None:
            found.append(send["user_id"])
    for key in record_keys(kind, data, details):
        record = details.records.get(key)
        if record is not None:
            found.append(record["owner_id"])
    return {uid for uid in found if uid is not None}


def record_name(module: str, row: Mapping[str, Any], locale: str) -> str:
    if module == "deals":
        return str(row.get("name") or "")
    return full_name(row.get("first_name"), row.get("last_name"), locale)


def payload(event: Event, kind: SignalKind, details: signals.Details) -> dict[str, Any]:
    """The ``data:`` of one stream message (the README's *Live signals* lists its fields)."""
    data = event.data
    send_id = _int(data.get("send_id"))
    send = details.sends.get(send_id or -1)
    message_pk = _int(data.get("message_id")) if kind in _FILED_KINDS else None
    message = details.messages.get(message_pk or -1)
    records = []
    for module, rid in record_keys(kind, data, details):
        row = details.records.get((module, rid))
        name = record_name(module, row, details.locale) if row else None
        records.append({"module": module, "id": rid, "name": name})
    if kind is SignalKind.RECEIVED:
        subject, counterpart = data.get("subject"), message["from_addr"] if message else None
    elif kind is SignalKind.REPLIED:
        subject = message["subject"] if message else (send["subject"] if send else None)
        counterpart = data.get("from")
    else:
        subject = send["subject"] if send else None
        counterpart = data.get("email") if kind is SignalKind.BOUNCED else data.get("to")
    body: dict[str, Any] = {
        "id": event.id,
        "at": event.at.isoformat(),
        "kind": str(kind),
        "record": records[0] if records else None,
        "records": records,
        "subject": subject,
        "counterpart": counterpart,
        "send_id": send_id,
        "message_id": message_pk,
        "user_id": _int(data.get("user_id")),
    }
    if kind is SignalKind.CLICKED:
        body["url"] = data.get("url")
    if kind is SignalKind.BOUNCED:
        body["bounce_type"] = data.get("type")
    return body


@dataclass(frozen=True, slots=True)
class Signal:
    """One signal, with the users (of its org) allowed to receive it."""

    id: int
    org_id: int
    kind: SignalKind
    viewers: frozenset[int]
    body: dict[str, Any]

    def message(self) -> ServerSentEvent:
        data = json.dumps(self.body, ensure_ascii=False, separators=(",", ":"))
        return ServerSentEvent(data=data, event=str(self.kind), id=str(self.id))


async def build_signals(conn: AsyncConnection, org_id: int, found: Iterable[Event]) -> list[Signal]:
    """The signals among one org's events (in their order), each with who may see it.

    Three statements at most (sends, messages, records) plus the org's sharing
    rules, and only when the events hold a candidate: the common tick, opens
    judged machine and mail going out, reads nothing more.
    """
    candidates = [(e, k) for e in found if (k := kind_of(e.type, e.data)) is not None]
    if not candidates:
        return []
    details = await signals.details(
        conn,
        org_id,
        send_ids=(_int(e.data.get("send_id")) for e, _ in candidates),
        message_ids=(_int(e.data.get("message_id")) for e, k in candidates if k in _FILED_KINDS),
        # Without details, what the events name themselves; details() adds the sends' records.
        records=(key for e, k in candidates for key in record_keys(k, e.data, _NO_DETAILS)),
    )
    rules = await event_rules(conn, org_id, (e.data for e, _ in candidates))
    out = []
    for event, kind in candidates:
        viewers = frozenset(
            uid
            for uid in audience(kind, event.data, details)
            if rules.sees(uid, event.type, event.data)
        )
        if viewers:
            out.append(Signal(event.id, org_id, kind, viewers, payload(event, kind, details)))
    return out


class TooManyStreams(Exception):
    """The user already holds :data:`MAX_STREAMS_PER_USER` streams in this process."""


class Subscription:
    """One open stream: what the poller hands it, waiting for the client to take it."""

    def __init__(self, hub: SignalHub, user_id: int, org_id: int, start: int) -> None:
        self.hub, self.user_id, self.org_id = hub, user_id, org_id
        #: The poller's cursor when the stream subscribed: live signals are all after it.
        self.start = start
        self._queue: asyncio.Queue[Signal | None] = asyncio.Queue()
        self.ended = False
        self.closed = False

    def offer(self, signal: Signal) -> None:
        if self.ended:
            return
        if self._queue.qsize() >= QUEUE_MAX:
            log.warning(
                "stream of user %d fell %d signals behind; ending it", self.user_id, QUEUE_MAX
            )
            self.end()
            return
        self._queue.put_nowait(signal)

    def end(self) -> None:
        """No more signals: the stream ends once the client has what is queued."""
        if not self.ended:
            self.ended = True
            self._queue.put_nowait(None)

    async def next(self) -> Signal | None:
        return await self._queue.get()

    def close(self) -> None:
        """Give the stream's slot back (idempotent: the generator and the response both call)."""
        if not self.closed:
            self.closed = True
            self.hub.unsubscribe(self)


class SignalHub(LoopRunner):
    """The process's one poller of the event log for live signals, fanning out to streams.

    Subscribing takes the round lock, so a stream joins between two polls:
    the cursor it starts from is exactly where the next poll begins, and the
    org set a poll reads is the one it was started with (no event of a newly
    watched org can fall between the replay and live delivery).
    """

    name = "signals"
    poll_interval = 0.25
    #: With no stream open, the loop sleeps (a subscription wakes it).
    idle_poll = 60.0

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock | None = None,
        poll_interval: float | None = None,
        max_streams_per_user: int = MAX_STREAMS_PER_USER,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.db = db
        self.clock = clock or SystemClock()
        self.max_streams_per_user = max_streams_per_user
        self.cursor = 0
        self._by_org: dict[int, set[Subscription]] = {}
        self._per_user: Counter[int] = Counter()
        #: Polls run and log statements they made (the README's measurement; a test checks
        #: the statements do not grow with the number of streams).
        self.polls = 0
        self.statements = 0

    # -- streams ----------------------------------------------------------------

    def streams_of(self, user_id: int) -> int:
        """Open streams of one user in this process (the per-user limit counts these)."""
        return self._per_user.get(user_id, 0)

    async def subscribe(self, user_id: int, org_id: int) -> Subscription:
        async with self._round_lock:
            if self._per_user[user_id] >= self.max_streams_per_user:
                raise TooManyStreams
            if not self._by_org:
                # Nobody was listening, so the cursor stood still: "now" is the log's end.
                async with self.db.connect() as conn:
                    self.cursor = await signals.last_id(conn)
            sub = Subscription(self, user_id, org_id, self.cursor)
            self._by_org.setdefault(org_id, set()).add(sub)
            self._per_user[user_id] += 1
        self.wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._by_org.get(sub.org_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._by_org[sub.org_id]
        self._per_user[sub.user_id] -= 1
        if self._per_user[sub.user_id] <= 0:
            del self._per_user[sub.user_id]

    def end_streams(self) -> None:
        """End every open stream (shutdown): uvicorn's graceful stop is not held open."""
        for subs in list(self._by_org.values()):
            for sub in list(subs):
                sub.end()

    async def replay(self, sub: Subscription, after: int) -> list[Signal]:
        """What ``sub``'s user missed after ``after``, up to where live delivery begins."""
        since = self.clock.now() - REPLAY_WINDOW
        newest_first: list[Signal] = []
        before, scanned = sub.start + 1, 0
        async with self.db.connect() as conn:
            while len(newest_first) < REPLAY_MAX and scanned < REPLAY_SCAN_MAX:
                page = await signals.read_back(
                    conn,
                    org_id=sub.org_id,
                    after=after,
                    before=before,
                    since=since,
                    limit=REPLAY_PAGE,
                )
                if not page:
                    break
                scanned += len(page)
                before = page[-1].id
                for signal in await build_signals(conn, sub.org_id, page):
                    if sub.user_id in signal.viewers:
                        newest_first.append(signal)
        return newest_first[:REPLAY_MAX][::-1]

    # -- the poller -------------------------------------------------------------

    def idle_wait(self) -> float:
        return self.poll_interval if self._by_org else self.idle_poll

    async def run_once(self) -> int:
        if not self._by_org:
            return 0
        async with self.db.connect() as conn:
            upto = await signals.last_id(conn)
            self.polls += 1
            self.statements += 1
            if upto <= self.cursor:
                return 0
            found = await signals.read_new(
                conn, org_ids=list(self._by_org), after=self.cursor, upto=upto, limit=POLL_BATCH
            )
            self.statements += 1
            if len(found) == POLL_BATCH:
                upto = found[-1].id  # more to read: the next round follows at once
            by_org: dict[int, list[Event]] = {}
            for event in found:
                by_org.setdefault(event.org_id, []).append(event)
            ready = [
                s for org_id, evs in by_org.items() for s in await build_signals(conn, org_id, evs)
            ]
        ready.sort(key=lambda s: s.id)
        for signal in ready:
            for sub in list(self._by_org.get(signal.org_id, ())):
                if sub.user_id in signal.viewers:
                    sub.offer(signal)
        self.cursor = upto
        return len(found)

    async def close(self) -> None:
        self.end_streams()


def end_streams(services: Any) -> None:
    """End the process's open streams, if it runs the poller (``serve``'s HTTP stop)."""
    hub = services.running("signals")
    if isinstance(hub, SignalHub):
        hub.end_streams()


def parse_event_id(raw: str | None) -> int | None:
    """``Last-Event-ID`` / ``?after=``: None when absent, else a non-negative 64-bit id (400)."""
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 19 or int(value) > MAX_EVENT_ID:
        raise ApiError(
            400, "bad_last_event_id", "Last-Event-ID (or after) must be an event id from the stream"
        )
    return int(value)


class _Stream(EventSourceResponse):
    """An event stream that gives its slot back however the response ends."""

    def __init__(self, sub: Subscription, content: AsyncIterator[ServerSentEvent]) -> None:
        super().__init__(content, ping=PING_SECONDS, headers={"Cache-Control": "no-store"})
        self.sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.sub.close()


class StreamApi(Resource):
    def __init__(self, db: Database, hub: LoopRunner) -> None:
        super().__init__(db)
        assert isinstance(hub, SignalHub), "the services' signals runner is a SignalHub"
        self.hub = hub

    def routes(self) -> list[Route]:
        return [Route("/api/v1/stream", self.stream, methods=["GET"])]

    async def caller(self, request: Request) -> dict[str, Any]:
        """The token's user: ``Authorization: Bearer`` or, for ``EventSource``, ``?access_token=``.

        The query token is removed from the request's query string first, so
        uvicorn's access log (``MAILGATE_HTTP_ACCESS_LOG``) never writes it.
        """
        pairs = parse_qsl(
            request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
        )
        token = next((v for k, v in pairs if k == "access_token"), None)
        if token is not None:
            kept = [(k, v) for k, v in pairs if k != "access_token"]
            request.scope["query_string"] = urlencode(kept).encode("latin-1")
        if request.headers.get("authorization") or token is None:
            return await self.user(request)
        async with self.db.connect() as conn:
            user = await orgs.user_by_api_token(conn, token.strip())
        if user is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API token")
        return user

    async def stream(self, request: Request) -> _Stream:
        user = await self.caller(request)
        try:
            return await open_stream(self.hub, user, request)
        except TooManyStreams:
            raise ApiError(
                429,
                "too_many_streams",
                f"at most {self.hub.max_streams_per_user} open streams per user; close one",
            ) from None


async def open_stream(hub: SignalHub, user: Mapping[str, Any], request: Request) -> _Stream:
    """``user``'s signals as an event stream, resumed after ``Last-Event-ID`` (or
    ``?after=``): the one stream of the API and the dashboard's feed, however the
    caller was authenticated.  :class:`TooManyStreams` past the per-user limit; a
    bad id is a ``400`` :class:`ApiError`."""
    after = parse_event_id(request.headers.get("last-event-id"))
    if after is None:
        after = parse_event_id(request.query_params.get("after"))
    sub = await hub.subscribe(user["id"], user["org_id"])
    return _Stream(sub, _messages(hub, sub, after))


async def _messages(
    hub: SignalHub, sub: Subscription, after: int | None
) -> AsyncIterator[ServerSentEvent]:
    try:
        last = sub.start
        if after is not None and after < sub.start:
            for signal in await hub.replay(sub, after):
                yield signal.message()
        while (signal := await sub.next()) is not None:
            if signal.id > last:
                last = signal.id
                yield signal.message()
    finally:
        sub.close()
