"""CRUD for leads, contacts, accounts and deals; lead conversion; a record's mail."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.addresses import normalise
from gateway.http.auth import int_param, page
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from gateway.mailview.fields import header_fields
from gateway.receive.mailboxes import sharing
from gateway.records.changes import changed_fields, deleted_fields
from gateway.records.validation import NAME_FIELDS, address_problem, name_problem
from storage import crm, events, filing, mailboxes, orgs
from storage.db import Database
from storage.events import EventType
from storage.payloads import record_converted, record_created, record_event

MAX_LEN = {
    "first_name": 100,
    "last_name": 100,
    "company": 300,
    "name": 300,
    "phone": 50,
    "title": 100,
    "status": 30,
    "stage": 50,
    "email": 320,
}
HIDDEN = {"email_norm", "org_id"}
#: Ids are 64-bit in PostgreSQL; a larger integer would be a driver error, not a 422.
MAX_ID = 2**63 - 1


def _module(request: Request) -> str:
    module = request.path_params["module"]
    if module not in crm.MODULES:
        raise ApiError(404, "not_found", f"unknown module {module!r}")
    return module


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in HIDDEN}


def _closing_date(value: Any) -> date | None:
    """A deal's ``closing_date``: ``YYYY-MM-DD`` or null (the SalesInbox sorts by it)."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ApiError(422, "invalid_field", "closing_date must be a date, YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ApiError(422, "invalid_field", f"closing_date {value!r} is not a date") from exc


