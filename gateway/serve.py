"""Running the roles, built from one table (:data:`ROLE_TABLE`).

A role is a listener (the SMTP receiver, the HTTP server) and/or runners
(:mod:`gateway.runner`) named in the table and built by
:mod:`gateway.services`.  Every role runs in one event loop by default;
``--only`` picks a subset so roles can be split across processes and machines
sharing one PostgreSQL.  SIGTERM/SIGINT stop accepting first, answer what is
open, then stop every runner, all within ``MAILGATE_STOP_DEADLINE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import uvicorn

import sync
from gateway.config import Settings
from gateway.http.app import create_app, create_ops_app
from gateway.http.stream import end_streams
from gateway.receive.smtp import DropboxHandler, start_smtp
from gateway.services import Services

log = logging.getLogger("mailgate.serve")

#: What stops a listener accepting (and waits, up to the deadline, for what it took on).
StopListening = Callable[[float], Awaitable[None]]


@dataclass
class Running:
    services: Services
    roles: frozenset[str] = frozenset()
    smtp_port: int | None = None
    http_port: int | None = None
    ops_port: int | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


async def listen_smtp(services: Services, running: Running) -> StopListening:
    """The dropbox and bounce receiver on ``MAILGATE_SMTP_LISTEN``."""
    settings = services.settings
    host, port = settings.smtp_host_port
    handler = DropboxHandler(
        services.db,
        services.spool,
        mail_domain=settings.mail_domain,
        ingest=services.runner("ingest"),
        bounces=partial(services.wake, "bounces"),
    )
    server = await start_smtp(
        handler, host, port, hostname=settings.smtp_hostname, max_size=settings.max_message_size
    )
    running.smtp_port = server.sockets[0].getsockname()[1]

    async def stop(deadline: float) -> None:
        # Refuse new connections; every open session is answered (its DATA finishes, then
        # 421) while the spool writer still runs: runners stop only after the listeners.
        await server.stop(deadline)

    return stop


def _uvicorn(
    app: object,
    sock: socket.socket,
    name: str,
    *,
    access_log: bool = False,
    grace: float | None = None,
    before_stop: Callable[[], None] | None = None,
) -> StopListening:
    """Serve ``app`` with uvicorn on ``sock`` in a task; what stops it gracefully.

    Stopping sets ``should_exit`` (stop accepting; requests in progress finish)
    and waits up to the deadline before cancelling.
    """
    config = uvicorn.Config(
        app,
        log_level="warning",
        # Logging is configured once for the process (gateway.logs), in its format.
        log_config=None,
        access_log=access_log,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=grace,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]), name=name)

    async def stop(deadline: float) -> None:
        server.should_exit = True  # stop accepting; requests in progress finish
        if before_stop is not None:
            before_stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), deadline)
        except TimeoutError:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    return stop


async def listen_http(services: Services, running: Running) -> StopListening:
    """The API and the tracking endpoints on ``MAILGATE_HTTP_LISTEN``."""
    settings = services.settings
    sock = _bind(*settings.http_host_port)
    running.http_port = sock.getsockname()[1]
    stop = _uvicorn(
        create_app(services),
        sock,
        "http",
        access_log=settings.http_access_log,
        grace=settings.stop_deadline,
        # Open event streams end now instead of holding the stop.
        before_stop=lambda: end_streams(services),
    )
    if settings.http_access_log:
        # uvicorn set its access logger to ``log_level`` (warning), which would silence the
        # INFO lines MAILGATE_HTTP_ACCESS_LOG asks for.
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    return stop


async def listen_ops(services: Services, running: Running) -> StopListening:
    """``/healthz``, ``/readyz``, ``/metrics`` on ``MAILGATE_OPS_LISTEN`` (no ``http`` role)."""
    host, port = services.settings.ops_host_port or ("127.0.0.1", 0)
    sock = _bind(host, port)
    running.ops_port = sock.getsockname()[1]
    return _uvicorn(create_ops_app(services), sock, "ops")


@dataclass(frozen=True, slots=True)
class Role:
    """What one role of ``serve --only`` starts: a listener (or none) and runners by name."""

    listener: Callable[[Services, Running], Awaitable[StopListening]] | None = None
    runners: tuple[str, ...] = ()


#: The roles: what each starts.  A runner named by several roles runs once.
#:
#: Receivers (``smtp``, ``imap``) run the ``spool``, which makes accepted mail
#: durable before they answer; filing it is the ``ingest`` runner's job, on
#: ``worker`` nodes.  Keeping filing out of the receiving process is what lets
#: receiving and filing use two cores (measured: ``smtp`` + ``worker`` as two
#: processes files the dropbox benchmark ~1.4x faster than one process); a
#: receiver in the same process wakes the ingest runner as it stores, one in
#: another process is found by the runner's 0.25 s poll.  A node that only
#: receives therefore needs a ``worker`` somewhere on the same database.
#: Tracking hits go the same way: ``http`` appends them raw to an inbox
#: (``tracking``), a ``worker`` judges them (``verdicts``).
ROLE_TABLE: dict[str, Role] = {
    "smtp": Role(listener=listen_smtp, runners=("spool",)),
    "http": Role(listener=listen_http, runners=("tracking", "signals")),
    "worker": Role(runners=("ingest", "relay", "bounces", "verdicts", "campaigns")),
    "imap": Role(runners=("spool", "mailboxes")),
    "sync": Role(runners=(*(consumer.name for consumer in sync.CONSUMERS), "webhook_delivery")),
}
ROLES = tuple(ROLE_TABLE)


def runners_for(roles: Iterable[str]) -> list[str]:
    """The runners the roles need, each once, in table order."""
    wanted = set(roles)
    names: list[str] = []
    for role, spec in ROLE_TABLE.items():
        if role in wanted:
            names.extend(n for n in spec.runners if n not in names)
    return names


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed (it comes with uvicorn[standard]), else asyncio's own loop.

    The SMTP and IMAP roles are bound by event-loop and socket overhead as much
    as by filing; uvloop's transports cut that.  ``MAILGATE_EVENT_LOOP=asyncio``
    keeps the standard loop (for debugging, or to compare).
    """
    if os.environ.get("MAILGATE_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def parse_roles(only: str | None) -> set[str]:
    """``--only smtp,worker`` → the roles; None (no ``--only``) → every role.

    Any combination, comma-separated (spaces and repeats allowed).  An unknown
    role, or an ``--only`` that names none (``--only ""``, ``--only ,``), is a
    ValueError with the known roles: a process that starts nothing would look
    healthy while doing no work.
    """
    if only is None:
        return set(ROLES)
    roles = {r.strip() for r in only.split(",") if r.strip()}
    unknown = roles - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(sorted(unknown))}; known: {', '.join(ROLES)}")
    if not roles:
        raise ValueError(f"--only names no role; known: {', '.join(ROLES)}")
    return roles


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio only sets TCP_NODELAY
    # when proto is TCP; without it every keep-alive response waits ~40 ms (Nagle +
    # delayed ACK) — measured 22 req/s on one connection instead of thousands.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


