"""Templates, sending, quota and suppressions over HTTP.

``POST /api/v1/emails`` sends individual mail; ``POST /api/v1/emails/bulk``
is the mass path (one template or content to many records, counted against
the mass quota, ``List-Unsubscribe-Post`` one-click).  Both answer 202 only
after the sends, their quota and their filed copies are committed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from gateway.addresses import normalise
from gateway.http.auth import current_user, int_param, path_id, read_json
from gateway.http.errors import JSON, ApiError
from gateway.sending.submit import Content, QuotaExceeded, SendRequest, enqueue
from gateway.sending.usage import org_quota
from storage import crm, events, templates_store
from storage import orgs as org_store
from storage import sends as send_store
from storage import suppressions as suppression_store
from storage.events import NewEvent
from storage.schema_sending import org_addresses
from templates.render import TemplateProblem, build_context, compile_template, validate

TEMPLATE_FIELDS = ("name", "module", "subject", "html", "text", "header", "footer")
MAX_PART = 512 * 1024
MAX_RECIPIENTS = {"individual": 100, "mass": 5000}


# --------------------------------------------------------------------------- templates


def _template_problem(exc: TemplateProblem) -> ApiError:
    return ApiError(
        422,
        "invalid_template",
        str(exc),
        field=exc.field,
        line=exc.line,
        part=exc.part,
    )


def _template_values(body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    unknown = sorted(set(body) - set(TEMPLATE_FIELDS))
    if unknown:
        raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, value in body.items():
        if value is None and key in ("text", "header", "footer"):
            values[key] = None
            continue
        if not isinstance(value, str):
            raise ApiError(422, "invalid_field", f"{key} must be a string")
        if len(value) > MAX_PART or "\x00" in value:
            raise ApiError(422, "invalid_field", f"{key} is too long or contains NUL")
        values[key] = value
    if "module" in values:
        module = values["module"].strip().lower()
        if module not in crm.MODULES:
            raise ApiError(422, "invalid_field", f"module must be one of {', '.join(crm.MODULES)}")
        values["module"] = module
    if "name" in values:
        values["name"] = values["name"].strip()[:200]
    if not partial:
        for required in ("name", "module", "subject", "html"):
            if not values.get(required):
                raise ApiError(422, "missing_field", f"{required} is required")
    return values


def _check_template(values: dict[str, Any]) -> None:
    try:
        validate(
            values["subject"],
            values["html"],
            values.get("text"),
            values.get("header"),
            values.get("footer"),
            module=values["module"],
        )
        compile_template(
            values["subject"],
            values["html"],
            values.get("text"),
            values.get("header"),
            values.get("footer"),
            values["module"],
        )
    except TemplateProblem as exc:
        raise _template_problem(exc) from None


def template_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "version": row["version"],
        **{k: row[k] for k in TEMPLATE_FIELDS},
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def create_template(request: Request) -> Response:
    user = await current_user(request)
    values = _template_values(await read_json(request), partial=False)
    _check_template(values)
    async with request.app.state.services.db.begin() as conn:
        tid = await templates_store.create(conn, user["org_id"], user["id"], values)
        row = await templates_store.get(conn, user["org_id"], tid)
    return JSON(template_json(row), status_code=201)


async def list_templates(request: Request) -> Response:
    user = await current_user(request)
    limit = int_param(request, "limit", 100, lo=1, hi=500)
    after = int_param(request, "cursor", 0)
    async with request.app.state.services.db.connect() as conn:
        rows = await templates_store.list_page(
            conn, user["org_id"], after=after, limit=limit + 1,
            module=request.query_params.get("module"),
        )  # fmt: skip
    nxt = str(rows[limit - 1]["id"]) if len(rows) > limit else None
    return JSON({"items": [template_json(r) for r in rows[:limit]], "next": nxt})


async def get_template(request: Request) -> Response:
    user = await current_user(request)
    async with request.app.state.services.db.connect() as conn:
        row = await templates_store.get(conn, user["org_id"], path_id(request))
    if row is None:
        raise ApiError(404, "not_found", "no such template")
    return JSON(template_json(row))


async def update_template(request: Request) -> Response:
    user = await current_user(request)
    tid = path_id(request)
    values = _template_values(await read_json(request), partial=True)
    async with request.app.state.services.db.begin() as conn:
        row = await templates_store.get(conn, user["org_id"], tid, for_update=True)
        if row is None:
            raise ApiError(404, "not_found", "no such template")
        merged = {**{k: row[k] for k in TEMPLATE_FIELDS}, **values}
        _check_template(merged)
        await templates_store.save_version(conn, row, values)
        row = await templates_store.get(conn, user["org_id"], tid)
    return JSON(template_json(row))


async def _record_context(
    conn, org_id: int, module: str, rid: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A record and the related records its merge fields reach (account, contact)."""
    if module not in crm.MODULES:
        raise ApiError(422, "invalid_field", f"module must be one of {', '.join(crm.MODULES)}")
    record = await crm.get(conn, module, org_id, rid)
    if record is None:
        raise ApiError(404, "not_found", f"no such {module[:-1]}")
    related: dict[str, Any] = {}
    if record.get("account_id"):
        related["account"] = await crm.get(conn, "accounts", org_id, record["account_id"])
    if module == "deals" and record.get("contact_id"):
        related["contact"] = await crm.get(conn, "contacts", org_id, record["contact_id"])
    return record, related