async def _validate(
    conn, module: str, org_id: int, body: dict[str, Any], *, partial: bool
) -> dict[str, Any]:
    allowed = crm.WRITABLE[module]
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("account_id", "contact_id"):
            if value is None:
                values[key] = None
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(422, "invalid_field", f"{key} must be an integer id")
            if not 0 < value <= MAX_ID:
                raise ApiError(422, "invalid_field", f"{key} {value} does not exist")
            target = "accounts" if key == "account_id" else "contacts"
            if await crm.get(conn, target, org_id, value) is None:
                raise ApiError(422, "invalid_field", f"{key} {value} does not exist")
            values[key] = value
        elif key == "do_not_mail":
            if not isinstance(value, bool):
                raise ApiError(422, "invalid_field", "do_not_mail must be true or false")
            values[key] = value
        elif key == "closing_date":
            values[key] = _closing_date(value)
        elif key == "amount":
            if value is None:
                values[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ApiError(422, "invalid_field", "amount must be a number")
            try:
                values[key] = Decimal(str(value))
            except InvalidOperation as exc:
                raise ApiError(422, "invalid_field", "amount must be a number") from exc
            if not values[key].is_finite() or abs(values[key]) >= Decimal(10) ** 14:
                raise ApiError(422, "invalid_field", "amount out of range")
        else:
            if value is None and key == "email":
                values["email"], values["email_norm"] = None, None
                continue
            if not isinstance(value, str):
                raise ApiError(422, "invalid_field", f"{key} must be a string")
            value = value.strip()
            if len(value) > MAX_LEN.get(key, 300) or "\x00" in value:
                raise ApiError(422, "invalid_field", f"{key} is too long or contains NUL")
            if key in NAME_FIELDS and name_problem(value):
                raise ApiError(422, "invalid_field", f"{key} {name_problem(value)}")
            if key == "email":
                norm = normalise(value) if value else None
                problem = address_problem(value) if norm else "not an email address"
                if value and (norm is None or problem):
                    raise ApiError(
                        422, "invalid_field", f"email {value!r} is not a valid address: {problem}"
                    )
                values["email_norm"] = norm
                value = value or None
            values[key] = value
    required = {"accounts": "name", "deals": "name"}.get(module)
    if not partial and required and not values.get(required):
        raise ApiError(422, "missing_field", f"{required} is required")
    if (
        not partial
        and module in ("leads", "contacts")
        and not (values.get("last_name") or values.get("email"))
    ):
        raise ApiError(422, "missing_field", "last_name or email is required")
    return values


def email_item(row: dict[str, Any]) -> dict[str, Any]:
    """One item of a record's email list: the email's header fields, then the list's own."""
    return {
        **header_fields(row),
        "send_id": row["send_id"],
        "status": row.get("send_status"),
        "user_id": row["user_id"],
        "seen": row.get("seen", False),
        "filed_at": row["created_at"],
    }


#: ``?source=`` of a record's email list (seed 004's related-list filter "sent from the
#: CRM", plus each channel): the ``messages.source`` values each one stands for.
SOURCE_FILTERS: dict[str, tuple[str, ...]] = {
    "crm": sharing.CRM_SOURCES,
    **{s: (s,) for s in (*sharing.CRM_SOURCES, "dropbox", "imap", "pop")},
}
DIRECTIONS = ("incoming", "outgoing")


def _choice(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    """An optional filter that must be one of ``choices``: 422 naming them otherwise."""
    value = request.query_params.get(name) or None
    if value is not None and value not in choices:
        raise ApiError(
            422, "invalid_filter", f"{name} must be one of {', '.join(choices)}, not {value!r}"
        )
    return value


async def _mail_filter(conn, request: Request, org_id: int) -> filing.MailFilter:
    """``?source=``, ``?direction=``, ``?user=`` (a user of the asker's org) of a record's list."""
    source = _choice(request, "source", tuple(SOURCE_FILTERS))
    direction = _choice(request, "direction", DIRECTIONS)
    raw_user = request.query_params.get("user") or None
    user_id = None
    if raw_user is not None:
        if not (raw_user.isascii() and raw_user.isdigit()) or not 0 < int(raw_user) <= MAX_ID:
            raise ApiError(422, "invalid_filter", "user must be a user id of your organization")
        colleague = await orgs.get_user(conn, int(raw_user))
        if colleague is None or colleague["org_id"] != org_id:
            raise ApiError(422, "invalid_filter", f"no user {raw_user} in your organization")
        user_id = colleague["id"]
    return filing.MailFilter(
        sources=SOURCE_FILTERS[source] if source else None, direction=direction, user_id=user_id
    )


async def record_mail(
    db: Database,
    request: Request,
    user: dict[str, Any],
    module: str,
    rid: int,
    *,
    after: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit + 1`` emails filed on the record that ``user`` may see (sharing rules),
    filtered by the request's ``source``/``direction``/``user``: the one reading of a
    record's mail, for the API and the dashboard (404/422 as :class:`ApiError`)."""
    org_id = user["org_id"]
    async with db.connect() as conn:
        record = await crm.get(conn, module, org_id, rid)
        if record is None:
            raise ApiError(404, "not_found", f"no such {module[:-1]}")
        wanted = await _mail_filter(conn, request, org_id)
        modes, shares = await mailboxes.sharing_rules(conn, org_id)
        seen = sharing.record_scope(user["id"], modes, shares)
        return await filing.emails_for_record(
            conn, org_id, module, rid, seen=seen, wanted=wanted, after=after, limit=limit + 1
        )


class RecordsApi(Resource):
    """CRUD of the four modules, lead conversion, a record's mail, and the event log."""

    def routes(self) -> list[Route]:
        m = "/api/v1/{module}"
        return [
            Route("/api/v1/leads/{id}/convert", self.convert_lead, methods=["POST"]),
            Route(m, self.create_record, methods=["POST"]),
            Route(m, self.list_records, methods=["GET"]),
            Route(m + "/{id}", self.get_record, methods=["GET"]),
            Route(m + "/{id}", self.patch_record, methods=["PATCH"]),
            Route(m + "/{id}", self.delete_record, methods=["DELETE"]),
            Route(m + "/{id}/emails", self.record_emails, methods=["GET"]),
        ]

    async def create_record(self, request: Request) -> Response:
        user = await self.user(request)
        module = _module(request)
        body = await read_json(request)
        org_id = user["org_id"]
        async with self.db.begin() as conn:
            values = await _validate(conn, module, org_id, body, partial=False)
            values.setdefault("owner_id", user["id"])
            rid = await crm.create(conn, module, org_id, values)
            record = await crm.get(conn, module, org_id, rid)
            await events.append(
                conn,
                [
                    record_created(
                        org_id,
                        module=module,
                        record_id=rid,
                        source="api",
                        values=values,
                        user_id=user["id"],
                    )
                ],
            )
        return JSON(public(record), status_code=201)

    async def list_records(self, request: Request) -> Response:
        user = await self.user(request)
        module = _module(request)
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        after = int_param(request, "cursor", 0)
        email = request.query_params.get("email")
        email_norm = None
        if email is not None:
            if "email_norm" not in crm.MODULES[module].c:
                raise ApiError(400, "bad_parameter", f"{module} have no email to filter on")
            email_norm = normalise(email)
            if email_norm is None or "\x00" in email_norm:
                return JSON({"items": [], "next": None})
        async with self.db.connect() as conn:
            rows = await crm.list_page(
                conn, module, user["org_id"], after=after, limit=limit + 1, email_norm=email_norm
            )
        return JSON(page(rows, limit, public))

    async def get_record(self, request: Request) -> Response:
        user = await self.user(request)
        module = _module(request)
        async with self.db.connect() as conn:
            record = await crm.get(conn, module, user["org_id"], path_id(request))
        if record is None:
            raise ApiError(404, "not_found", f"no such {module[:-1]}")
        return JSON(public(record))

    async def patch_record(self, request: Request) -> Response:
        """Change the given fields; ``record.updated`` names only those whose value changed."""
        user = await self.user(request)
        module = _module(request)
        rid = path_id(request)
        body = await read_json(request)
        org_id = user["org_id"]
        async with self.db.begin() as conn:
            before = await crm.get(conn, module, org_id, rid)
            if before is None:
                raise ApiError(404, "not_found", f"no such {module[:-1]}")
            values = await _validate(conn, module, org_id, body, partial=True)
            if values:
                await crm.patch(conn, module, org_id, rid, values)
            changed = changed_fields(before, values)
            if changed:
                await events.append(
                    conn,
                    [
                        record_event(
                            EventType.RECORD_UPDATED,
                            org_id,
                            module=module,
                            record_id=rid,
                            source="api",
                            changed=changed,
                            user_id=user["id"],
                        )
                    ],
                )
            record = await crm.get(conn, module, org_id, rid)
        return JSON(public(record))

    async def delete_record(self, request: Request) -> Response:
        user = await self.user(request)
        module = _module(request)
        rid = path_id(request)
        org_id = user["org_id"]
        async with self.db.begin() as conn:
            record = await crm.get(conn, module, org_id, rid)
            if record is None or not await crm.remove(conn, module, org_id, rid):
                raise ApiError(404, "not_found", f"no such {module[:-1]}")
            await events.append(
                conn,
                [
                    record_event(
                        EventType.RECORD_DELETED,
                        org_id,
                        module=module,
                        record_id=rid,
                        source="api",
                        changed=deleted_fields(record),
                        user_id=user["id"],
                    )
                ],
            )
        return Response(status_code=204)

    async def convert_lead(self, request: Request) -> Response:
        """Lead → account + contact (+ deal when asked); its filed mail moves to the contact."""
        user = await self.user(request)
        lead_id = path_id(request)
        body = await read_json(request)
        unknown = sorted(set(body) - {"deal"})
        if unknown:
            raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
        deal_body = body.get("deal")
        if deal_body is not None and not isinstance(deal_body, dict):
            raise ApiError(422, "invalid_field", "deal must be an object")
        org_id = user["org_id"]
        async with self.db.begin() as conn:
            lead = await crm.get(conn, "leads", org_id, lead_id)
            if lead is None:
                raise ApiError(404, "not_found", "no such lead")
            if lead["converted_at"] is not None:
                raise ApiError(
                    409,
                    "already_converted",
                    "this lead was already converted",
                    contact_id=lead["converted_contact_id"],
                )
            account_name = (
                lead["company"]
                or f"{lead['last_name']} {lead['first_name']}".strip()
                or lead["email"]
                or "Account"
            )
            account = {"name": account_name, "owner_id": lead["owner_id"]}
            account_id = await crm.create(conn, "accounts", org_id, account)
            contact = {
                "first_name": lead["first_name"],
                "last_name": lead["last_name"],
                "email": lead["email"],
                "email_norm": lead["email_norm"],
                "account_id": account_id,
                "phone": lead["phone"],
                "title": lead["title"],
                "owner_id": lead["owner_id"],
                "source": "conversion",
            }
            contact_id = await crm.create(conn, "contacts", org_id, contact)
            created = [("accounts", account_id, account), ("contacts", contact_id, contact)]
            deal_id = None
            if deal_body is not None:
                deal = await _validate(
                    conn, "deals", org_id, {"name": account_name, **deal_body}, partial=False
                )
                deal.update(account_id=account_id, contact_id=contact_id, owner_id=lead["owner_id"])
                deal_id = await crm.create(conn, "deals", org_id, deal)
                created.append(("deals", deal_id, deal))
            if not await crm.mark_converted(
                conn, org_id, lead_id, account_id=account_id, contact_id=contact_id, deal_id=deal_id
            ):
                # Converted by a simultaneous request: raising rolls back our account and contact.
                raise ApiError(409, "already_converted", "this lead was already converted")
            converted = await crm.get(conn, "leads", org_id, lead_id)
            await events.append(
                conn,
                [
                    *(
                        record_created(
                            org_id,
                            module=module,
                            record_id=rid,
                            source="conversion",
                            values=values,
                            user_id=user["id"],
                        )
                        for module, rid, values in created
                    ),
                    record_event(
                        EventType.RECORD_UPDATED,
                        org_id,
                        module="leads",
                        record_id=lead_id,
                        source="conversion",
                        changed=changed_fields(lead, converted),
                        user_id=user["id"],
                    ),
                    record_converted(
                        org_id,
                        lead_id=lead_id,
                        account_id=account_id,
                        contact_id=contact_id,
                        deal_id=deal_id,
                        user_id=user["id"],
                    ),
                ],
            )
        return JSON(
            {
                "lead_id": lead_id,
                "account_id": account_id,
                "contact_id": contact_id,
                "deal_id": deal_id,
            }
        )

    async def record_emails(self, request: Request) -> Response:
        """The mail filed on the record that the asker may see (sharing rules), filtered.

        A deal's list is the mail filed on the deal (a send to the deal), not every
        mail of its contact.
        """
        user = await self.user(request)
        module = _module(request)
        rid = path_id(request)
        limit = int_param(request, "limit", 100, lo=1, hi=500)
        after = int_param(request, "cursor", 0)
        rows = await record_mail(self.db, request, user, module, rid, after=after, limit=limit)
        return JSON(page(rows, limit, email_item))
