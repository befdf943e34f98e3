"""What the roles share in one process: settings, the database and the intake writer."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Settings
from gateway.intake import Intake
from storage.db import Database


@dataclass
class Services:
    settings: Settings
    db: Database
    intake: Intake

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.database_url)
        return cls(settings=settings, db=db, intake=Intake(db, mail_domain=settings.mail_domain))

    async def start(self) -> None:
        await self.intake.start()

    async def stop(self) -> None:
        await self.intake.stop()
        await self.db.dispose()