async def preview_template(request: Request) -> Response:
    user = await current_user(request)
    tid = path_id(request)
    body = await read_json(request)
    module, rid = body.get("module", ""), body.get("id")
    if not isinstance(module, str) or not isinstance(rid, int) or isinstance(rid, bool):
        raise ApiError(422, "invalid_field", 'body must be {"module": "leads", "id": 123}')
    async with request.app.state.services.db.connect() as conn:
        row = await templates_store.get(conn, user["org_id"], tid)
        if row is None:
            raise ApiError(404, "not_found", "no such template")
        record, related = await _record_context(conn, user["org_id"], module, rid)
        org = await org_store.get_org(conn, user["org_id"])
    if module != row["module"]:
        raise ApiError(
            422, "module_mismatch", f"this template is for {row['module']}, not {module}"
        )
    try:
        compiled = compile_template(
            row["subject"], row["html"], row["text"], row["header"], row["footer"], row["module"]
        )
    except TemplateProblem as exc:
        raise _template_problem(exc) from None
    context = build_context(
        module, record, related, user, org, unsubscribe_url="https://example.invalid/u/preview"
    )
    rendered = compiled.render(context)
    return JSON({"subject": rendered.subject, "html": rendered.html, "text": rendered.text})


# --------------------------------------------------------------------------- sending


def _recipients(body: dict[str, Any], kind: str) -> list[tuple[str, int]]:
    to = body.get("to")
    if not isinstance(to, list) or not to:
        raise ApiError(422, "missing_field", 'to must be a non-empty list of {"module", "id"}')
    if len(to) > MAX_RECIPIENTS[kind]:
        raise ApiError(
            422, "too_many_recipients", f"at most {MAX_RECIPIENTS[kind]} recipients per request"
        )
    out = []
    for item in to:
        if not isinstance(item, dict):
            raise ApiError(422, "invalid_field", 'each recipient must be {"module", "id"}')
        module, rid = item.get("module"), item.get("id")
        if not isinstance(module, str) or not isinstance(rid, int) or isinstance(rid, bool):
            raise ApiError(422, "invalid_field", 'each recipient must be {"module", "id"}')
        out.append((module, rid))
    return out


async def _content(conn, org_id: int, body: dict[str, Any]) -> Content:
    tid = body.get("template_id")
    if tid is not None:
        if not isinstance(tid, int) or isinstance(tid, bool):
            raise ApiError(422, "invalid_field", "template_id must be an integer")
        if any(body.get(k) is not None for k in ("subject", "html", "text")):
            raise ApiError(422, "invalid_field", "give template_id or subject/html/text, not both")
        row = await templates_store.get(conn, org_id, tid)
        if row is None:
            raise ApiError(422, "invalid_field", f"template {tid} does not exist")
        return Content(
            subject=row["subject"],
            html=row["html"],
            text=row["text"],
            header=row["header"],
            footer=row["footer"],
            module=row["module"],
            template_id=row["id"],
            template_version=row["version"],
        )
    subject, html, text = body.get("subject"), body.get("html"), body.get("text")
    if not isinstance(subject, str) or not subject.strip():
        raise ApiError(422, "missing_field", "subject (or template_id) is required")
    if html is None and text is None:
        raise ApiError(422, "missing_field", "html or text is required")
    for key, value in (("html", html), ("text", text)):
        if value is not None and (not isinstance(value, str) or len(value) > MAX_PART):
            raise ApiError(422, "invalid_field", f"{key} must be a string under {MAX_PART} bytes")
    return Content(subject=subject, html=html or "", text=text)


def _check_inline(content: Content, modules: set[str]) -> None:
    if content.template_id is not None:
        return
    for module in sorted(modules & {"leads", "contacts"}):
        try:
            compile_template(content.subject, content.html, content.text, None, None, module)
        except TemplateProblem as exc:
            raise _template_problem(exc) from None


