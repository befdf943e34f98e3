"""A real mailgate (SMTP + HTTP on loopback ports) running in a background thread.

Tests talk to it over sockets exactly as users do: ``smtplib``/``swaks`` for
SMTP, ``httpx`` for HTTP.  Set-up calls (create an org, a user) run the same
functions the CLI runs, inside the server's own event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from gateway.config import Settings
from gateway.org import admin
from gateway.serve import Running, run
from storage.db import Database
from storage.migrate import upgrade

T = TypeVar("T")
MAIL_DOMAIN = "mailgate.test"


class MailgateServer:
    def __init__(self, database_url: str, data_dir: Path, **overrides: Any) -> None:
        overrides.setdefault("max_message_size", 2 * 1024 * 1024)
        # Open event streams would otherwise hold a test's shutdown for the full 10 s.
        overrides.setdefault("stop_deadline", 2.0)
        # The test Dovecot listens on loopback; tests of the refusal pass False.
        overrides.setdefault("allow_private_targets", True)
        self.settings = Settings(
            database_url=database_url,
            data_dir=data_dir,
            smtp_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            mail_domain=MAIL_DOMAIN,
            secret_key="test-secret-key",
            **overrides,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: Running | None = None
        self._task: asyncio.Future | None = None

    def start(self, roles: set[str] | None = None) -> MailgateServer:
        self.thread.start()

        async def boot() -> Running:
            db = Database(self.settings.database_url)
            await upgrade(db)
            await db.dispose()
            started = asyncio.get_running_loop().create_future()
            self._task = asyncio.ensure_future(
                run(self.settings, roles or {"smtp", "http", "worker", "sync"}, started=started)
            )
            done, _ = await asyncio.wait({started, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if not started.done():
                self._task.result()
            return started.result()

        self.running = self.call(boot())
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def drain(self, runner: str) -> int:
        """Run the named runner's rounds until one handles nothing (``relay``, ``bounces`` …)."""
        return self.call(self.running.services.runner(runner).drain())

    @property
    def db(self) -> Database:
        return self.running.services.db

    @property
    def smtp_port(self) -> int:
        return self.running.smtp_port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.running.http_port}"

    def drain_consumers(self) -> int:
        """Let the event consumers catch up with the log (e.g. suppressions after a bounce).

        Deterministic, no sleeping: it returns once every event committed before
        the call has been applied, including a round the running loop had begun.
        """
        from sync import CONSUMERS, drain_all

        services = self.running.services
        return self.call(drain_all([services.runner(c.name) for c in CONSUMERS]))

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until every stored message has been filed (SMTP answers before filing)."""
        from storage import inbound_store

        wait_until(
            lambda: self.call(self.db.run_read(inbound_store.count_pending)) == 0,
            timeout=timeout,
            interval=0.02,
        )

    def stop(self) -> None:
        if self.running is not None:
            self.loop.call_soon_threadsafe(self.running.stopped.set)
            try:
                asyncio.run_coroutine_threadsafe(
                    asyncio.wait_for(asyncio.shield(self._task), 10), self.loop
                ).result(15)
            except Exception:  # noqa: BLE001, S110
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # Set-up helpers -----------------------------------------------------------------
    def org(
        self,
        name: str,
        *,
        plan: str = "professional",
        domains: list[str] | None = None,
        timezone: str = "Asia/Tokyo",
    ) -> dict[str, Any]:
        return self.call(
            admin.create_org(self.db, name, plan=plan, timezone=timezone, domains=domains or [])
        )

    def user(
        self, org: dict[str, Any], email: str, name: str = "山田 太郎", **kw: Any
    ) -> dict[str, Any]:
        return self.call(
            admin.create_user(
                self.db, str(org["id"]), email, name=name, mail_domain=MAIL_DOMAIN, **kw
            )
        )

    def api(self, user: dict[str, Any]) -> httpx.Client:
        return httpx.Client(
            base_url=self.http_url,
            headers={"Authorization": f"Bearer {user['api_token']}"},
            timeout=30,
        )


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        time.sleep(interval)
