"""Mailing lists and members made straight in the database, for tests of the syncs.

The Campaigns API (``POST /api/v1/lists``) is what users call; these helpers
let a test of a consumer set up the list it syncs into in one line.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select

from gateway.addresses import normalise
from storage.schema_campaigns import list_members, mailing_lists
from tests.support.server import MailgateServer


def make_list(
    server: MailgateServer, org: dict[str, Any], name: str, *, register: bool = False
) -> int:
    """A new mailing list of ``org``; its id."""

    def go(conn) -> int:
        res = conn.execute(
            insert(mailing_lists)
            .values(org_id=org["id"], name=name, description="", kind="list", register=register)
            .returning(mailing_lists.c.id)
        )
        return res.scalar_one()

    return server.call(server.db.run_write(go))


def add_member(
    server: MailgateServer, org: dict[str, Any], list_id: int, email: str, **values: Any
) -> int:
    """A member added by hand (no CRM record unless ``module``/``record_id`` are given)."""
    now = datetime.now(UTC)

    def go(conn) -> int:
        res = conn.execute(
            insert(list_members)
            .values(
                org_id=org["id"],
                list_id=list_id,
                email=email,
                email_norm=normalise(email) or email.lower(),
                fields={},
                created_at=now,
                updated_at=now,
                **values,
            )
            .returning(list_members.c.id)
        )
        return res.scalar_one()

    return server.call(server.db.run_write(go))


def members(server: MailgateServer, list_id: int) -> list[dict[str, Any]]:
    """Every member row of the list (removed ones included), by id."""

    def go(conn) -> list[dict[str, Any]]:
        q = select(list_members).where(list_members.c.list_id == list_id)
        return [dict(r) for r in conn.execute(q.order_by(list_members.c.id)).mappings()]

    return server.call(server.db.run_read(go))
