"""The composition root: what the roles of one process share, built once from the settings.

Settings, the database, the clock, the signers, and the runners by name.  A
runner is built the first time it is asked for (:meth:`Services.runner`), from
the factory registered under its name in :data:`RUNNERS`; ``serve`` starts
the ones its roles list (:mod:`gateway.serve`), tests drive any of them
directly (``services.runner("relay").drain()``), and the API wakes them
(:meth:`Services.wake`).  Business logic lives in the role packages, not here.

Every runner is given :attr:`Services.follow_clock`, which reads
:attr:`Services.clock` at each call: a test that swaps in a
:class:`~gateway.clock.FixedClock` moves every runner with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property

import sync
from gateway.clock import Clock, FollowClock, SystemClock
from gateway.config import Settings
from gateway.ingest.pipeline import IN_TRANSACTION, with_record_cap
from gateway.ingest.runner import IngestRunner
from gateway.ingest.spool import Spool
from gateway.runner import LoopRunner
from storage.db import Database
from tracking.endpoints import Tracking
from tracking.recorder import HitJudge, HitRecorder
from tracking.tokens import TokenSigner, keys_from_secrets

RunnerFactory = Callable[["Services"], LoopRunner]


@dataclass
class Services:
    settings: Settings
    db: Database
    #: "Now" for quota days, send scheduling, leases and verdicts; tests swap in a FixedClock.
    clock: Clock = field(default_factory=SystemClock)
    _runners: dict[str, LoopRunner] = field(default_factory=dict, repr=False)
    _started: list[LoopRunner] = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(settings=settings, db=Database(settings.database_url))

    # -- shared pieces ----------------------------------------------------------

    @cached_property
    def follow_clock(self) -> Clock:
        """:attr:`clock` as it is at each call (what runners are given)."""
        return FollowClock(self)

    @property
    def spool(self) -> Spool:
        """Where receivers (SMTP, IMAP) store accepted mail before they answer."""
        spool = self.runner("spool")
        assert isinstance(spool, Spool)
        return spool

    @cached_property
    def tracking(self) -> Tracking:
        """What the tracking endpoints share: the link signer and the hit recorder."""
        signer = TokenSigner(keys_from_secrets(self.settings.resolved_secret_keys()))
        recorder = self.runner("tracking")
        assert isinstance(recorder, HitRecorder)
        return Tracking(self.db, signer, recorder, self.settings.public_url)

    @cached_property
    def signer(self):
        """How outbound mail is addressed and signed (read once: the DKIM key file)."""
        from gateway.sending.submit import Signer

        s = self.settings
        key = s.dkim_key_file.read_bytes() if s.dkim_key_file else None
        return Signer(
            mail_domain=s.mail_domain,
            public_url=s.public_url,
            dkim_selector=s.dkim_selector,
            dkim_domain=s.dkim_domain,
            dkim_key=key,
            tracker=self.tracking.signer,
        )

    # -- runners ----------------------------------------------------------------

    def runner(self, name: str) -> LoopRunner:
        """The runner called ``name`` (built on first use); KeyError for an unknown name."""
        found = self._runners.get(name)
        if found is None:
            found = self._runners[name] = RUNNERS[name](self)
        return found

    def running(self, name: str) -> LoopRunner | None:
        """The runner called ``name`` if this process runs it, else None."""
        found = self._runners.get(name)
        return found if found is not None and found.running else None

    @property
    def started(self) -> list[LoopRunner]:
        """The runners this process started, in order (``/readyz`` reports each)."""
        return list(self._started)

    def wake(self, name: str) -> None:
        """Tell the runner there is new work; nothing when this process does not run it."""
        found = self.running(name)
        if found is not None:
            found.wake()

    # -- life cycle -------------------------------------------------------------

    async def start(self, runners: Iterable[str] = ()) -> None:
        """Start the runners named, in order."""
        for name in runners:
            runner = self.runner(name)
            await runner.start()
            self._started.append(runner)

    async def stop(self, deadline: float | None = None) -> None:
        """Stop the runners together (each may finish its round within ``deadline``), then the rest.

        Together, so a shutdown takes at most one deadline however many runners
        there are; the tracking recorder commits every hit it still holds.
        """
        if deadline is None:
            deadline = self.settings.stop_deadline
        started, self._started = self._started, []
        await asyncio.gather(*(runner.stop(deadline) for runner in started))
        await self.db.dispose()


def _spool(services: Services) -> LoopRunner:
    return Spool(services.db)


def _ingest(services: Services) -> LoopRunner:
    s = services.settings
    return IngestRunner(
        services.db,
        mail_domain=s.mail_domain,
        clock=services.follow_clock,
        lease=timedelta(seconds=s.ingest_lease),
        steps=with_record_cap(IN_TRANSACTION, s.max_records_per_message),
    )


def _relay(services: Services) -> LoopRunner:
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
        clock=services.follow_clock,
        poll_interval=s.relay_poll_interval,
        lease=timedelta(seconds=s.relay_lease),
        local_hostname=s.smtp_hostname,
    )


def _bounces(services: Services) -> LoopRunner:
    from gateway.bounces.process import Policy
    from gateway.bounces.worker import BounceWorker

    return BounceWorker(services.db, Policy(mail_domain=services.settings.mail_domain))


def _tracking(services: Services) -> LoopRunner:
    return HitRecorder(services.db, clock=services.follow_clock)


def _verdicts(services: Services) -> LoopRunner:
    return HitJudge(services.db, public_url=services.settings.public_url)


def _consumer(cls: type[LoopRunner]) -> RunnerFactory:
    """How a sync consumer is built: ``cls(db, clock=…)``."""

    def build(services: Services) -> LoopRunner:
        return cls(services.db, clock=services.follow_clock)  # type: ignore[call-arg]

    return build


def _campaigns(services: Services) -> LoopRunner:
    from gateway.campaigns.runner import CampaignRunner

    return CampaignRunner(
        services.db,
        signer=services.signer,
        clock=services.follow_clock,
        wake_relay=lambda: services.wake("relay"),
    )


def _mailboxes(services: Services) -> LoopRunner:
    from gateway.receive.mailboxes import MailboxService, MailboxSupervisor

    service = MailboxService(
        services.db,
        services.spool,
        services.settings,
        ingest=services.runner("ingest"),
        clock=services.follow_clock,
    )
    return MailboxSupervisor(service)


def _webhook_delivery(services: Services) -> LoopRunner:
    from sync.webhook_delivery import RetryPolicy, WebhookDelivery

    s = services.settings
    return WebhookDelivery(
        services.db,
        clock=services.follow_clock,
        policy=RetryPolicy(s.webhook_retry_base, s.webhook_retry_cap, s.webhook_disable_after),
        timeout=s.webhook_timeout,
        concurrency=s.webhook_concurrency,
        allow_private=s.allow_private_targets,
    )


def _signals(services: Services) -> LoopRunner:
    from gateway.http.stream import SignalHub

    return SignalHub(services.db, clock=services.follow_clock)


#: Every runner a process can run, by name: the workers, then one per event-log
#: consumer in ``sync.CONSUMERS`` (under the consumer's own ``name``).
RUNNERS: dict[str, RunnerFactory] = {
    "spool": _spool,
    "ingest": _ingest,
    "relay": _relay,
    "bounces": _bounces,
    "tracking": _tracking,
    "verdicts": _verdicts,
    "mailboxes": _mailboxes,
    "campaigns": _campaigns,
    "webhook_delivery": _webhook_delivery,
    "signals": _signals,
    **{consumer.name: _consumer(consumer) for consumer in sync.CONSUMERS},
}
