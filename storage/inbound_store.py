"""Operator views of the ``inbound`` table: held bounce mail and shunted filings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from storage.schema import inbound

LIST_COLUMNS = (
    inbound.c.id,
    inbound.c.org_id,
    inbound.c.user_id,
    inbound.c.channel,
    inbound.c.state,
    inbound.c.mail_from,
    inbound.c.rcpt_to,
    inbound.c.failed_stage,
    inbound.c.last_error,
    inbound.c.received_at,
    inbound.c.attempts,
)


def list_state(conn: Connection, state: str, limit: int) -> list[dict[str, Any]]:
    q = select(*LIST_COLUMNS).where(inbound.c.state == state).order_by(inbound.c.id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def get(conn: Connection, inbound_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(inbound).where(inbound.c.id == inbound_id)).mappings().first()
    return dict(row) if row else None


def set_state(conn: Connection, inbound_id: int, state: str, note: str | None = None) -> None:
    values: dict[str, Any] = {"state": state}
    if note is not None:
        values["last_error"] = note[:2000]
    conn.execute(update(inbound).where(inbound.c.id == inbound_id).values(**values))
