"""Running the roles: SMTP receiver, HTTP server (and, as they land, workers and pollers).

Every role runs in one event loop by default; ``--only`` picks a subset so
roles can be split across processes and machines sharing one PostgreSQL.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from gateway.config import Settings
from gateway.http.app import create_app
from gateway.receive.smtp import DropboxHandler, start_smtp
from gateway.services import Services

log = logging.getLogger("mailgate.serve")

ROLES = ("smtp", "http", "worker", "imap", "sync")


@dataclass
class Running:
    services: Services
    smtp_port: int | None = None
    http_port: int | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    mailboxes: Any = None  # the imap role's MailboxSupervisor


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
    if not only:
        return set(ROLES)
    roles = {r.strip() for r in only.split(",") if r.strip()}
    unknown = roles - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(sorted(unknown))}; known: {', '.join(ROLES)}")
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
    """Serve until cancelled or signalled; ``started`` receives the :class:`Running` handle."""
    # aiosqlite runs SQLite in a thread; with the default 5 ms GIL switch interval every
    # query waited behind the busy event loop (measured: 3 trivial queries took 12-19 ms).
    sys.setswitchinterval(0.0005)
    services = Services.build(settings)
    await services.start()
    # What is alive at start-up (modules, metadata, the app) lives as long as the process.
    # Freezing it spares the cyclic collector re-scanning it on every full collection, which
    # the batch writers trigger often: each scan held the GIL ~100 ms and was the tracking
    # pixel's p99 (107-163 ms -> ~30 ms under wrk).
    gc.freeze()
    running = Running(services)
    tasks: list[asyncio.Task] = []
    smtp_server = None
    try:
        if "smtp" in roles:
            host, port = settings.smtp_host_port
            handler = DropboxHandler(
                services.db,
                services.spool,
                mail_domain=settings.mail_domain,
                ingest=services.ingest,
                bounces=services.bounces.wakeup.set,
            )
            smtp_server = await start_smtp(
                handler,
                host,
                port,
                hostname=settings.smtp_hostname,
                max_size=settings.max_message_size,
            )
            running.smtp_port = smtp_server.sockets[0].getsockname()[1]
        if "imap" in roles:
            from gateway.receive.mailboxes import MailboxService, MailboxSupervisor

            service = MailboxService(services.db, services.spool, settings, ingest=services.ingest)
            supervisor = MailboxSupervisor(service)
            running.mailboxes = supervisor
            tasks.append(asyncio.create_task(supervisor.run(running.stopped), name="imap"))
        if "worker" in roles:
            await services.ingest.start()
            tasks.append(asyncio.create_task(services.bounces.run(running.stopped), name="bounces"))
        if "http" in roles:
            host, port = settings.http_host_port
            sock = _bind(host, port)
            running.http_port = sock.getsockname()[1]
            config = uvicorn.Config(
                create_app(services),
                log_level="warning",
                access_log=settings.http_access_log,
                lifespan="off",
                server_header=False,
            )
            server = uvicorn.Server(config)
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
            tasks.append(asyncio.create_task(server.serve(sockets=[sock]), name="http"))
        if "worker" in roles:
            services.relay_worker = start_relay_worker(services)
            await services.relay_worker.start()
        if started is not None and not started.done():
            started.set_result(running)
        await running.stopped.wait()
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if smtp_server is not None:
            smtp_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(smtp_server.wait_closed(), 2)
        await services.stop()


class _FollowClock:
    """The services' clock as it is now (tests swap ``services.clock`` while running)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def now(self):
        return self.services.clock.now()


def start_relay_worker(services: Services):
    """The outbound relay worker, configured from the settings (MAILGATE_RELAY_URL …)."""
    from gateway.sending.outcomes import RetryPolicy
    from gateway.sending.relay import RelayConfig, RelayWorker

    s = services.settings
    return RelayWorker(
        services.db,
        RelayConfig.parse(s.relay_url),
        mail_domain=s.mail_domain,
        pool_size=s.relay_pool_size,
        timeout=s.relay_timeout,
        policy=RetryPolicy(s.relay_retry_base, s.relay_retry_cap, s.relay_give_up_after),
        clock=_FollowClock(services),
        poll_interval=s.relay_poll_interval,
        local_hostname=s.smtp_hostname,
    )


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