async def run(
    settings: Settings, roles: set[str], *, started: asyncio.Future | None = None
) -> None:
    """Serve until cancelled or ``Running.stopped`` is set; ``started`` receives the handle.

    Shutting down (:func:`stop_within`, all within ``MAILGATE_STOP_DEADLINE``):
    the listeners stop accepting (SMTP sessions in progress finish their
    command and get ``421``, HTTP requests in progress finish), then every
    runner is stopped — each may finish its round in what is left of the
    deadline and hands back what it holds — then the database is closed.
    """
    # aiosqlite runs SQLite in a thread; with the default 5 ms GIL switch interval every
    # query waited behind the busy event loop (measured: 3 trivial queries took 12-19 ms).
    sys.setswitchinterval(0.0005)
    services = Services.build(settings)
    running = Running(services, frozenset(roles))
    listening: list[StopListening] = []
    try:
        await services.start(runners_for(roles))
        for role, spec in ROLE_TABLE.items():
            if role in roles and spec.listener is not None:
                listening.append(await spec.listener(services, running))
        if settings.ops_listen and "http" not in roles:
            listening.append(await listen_ops(services, running))
        # What is alive at start-up (modules, metadata, the app) lives as long as the process.
        # Freezing it spares the cyclic collector re-scanning it on every full collection, which
        # the batch writers trigger often: each scan held the GIL ~100 ms and was the tracking
        # pixel's p99 (107-163 ms -> ~30 ms under wrk).
        gc.freeze()
        if started is not None and not started.done():
            started.set_result(running)
        await running.stopped.wait()
    finally:
        await stop_within(settings.stop_deadline, listening, services)


#: However long the listeners took, the runners get at least this to hand back their claims.
MIN_RUNNER_STOP = 1.0


async def stop_within(deadline: float, listening: list[StopListening], services: Services) -> None:
    """Stop in order, within one ``deadline`` for the whole process.

    The listeners first (SMTP sessions answered, HTTP requests finished), while
    the spool writer and the database still serve their last transactions;
    then the runners, with what is left of the deadline (at least
    :data:`MIN_RUNNER_STOP`), which finish their round or hand back their
    claims; then the database.
    """
    stop_by = time.monotonic() + deadline
    await asyncio.gather(*(stop(deadline) for stop in listening), return_exceptions=True)
    await services.stop(max(MIN_RUNNER_STOP, stop_by - time.monotonic()))


async def run_until_signal(settings: Settings, roles: set[str], on_start) -> None:
    loop = asyncio.get_running_loop()
    started: asyncio.Future = loop.create_future()
    task = asyncio.create_task(run(settings, roles, started=started))
    await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        await task  # it failed before listening: raise its error
        return
    running: Running = started.result()
    on_start(running)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, running.stopped.set)
    await task
