"""Consumers of the event log: runners that read it from their own stored offset.

Each consumer is a :class:`~sync.consumer.Consumer` (a
:class:`~gateway.runner.LoopRunner`) that commits its offset with its effects.
``serve`` runs :func:`build_consumers` under the ``sync`` role.  Today there is
one: :class:`~sync.suppression.SuppressionConsumer`, which turns recorded
bounces and complaints into suppressed addresses.  The Campaigns and CRM syncs
and the webhook sender join this tuple as they arrive.
"""

from __future__ import annotations

from gateway.clock import Clock
from gateway.config import Settings
from storage.db import Database
from sync.consumer import Consumer, drain_all
from sync.suppression import SuppressionConsumer

__all__ = ["Consumer", "SuppressionConsumer", "build_consumers", "drain_all"]


def build_consumers(db: Database, settings: Settings, clock: Clock) -> tuple[Consumer, ...]:
    """Every consumer the ``sync`` role runs, ready to ``start()``."""
    del settings  # none of today's consumers is configurable; the syncs will be
    return (SuppressionConsumer(db, clock),)
