"""Step ``emit``: append the batch's events to the log, last, in the filing transaction.

Consumers see a message's events if and only if its filing committed.
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.ingest.context import Batch, Flow
from storage import events

NAME = "emit"


def run(conn: Connection, batch: Batch) -> Flow:
    events.append_sync(conn, batch.new_events)
    batch.new_events = []
    return Flow.DONE
