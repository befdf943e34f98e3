"""What the roles share in one process: settings, the database and the intake writer."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.bounces.process import Policy
from gateway.bounces.worker import BounceWorker
from gateway.config import Settings
from gateway.intake import Intake
from storage.db import Database


@dataclass
class Services:
    settings: Settings
    db: Database
    intake: Intake
    bounces: BounceWorker

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.database_url)
        bounces = BounceWorker(db, Policy(mail_domain=settings.mail_domain))
        intake = Intake(db, mail_domain=settings.mail_domain, on_kept=bounces.wakeup.set)
        return cls(settings=settings, db=db, intake=intake, bounces=bounces)

    async def start(self) -> None:
        await self.intake.start()

    async def stop(self) -> None:
        await self.intake.stop()
        await self.db.dispose()
