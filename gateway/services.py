"""What the roles share in one process: settings, the database and the intake writer."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.bounces.process import Policy
from gateway.bounces.worker import BounceWorker
from gateway.config import Settings
from gateway.intake import Intake
from storage.db import Database
from tracking.endpoints import Tracking
from tracking.recorder import HitRecorder
from tracking.tokens import TokenSigner, keys_from_secrets


@dataclass
class Services:
    settings: Settings
    db: Database
    intake: Intake
    bounces: BounceWorker
    tracking: Tracking

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.database_url)
        bounces = BounceWorker(db, Policy(mail_domain=settings.mail_domain))
        intake = Intake(db, mail_domain=settings.mail_domain, on_kept=bounces.wakeup.set)
        signer = TokenSigner(keys_from_secrets(settings.resolved_secret_keys()))
        recorder = HitRecorder(db, public_url=settings.public_url)
        tracking = Tracking(db, signer, recorder, settings.public_url)
        return cls(settings=settings, db=db, intake=intake, bounces=bounces, tracking=tracking)

    async def start(self) -> None:
        await self.intake.start()
        await self.tracking.recorder.start()

    async def stop(self) -> None:
        await self.intake.stop()
        await self.tracking.recorder.stop()  # commits the hits still pending
        await self.db.dispose()
