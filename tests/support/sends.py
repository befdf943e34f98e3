"""Sends created straight in the database, as the (separately built) composer would.

Tracking tests need a ``sends`` row with its ``links``; they do not need the
relay.  ``make_send`` runs :func:`tracking.prepare.prepare_html` exactly as the
composer does and stores what it returns.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from storage.schema import events
from storage.schema_sending import sends, suppressions
from storage.schema_tracking import tracking_hits
from tests.support.server import MailgateServer
from tracking.prepare import prepare_html

HTML = """<html><body><p>山田様</p>
<a href="https://shop.example.co.jp/item/1?a=1&amp;b=2">商品1</a>
<a href="https://shop.example.co.jp/item/2">商品2</a>
<a href="https://shop.example.co.jp/item/3">商品3</a>
<a href="mailto:sales@example.co.jp">mail</a>
</body></html>"""


def make_send(
    server: MailgateServer,
    org: dict[str, Any],
    user: dict[str, Any] | None = None,
    *,
    to: str = "taro@example.co.jp",
    html: str = HTML,
    links: list[str] | None = None,
    sent_ago: timedelta = timedelta(hours=1),
    sent_at: datetime | None = None,
    template_id: int | None = None,
    template_version: int | None = None,
    module: str | None = None,
    record_id: int | None = None,
    status: str = "sent",
    public_url: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Insert one sent message; returns the row plus ``html`` (tracked) and ``send_id``."""
    tracking = server.running.services.tracking
    sent_at = sent_at or datetime.now(UTC) - sent_ago

    async def go() -> dict[str, Any]:
        values = {
            "org_id": org["id"],
            "user_id": user["id"] if user else None,
            "kind": "individual",
            "module": module,
            "record_id": record_id,
            "to_email": to,
            "from_email": "sales@example.co.jp",
            "subject": "ご案内",
            "template_id": template_id,
            "template_version": template_version,
            "message_id": f"<{secrets.token_hex(8)}@mailgate.test>",
            "verp_token": secrets.token_hex(12),
            "links": [],
            "state": "sent",
            "status": status,
            "sent_at": sent_at,
            "created_at": sent_at,
            **extra,
        }
        async with server.db.begin() as conn:
            send_id = (await conn.execute(insert(sends).values(**values))).inserted_primary_key[0]
            tracked, stored, honeypot = prepare_html(
                html,
                send_id=send_id,
                signer=tracking.signer,
                public_url=public_url or tracking.public_url,
            )
            if links is not None:
                stored = links
            await conn.execute(sends.update().where(sends.c.id == send_id).values(links=stored))
        return {**values, "id": send_id, "links": stored, "html": tracked, "honeypot": honeypot}

    return server.call(go())


def flush(server: MailgateServer) -> int:
    """Judge and commit every hit the endpoints took (it would otherwise wait ~2 s);
    returns how many were stored."""
    services = server.running.services

    async def go() -> int:
        await services.tracking.recorder.flush()
        return await services.runner("verdicts").flush()

    return server.call(go())


def scalar(server: MailgateServer, query) -> Any:
    async def go():
        async with server.db.connect() as conn:
            return (await conn.execute(query)).scalar()

    return server.call(go())


def rows(server: MailgateServer, query) -> list[dict[str, Any]]:
    async def go():
        async with server.db.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    return server.call(go())


def send_row(server: MailgateServer, send_id: int) -> dict[str, Any]:
    return rows(server, select(sends).where(sends.c.id == send_id))[0]


def hits_of(server: MailgateServer, send_id: int) -> list[dict[str, Any]]:
    q = select(tracking_hits).where(tracking_hits.c.send_id == send_id).order_by(tracking_hits.c.id)
    return rows(server, q)


def events_of(server: MailgateServer, org_id: int, *types: str) -> list[dict[str, Any]]:
    q = select(events).where(events.c.org_id == org_id).order_by(events.c.id)
    if types:
        q = q.where(events.c.type.in_(types))
    return rows(server, q)


def suppression_count(server: MailgateServer, org_id: int) -> int:
    q = select(func.count()).select_from(suppressions).where(suppressions.c.org_id == org_id)
    return scalar(server, q)


async def make_bare_send(
    db, *, org_id: int, to_email: str, user_id: int | None = None, **extra: Any
) -> dict[str, Any]:
    """A send row with a VERP token and nothing else (bounce tests)."""
    token = secrets.token_hex(10)
    values = {
        "org_id": org_id,
        "user_id": user_id,
        "kind": "individual",
        "to_email": to_email,
        "from_email": "rep@sender.example",
        "message_id": f"{token}@sender.example",
        "verp_token": token,
        "state": "sent",
        "status": "sent",
        **extra,
    }
    async with db.begin() as conn:
        send_id = (
            await conn.execute(insert(sends).values(**values).returning(sends.c.id))
        ).scalar_one()
    return {"id": send_id, **values}
