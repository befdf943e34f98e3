"""Consumers of the event log: runners that read it from their own stored offset.

Each consumer is a :class:`~sync.consumer.Consumer` (a
:class:`~gateway.runner.LoopRunner`) that commits its offset with its effects.
:data:`CONSUMERS` lists them; ``serve --only sync`` runs every one, each built
as ``cls(db, clock=clock)`` and registered under its ``name``
(:data:`gateway.services.RUNNERS`):
:class:`~sync.suppression.SuppressionConsumer` (recorded bounces and complaints
into suppressed addresses), :class:`~sync.crm_to_campaigns.CrmToCampaigns`
(CRM records into mailing lists), :class:`~sync.campaigns_to_crm.CampaignsToCrm`
(campaign results into the CRM: statuses, history, do-not-mail, registrations)
and :class:`~sync.webhooks.WebhookFanout` (events into webhook deliveries).
"""

from __future__ import annotations

from sync.campaigns_to_crm import CampaignsToCrm
from sync.consumer import Consumer, drain_all
from sync.crm_to_campaigns import CrmToCampaigns
from sync.suppression import SuppressionConsumer
from sync.webhooks import WebhookFanout

CONSUMERS: tuple[type[Consumer], ...] = (
    SuppressionConsumer,
    CrmToCampaigns,
    CampaignsToCrm,
    WebhookFanout,
)

__all__ = [
    "CONSUMERS",
    "CampaignsToCrm",
    "Consumer",
    "SuppressionConsumer",
    "WebhookFanout",
    "drain_all",
]
