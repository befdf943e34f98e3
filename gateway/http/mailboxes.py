"""`/api/v1/mailboxes` (connect an IMAP or POP3 mailbox, list, status, remove, backfill),
a message's read state, and the sharing settings that decide who sees whose mail.

The password is write-only: accepted on ``POST``, sealed at once, never in
any answer or log line.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.addresses import normalise
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from gateway.receive.mailboxes import InvalidMailbox, MailboxService, mailbox_values, sharing
from gateway.receive.mailboxes.service import PROTOCOLS
from gateway.receive.mailboxes.validate import resolve_target
from storage import crm, orgs
from storage import mailboxes as store
from storage.db import Database


def protocol_of(body: dict[str, Any], values: dict[str, Any]) -> str:
    """``imap`` (the default) or ``pop3``; a POP3 mailbox has no Sent folder to name."""
    protocol = body.get("protocol", "imap")
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise InvalidMailbox("invalid_field", "protocol must be imap or pop3")
    if protocol == "pop3" and values["sent_folder"] is not None:
        raise InvalidMailbox("invalid_field", "a POP3 mailbox has no sent_folder (only an inbox)")
    return protocol


class MailboxesApi(Resource):
    """Connected mailboxes, read state, sharing and excluded domains."""

    def __init__(self, db: Database, mailboxes: MailboxService) -> None:
        super().__init__(db)
        self.mailboxes = mailboxes

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/mailboxes", self.create_mailbox, methods=["POST"]),
            Route("/api/v1/mailboxes", self.list_mailboxes, methods=["GET"]),
            Route("/api/v1/mailboxes/{id}", self.get_mailbox, methods=["GET"]),
            Route("/api/v1/mailboxes/{id}", self.delete_mailbox, methods=["DELETE"]),
            Route("/api/v1/mailboxes/{id}/backfill", self.backfill_mailbox, methods=["POST"]),
            Route("/api/v1/emails/{id}/read", self.mark_read, methods=["POST"]),
            Route("/api/v1/users/{id}/sharing", self.get_sharing, methods=["GET"]),
            Route("/api/v1/users/{id}/sharing", self.put_sharing, methods=["PUT"]),
            Route("/api/v1/excluded-domains", self.get_excluded, methods=["GET"]),
            Route("/api/v1/excluded-domains", self.put_excluded, methods=["PUT"]),
        ]

    async def _owned(self, request: Request, user: dict[str, Any]) -> dict[str, Any]:
        """The mailbox in the path, if the caller may see it (its owner, or an org admin)."""
        async with self.db.connect() as conn:
            row = await store.get_mailbox(conn, path_id(request))
        if row is None or row["org_id"] != user["org_id"]:
            raise ApiError(404, "not_found", "no such mailbox")
        if row["user_id"] != user["id"] and not user["is_admin"]:
            raise ApiError(404, "not_found", "no such mailbox")
        return row

    async def create_mailbox(self, request: Request) -> Response:
        user = await self.user(request)
        body = await read_json(request)
        try:
            values = mailbox_values(body, extra={"user_id", "protocol"})
            values["protocol"] = protocol_of(body, values)
            # Refused before anything connects, so the answer says nothing about ports.
            await resolve_target(
                values["host"],
                values["port"],
                allow_private=self.mailboxes.allow_private_targets,
            )
        except InvalidMailbox as exc:
            raise ApiError(422, exc.code, str(exc)) from exc
        owner = user["id"]
        if "user_id" in body and body["user_id"] != user["id"]:
            target = body["user_id"]
            if isinstance(target, bool) or not isinstance(target, int):
                raise ApiError(422, "invalid_field", "user_id must be an integer id")
            if not user["is_admin"]:
                raise ApiError(403, "forbidden", "only an admin connects another user's mailbox")
            async with self.db.connect() as conn:
                other = await orgs.get_user(conn, target) if target < 2**62 else None
            if other is None or other["org_id"] != user["org_id"]:
                raise ApiError(422, "invalid_field", f"user {target} does not exist")
            owner = target
        try:
            created = await self.mailboxes.add(user["org_id"], owner, values)
        except Exception as exc:
            if "uq_mailboxes" in str(exc) or "UNIQUE" in str(exc):
                raise ApiError(409, "exists", "this mailbox is already connected") from exc
            raise
        return JSON(created, status_code=201)

    async def list_mailboxes(self, request: Request) -> Response:
        user = await self.user(request)
        async with self.db.connect() as conn:
            rows = await store.list_mailboxes(
                conn, user["org_id"], None if user["is_admin"] else user["id"]
            )
        from gateway.receive.mailboxes import public

        return JSON({"items": [public(r) for r in rows], "next": None})

    async def get_mailbox(self, request: Request) -> Response:
        user = await self.user(request)
        row = await self._owned(request, user)
        return JSON(await self.mailboxes.status(row["id"]))

    async def delete_mailbox(self, request: Request) -> Response:
        user = await self.user(request)
        row = await self._owned(request, user)
        async with self.db.begin() as conn:
            await store.delete_mailbox(conn, user["org_id"], row["id"])
        return Response(status_code=204)

    async def backfill_mailbox(self, request: Request) -> Response:
        """Fetch the last ``days`` again (the poller does it; progress in GET …/{id})."""
        user = await self.user(request)
        row = await self._owned(request, user)
        body = await read_json(request)
        days = body.get("days", row["backfill_days"])
        if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 3650:
            raise ApiError(422, "invalid_field", "days must be an integer between 0 and 3650")
        async with self.db.begin() as conn:
            await store.reset_folders(conn, row["id"])
            await store.update_mailbox(
                conn, row["id"], backfill_days=days, state="pending", version=row["version"] + 1
            )
        return JSON(await self.mailboxes.status(row["id"]), status_code=202)

    async def mark_read(self, request: Request) -> Response:
        """``POST /api/v1/emails/{id}/read`` ``{"seen": true|false}``: the owner's read state.

        Sets ``seen`` on the filed message and ``\\Seen`` on the IMAP server it
        came from; ``server`` says whether the server was told now (``updated``),
        will be on the next poll (``pending``), or holds no copy (``none``).
        """
        user = await self.user(request)
        message_pk = path_id(request)
        body = await read_json(request)
        seen = body.get("seen", True)
        if not isinstance(seen, bool):
            raise ApiError(422, "invalid_field", "seen must be true or false")
        async with self.db.connect() as conn:
            message = await store.get_message(conn, user["org_id"], message_pk)
        if message is None:
            raise ApiError(404, "not_found", "no such email")
        if message["user_id"] not in (None, user["id"]):
            raise ApiError(403, "forbidden", "only the mailbox owner marks their mail read")
        result = await self.mailboxes.mark_read(user["org_id"], message_pk, seen)
        return JSON({"id": message_pk, "seen": seen, "server": result})

    # -- sharing -------------------------------------------------------------------

    async def _target_user(self, request: Request, user: dict[str, Any]) -> dict[str, Any]:
        target_id = path_id(request)
        async with self.db.connect() as conn:
            target = await orgs.get_user(conn, target_id)
        if target is None or target["org_id"] != user["org_id"]:
            raise ApiError(404, "not_found", "no such user")
        return target

    async def get_sharing(self, request: Request) -> Response:
        user = await self.user(request)
        target = await self._target_user(request, user)
        async with self.db.connect() as conn:
            modes = await store.sharing_modes(conn, user["org_id"])
            records = await store.shared_records(conn, target["id"])
        row = modes.get(target["id"])
        return JSON(
            {
                "user_id": target["id"],
                "mode": sharing.mode_of(modes, target["id"]),
                "delegated": bool(row and row["delegated"]),
                "records": [{"module": m, "id": r} for m, r in records],
            }
        )

    async def put_sharing(self, request: Request) -> Response:
        """``PUT /api/v1/users/{id}/sharing`` ``{"mode", "records"?, "delegated"?}``."""
        user = await self.user(request)
        target = await self._target_user(request, user)
        body = await read_json(request)
        unknown = sorted(set(body) - {"mode", "records", "delegated"})
        if unknown:
            raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
        mode = body.get("mode")
        if mode not in sharing.MODES:
            raise ApiError(422, "invalid_field", "mode must be private, custom or public")
        async with self.db.connect() as conn:
            current = (await store.sharing_modes(conn, user["org_id"])).get(target["id"])
        delegated_now = bool(current and current["delegated"])
        if not sharing.may_change(user, target["id"], delegated_now):
            raise ApiError(403, "forbidden", "an admin sets this user's sharing (not delegated)")
        delegated = body.get("delegated", delegated_now)
        if not isinstance(delegated, bool):
            raise ApiError(422, "invalid_field", "delegated must be true or false")
        if delegated != delegated_now and not user["is_admin"]:
            raise ApiError(403, "forbidden", "only an admin delegates sharing")
        records = body.get("records")
        chosen: list[tuple[str, int]] | None = None
        if records is not None:
            if not isinstance(records, list) or len(records) > 10000:
                raise ApiError(422, "invalid_field", "records must be a list (at most 10,000)")
            chosen = []
            async with self.db.connect() as conn:
                for item in records:
                    if (
                        not isinstance(item, dict)
                        or item.get("module") not in ("leads", "contacts")
                        or isinstance(item.get("id"), bool)
                        or not isinstance(item.get("id"), int)
                        or not 0 < item["id"] < 2**62
                    ):
                        raise ApiError(
                            422,
                            "invalid_field",
                            'each record is {"module": "leads"|"contacts", "id"}',
                        )
                    if await crm.get(conn, item["module"], user["org_id"], item["id"]) is None:
                        raise ApiError(
                            422,
                            "invalid_field",
                            f"{item['module'][:-1]} {item['id']} does not exist",
                        )
                    chosen.append((item["module"], item["id"]))
            chosen = sorted(set(chosen))
        async with self.db.begin() as conn:
            await store.set_sharing(
                conn, user["org_id"], target["id"], mode=mode, delegated=delegated, records=chosen
            )
        return await self.get_sharing(request)

    async def get_excluded(self, request: Request) -> Response:
        user = await self.user(request)
        async with self.db.connect() as conn:
            domains = await store.list_excluded(conn, user["org_id"])
        return JSON({"domains": sorted(domains)})

    async def put_excluded(self, request: Request) -> Response:
        """``PUT /api/v1/excluded-domains`` ``{"domains": [...]}`` (admins): never filed, shared."""
        user = await self.user(request)
        if not user["is_admin"]:
            raise ApiError(403, "forbidden", "only an admin sets excluded domains")
        body = await read_json(request)
        domains = body.get("domains")
        if not isinstance(domains, list) or len(domains) > 1000:
            raise ApiError(422, "invalid_field", "domains must be a list (at most 1,000)")
        clean = set()
        for d in domains:
            norm = normalise(f"x@{d}") if isinstance(d, str) and len(d) <= 253 else None
            if norm is None:
                raise ApiError(422, "invalid_field", f"{d!r} is not a mail domain")
            clean.add(norm.split("@", 1)[1])
        async with self.db.begin() as conn:
            await store.set_excluded(conn, user["org_id"], sorted(clean))
        return JSON({"domains": sorted(clean)})
