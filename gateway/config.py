"""Configuration: environment variables, a ``.env`` file, or ``--config FILE.toml``.

The names are part of the public contract (CONTRACT.md "Configuration").  The
secret key is generated once into the data directory when not given, so a
fresh ``make run`` works with nothing set and links survive restarts.
"""

from __future__ import annotations

import secrets
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILGATE_", env_file=".env", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./var/mailgate.db"
    data_dir: Path = Path("./var")
    smtp_listen: str = "127.0.0.1:2525"
    http_listen: str = "127.0.0.1:8080"
    public_url: str = "http://127.0.0.1:8080"
    mail_domain: str = "mailgate.localhost"
    secret_key: str = ""
    #: Older keys that still verify tracking links after a rotation (comma separated).
    secret_key_grace: str = ""
    relay_url: str = "smtp://127.0.0.1:25"
    #: Largest message the SMTP receiver accepts, in bytes (552 5.3.4 above).
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    #: Hostname announced in the SMTP greeting; given so aiosmtpd never does a DNS lookup.
    smtp_hostname: str = "mailgate.localhost"
    #: uvicorn's access log costs ~35% of tracking throughput; off unless asked for.
    http_access_log: bool = False
    #: Outbound relay: connections kept open and reused by the worker.
    relay_pool_size: int = Field(default=4, ge=1, le=64)
    #: Seconds per SMTP command before the relay counts as unreachable (then: retry).
    relay_timeout: float = Field(default=30.0, gt=0)
    #: First retry delay after a temporary failure; doubles per attempt up to the cap.
    relay_retry_base: float = Field(default=60.0, gt=0)
    relay_retry_cap: float = Field(default=3600.0, gt=0)
    #: A send still not accepted by the relay this long after it was queued fails.
    relay_give_up_after: float = Field(default=3 * 86400.0, gt=0)
    #: How often an idle worker looks for due sends (it is also woken by the API).
    relay_poll_interval: float = Field(default=1.0, gt=0)
    #: Seconds a claimed send stays the relay worker's: after a crash, others wait this long.
    #: A clean stop hands claims back at once; a live worker renews its claims every third
    #: of it, so a relay slower than the lease never gets a send from two workers.
    relay_lease: float = Field(default=60.0, gt=0)
    #: Leads/contacts one filed message may be linked to or create; past it the addresses
    #: stay on the message unlinked (a 100,000-address To: must not stall every org).
    max_records_per_message: int = Field(default=200, ge=1, le=100_000)
    #: On SIGTERM/SIGINT: seconds the whole stop may take (listeners answer what is open, then
    #: runners finish their round or hand back their claims) before what is left is cut.
    stop_deadline: float = Field(default=10.0, ge=0)
    #: Optional DKIM signing of outbound mail (all three must be set).
    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_file: Path | None = None
    #: Mailbox hosts and webhook URLs on loopback, private or link-local addresses (tests,
    #: single-host set-ups); off, so a user cannot probe the server's network.
    allow_private_targets: bool = False
    #: Seconds between polls of a POP3 mailbox (POP3 has no IDLE; each poll is a new login).
    pop_interval: float = Field(default=60.0, gt=0)
    #: Webhooks: first retry delay (seconds) after a failed delivery; doubles per attempt
    #: up to ``webhook_retry_cap``.
    webhook_retry_base: float = Field(default=10.0, gt=0)
    webhook_retry_cap: float = Field(default=3600.0, gt=0)
    #: Seconds one delivery may take (connect, send, first bytes of the answer).
    webhook_timeout: float = Field(default=10.0, gt=0)
    #: An endpoint failing (no 2xx) for this many seconds is disabled (5 days, as Svix).
    webhook_disable_after: float = Field(default=5 * 86400.0, gt=0)
    #: Endpoints delivered to at once by one ``webhook_delivery`` runner.
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    #: Bearer token Prometheus sends to scrape ``/metrics`` (its series name every org).
    #: Empty: only clients on loopback may read ``/metrics``.
    metrics_token: str = ""
    #: Operators of the installation (comma-separated user emails): the dashboard's quota
    #: page shows them every org at a glance, and /attention the bounce mail that belongs
    #: to no org.  Nobody else ever sees other orgs.
    operators: str = ""
    #: Template rendering budget (templates.render.RenderLimits), per message rendered:
    #: loop iterations plus filter calls and joins; the longest string an expression may
    #: build; all characters produced; wall-clock seconds.  Over a limit: 422 or 413.
    template_max_steps: int = Field(default=100_000, ge=100)
    template_max_string: int = Field(default=100_000, ge=1000)
    template_max_chars: int = Field(default=4_000_000, ge=10_000)
    template_render_seconds: float = Field(default=2.0, gt=0)
    # -- faults (#14) --
    #: Seconds stored mail claimed by an ingest runner stays its own: after a crash
    #: (kill -9, power cut) another runner files it once this has passed; a clean stop
    #: hands claims back at once.  Keep it above the slowest filing round (a batch of
    #: 100 messages takes well under a second).  Was a fixed 5 minutes.
    ingest_lease: float = Field(default=60.0, gt=0)

    # -- ops (#14): logs, readiness, the operations listener -----------------------------
    #: ``text`` (one readable line per event) or ``json`` (one JSON object per line).
    log_format: Literal["text", "json"] = "text"
    #: debug, info, warning or error.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``HOST:PORT`` for ``/healthz``, ``/readyz`` and ``/metrics`` in a process without the
    #: ``http`` role (an smtp, worker, imap or sync node); empty: no such listener.
    ops_listen: str = ""
    #: ``/readyz`` answers 503 once a runner of the process has failed every round for this
    #: many seconds (storage away, peer down); shorter outages stay ready.
    ready_failing_after: float = Field(default=30.0, ge=0)

    # -- scale (issue #14) --
    #: Seconds one ``imap`` process holds a mailbox's poller lease (``mailboxes.poller``);
    #: renewed every third of it while polling.  A process that dies lets it run out and
    #: another ``imap`` process takes the mailbox over within this time; a clean stop
    #: hands it over at once.
    poll_lease: float = Field(default=60.0, ge=0.3)

    @cached_property
    def smtp_host_port(self) -> tuple[str, int]:
        return split_listen(self.smtp_listen)

    @cached_property
    def http_host_port(self) -> tuple[str, int]:
        return split_listen(self.http_listen)

    @cached_property
    def ops_host_port(self) -> tuple[str, int] | None:
        return split_listen(self.ops_listen) if self.ops_listen else None

    @cached_property
    def operator_emails(self) -> frozenset[str]:
        return frozenset(e.strip().lower() for e in self.operators.split(",") if e.strip())

    def resolved_secret_keys(self) -> list[str]:
        """Signing key first, then the grace list; generated once into the data dir."""
        key = self.secret_key
        if not key:
            path = self.data_dir / "secret_key"
            if path.exists():
                key = path.read_text().strip()
            else:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                key = secrets.token_urlsafe(48)
                path.touch(mode=0o600)
                path.write_text(key)
        grace = [k.strip() for k in self.secret_key_grace.split(",") if k.strip()]
        return [key, *grace]


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → tuple; a clear error for anything else."""
    parts = urlsplit("//" + value)
    if parts.port is None or not parts.hostname:
        raise ValueError(f"listen address must be HOST:PORT, got {value!r}")
    return parts.hostname, parts.port


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Environment wins over the TOML file, explicit overrides over both."""
    values: dict[str, object] = {}
    if config_file is not None:
        data = tomllib.loads(config_file.read_text())
        values.update({k.lower().removeprefix("mailgate_"): v for k, v in data.items()})
    settings = Settings()
    env_set = settings.model_fields_set
    merged = {k: v for k, v in values.items() if k not in env_set}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**merged) if merged else settings
