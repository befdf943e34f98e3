"""Unsubscribing a recipient: one function for every way in (one-click POST, the page, mailto).

Unlike a bounce, an unsubscribe is the recipient's own explicit request, so it
suppresses the address at once, in the same transaction as the send's status,
rather than through the suppression consumer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from storage import tracking_store
from storage.events import EventType, append_sync
from storage.payloads import send_event
from storage.suppressions import suppress
from storage.types import utcnow


def apply_unsubscribe(conn: Connection, send: dict[str, Any], method: str) -> bool:
    """Suppress the address for the org and mark the send; True the first time only.

    ``method`` says how the request came: ``one_click`` (RFC 8058 POST),
    ``form`` (the confirmation page on ``/u/…``) or ``mailto`` (List-Unsubscribe mail).
    """
    now = utcnow()
    email = send["to_email"].strip().lower()
    suppress(conn, send["org_id"], email, "unsubscribe", detail=method, send_id=send["id"], at=now)
    if not tracking_store.mark_unsubscribed(conn, send["id"], now):
        return False
    append_sync(conn, [send_event(EventType.EMAIL_UNSUBSCRIBED, send, at=now, method=method)])
    return True
