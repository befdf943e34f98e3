"""What the roles share in one process: settings, the database, the spool and the runners."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from gateway.bounces.process import Policy
from gateway.bounces.worker import BounceWorker
from gateway.config import Settings
from gateway.ingest.runner import IngestRunner
from gateway.ingest.spool import Spool
from gateway.sending.quota import Clock, SystemClock
from storage.db import Database
from tracking.endpoints import Tracking
from tracking.recorder import HitRecorder
from tracking.tokens import TokenSigner, keys_from_secrets


@dataclass
class Services:
    settings: Settings
    db: Database
    spool: Spool  # receivers store accepted mail here (smtp, imap)
    ingest: IngestRunner  # files it (the worker role runs it)
    bounces: BounceWorker
    tracking: Tracking
    #: "Now" for quota days and send scheduling; tests replace it with a FixedClock.
    clock: Clock = field(default_factory=SystemClock)
    #: The relay worker when this process runs the ``worker`` role (the API wakes it).
    relay_worker: object | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.database_url)
        bounces = BounceWorker(db, Policy(mail_domain=settings.mail_domain))
        spool = Spool(db)
        ingest = IngestRunner(db, mail_domain=settings.mail_domain)
        signer = TokenSigner(keys_from_secrets(settings.resolved_secret_keys()))
        recorder = HitRecorder(db, public_url=settings.public_url)
        tracking = Tracking(db, signer, recorder, settings.public_url)
        return cls(
            settings=settings,
            db=db,
            spool=spool,
            ingest=ingest,
            bounces=bounces,
            tracking=tracking,
        )

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

    async def start(self) -> None:
        await self.spool.start()
        await self.tracking.recorder.start()

    async def stop(self) -> None:
        if self.relay_worker is not None:
            await self.relay_worker.stop()
        await self.ingest.stop()
        await self.spool.stop()
        await self.tracking.recorder.stop()  # commits the hits still pending
        await self.db.dispose()
