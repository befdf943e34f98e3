"""Bounce and complaint recognition: pure functions over raw message bytes.

``classify(raw)`` answers what an inbound message on our VERP return path
is (hard/soft bounce, complaint, auto-reply, or unrecognised) and for whom;
``verp_address``/``verp_token`` make and read those return paths.  Nothing
here touches storage: suppression is decided by a consumer of the events.
"""

from gateway.bounces.classify import classify
from gateway.bounces.report import BouncedRecipient, BounceKind, BounceReport
from gateway.bounces.verp import verp_address, verp_token

__all__ = [
    "BounceKind",
    "BounceReport",
    "BouncedRecipient",
    "classify",
    "verp_address",
    "verp_token",
]
