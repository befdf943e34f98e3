"""Creating send rows directly, for tests of what happens after a send (bounces, tracking)."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import insert

from storage.schema_sending import sends


async def make_send(
    db, *, org_id: int, to_email: str, user_id: int | None = None, **extra: Any
) -> dict[str, Any]:
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