async def _from_address(conn, user: dict[str, Any], given: Any) -> tuple[str, str]:
    """The user's own address, or one of the org's shared addresses."""
    if given is None:
        return user["email"], user["name"]
    name = None
    if isinstance(given, dict):
        name, given = given.get("name"), given.get("email")
    if not isinstance(given, str) or (name is not None and not isinstance(name, str)):
        raise ApiError(422, "invalid_field", 'from must be an address or {"email", "name"}')
    norm = normalise(given)
    if norm is None:
        raise ApiError(422, "invalid_field", f"from {given!r} is not an email address")
    if norm == user["email_norm"]:
        return user["email"], name if name is not None else user["name"]
    q = select(org_addresses).where(
        org_addresses.c.org_id == user["org_id"], org_addresses.c.email_norm == norm
    )
    row = (await conn.execute(q)).mappings().first()
    if row is None:
        raise ApiError(
            422,
            "from_not_allowed",
            f"{given} is neither your address nor one of the organization's addresses",
        )
    return norm, name if name is not None else row["name"]


async def _send(request: Request, kind: str) -> Response:
    user = await current_user(request)
    body = await read_json(request)
    services = request.app.state.services
    if kind == "individual" and body.get("kind") == "mass":
        kind = "mass"
    defer = body.get("defer_excess", False)
    if not isinstance(defer, bool):
        raise ApiError(422, "invalid_field", "defer_excess must be true or false")
    to = _recipients(body, kind)
    async with services.db.connect() as conn:
        content = await _content(conn, user["org_id"], body)
        from_email, from_name = await _from_address(conn, user, body.get("from"))
        org = await org_store.get_org(conn, user["org_id"])
    _check_inline(content, {m for m, _ in to})
    req = SendRequest(
        org=org,
        user=user,
        kind=kind,
        to=to,
        content=content,
        from_email=from_email,
        from_name=from_name,
        defer_excess=defer,
    )
    try:
        accepted = await services.db.run_write(enqueue, req, services.signer, services.clock.now())
    except QuotaExceeded as exc:
        raise ApiError(
            429,
            "quota_exceeded",
            str(exc),
            resets_at=exc.resets_at.isoformat(),
            kind=exc.kind,
            limit=exc.limit,
            used=exc.used,
            requested=exc.requested,
        ) from None
    except TemplateProblem as exc:
        raise _template_problem(exc) from None
    except ValueError as exc:  # a header the composer refused (e.g. a line break in a name)
        raise ApiError(422, "cannot_compose", str(exc)) from None
    if services.relay_worker is not None and accepted.sends:
        services.relay_worker.wake()
    return JSON({"sends": accepted.sends, "skipped": accepted.skipped}, status_code=202)


async def send_emails(request: Request) -> Response:
    return await _send(request, "individual")


async def send_bulk(request: Request) -> Response:
    return await _send(request, "mass")


async def get_send(request: Request) -> Response:
    user = await current_user(request)
    async with request.app.state.services.db.connect() as conn:
        row = await send_store.get(conn, user["org_id"], path_id(request))
    if row is None:
        raise ApiError(404, "not_found", "no such send")
    keys = (
        "id", "kind", "module", "record_id", "to_email", "from_email", "subject", "template_id",
        "template_version", "message_id", "state", "status", "attempts", "next_attempt_at",
        "last_reply", "sent_at", "bounced_at", "bounce_type", "created_at",
    )  # fmt: skip
    out = {k: row[k] for k in keys}
    out["message_id"] = f"<{row['message_id']}>"
    return JSON(out)


# --------------------------------------------------------------------------- quota, suppressions


async def get_quota(request: Request) -> Response:
    user = await current_user(request)
    services = request.app.state.services
    async with services.db.connect() as conn:
        org = await org_store.get_org(conn, user["org_id"])
        status = await conn.run_sync(org_quota, org, services.clock.now())
    return JSON(status)


async def list_suppressions(request: Request) -> Response:
    user = await current_user(request)
    limit = int_param(request, "limit", 100, lo=1, hi=1000)
    after = int_param(request, "cursor", 0)
    async with request.app.state.services.db.connect() as conn:
        rows = await suppression_store.list_page(conn, user["org_id"], after=after, limit=limit + 1)
    items = [
        {
            "email": r["email_norm"],
            "reason": r["reason"],
            "detail": r["detail"],
            "send_id": r["send_id"],
            "created_at": r["created_at"],
        }
        for r in rows[:limit]
    ]
    nxt = str(rows[limit - 1]["id"]) if len(rows) > limit else None
    return JSON({"items": items, "next": nxt})


async def delete_suppression(request: Request) -> Response:
    user = await current_user(request)
    norm = normalise(request.path_params["email"])
    if norm is None:
        raise ApiError(404, "not_found", "not a suppressed address")
    async with request.app.state.services.db.begin() as conn:
        removed = await suppression_store.lift(conn, user["org_id"], norm)
        if removed is None:
            raise ApiError(404, "not_found", f"{norm} is not suppressed")
        await events.append(
            conn,
            [
                NewEvent(
                    user["org_id"],
                    "suppression.lifted",
                    {"email": norm, "reason": removed["reason"], "user_id": user["id"]},
                )
            ],
        )
    return Response(status_code=204)
