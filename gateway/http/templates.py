"""Templates over HTTP: create, list, read, save a new version, preview against a record.

Every save is validated (merge fields must exist for the template's module)
and compiled once, so a template that saves is a template that renders.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.auth import int_param, path_id, read_json
from gateway.http.errors import JSON, ApiError
from gateway.http.resource import Resource
from storage import crm, templates_store
from storage import orgs as org_store
from templates.render import TemplateProblem, build_context, compile_template, validate

TEMPLATE_FIELDS = ("name", "module", "subject", "html", "text", "header", "footer")
MAX_PART = 512 * 1024


def template_problem(exc: TemplateProblem) -> ApiError:
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
        raise template_problem(exc) from None


def template_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "version": row["version"],
        **{k: row[k] for k in TEMPLATE_FIELDS},
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


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


class TemplatesApi(Resource):
    def routes(self) -> list[Route]:
        t = "/api/v1/templates"
        return [
            Route(t, self.create_template, methods=["POST"]),
            Route(t, self.list_templates, methods=["GET"]),
            Route(t + "/{id}", self.get_template, methods=["GET"]),
            Route(t + "/{id}", self.update_template, methods=["PUT"]),
            Route(t + "/{id}/preview", self.preview_template, methods=["POST"]),
        ]

    async def create_template(self, request: Request) -> Response:
        user = await self.user(request)
        values = _template_values(await read_json(request), partial=False)
        _check_template(values)
        async with self.db.begin() as conn:
            tid = await templates_store.create(conn, user["org_id"], user["id"], values)
            row = await templates_store.get(conn, user["org_id"], tid)
        return JSON(template_json(row), status_code=201)

    async def list_templates(self, request: Request) -> Response:
        user = await self.user(request)
        limit = int_param(request, "limit", 100, lo=1, hi=500)
        after = int_param(request, "cursor", 0)
        async with self.db.connect() as conn:
            rows = await templates_store.list_page(
                conn, user["org_id"], after=after, limit=limit + 1,
                module=request.query_params.get("module"),
            )  # fmt: skip
        nxt = str(rows[limit - 1]["id"]) if len(rows) > limit else None
        return JSON({"items": [template_json(r) for r in rows[:limit]], "next": nxt})

    async def get_template(self, request: Request) -> Response:
        user = await self.user(request)
        async with self.db.connect() as conn:
            row = await templates_store.get(conn, user["org_id"], path_id(request))
        if row is None:
            raise ApiError(404, "not_found", "no such template")
        return JSON(template_json(row))

    async def update_template(self, request: Request) -> Response:
        user = await self.user(request)
        tid = path_id(request)
        values = _template_values(await read_json(request), partial=True)
        async with self.db.begin() as conn:
            row = await templates_store.get(conn, user["org_id"], tid, for_update=True)
            if row is None:
                raise ApiError(404, "not_found", "no such template")
            merged = {**{k: row[k] for k in TEMPLATE_FIELDS}, **values}
            _check_template(merged)
            await templates_store.save_version(conn, row, values)
            row = await templates_store.get(conn, user["org_id"], tid)
        return JSON(template_json(row))

    async def preview_template(self, request: Request) -> Response:
        user = await self.user(request)
        tid = path_id(request)
        body = await read_json(request)
        module, rid = body.get("module", ""), body.get("id")
        if not isinstance(module, str) or not isinstance(rid, int) or isinstance(rid, bool):
            raise ApiError(422, "invalid_field", 'body must be {"module": "leads", "id": 123}')
        async with self.db.connect() as conn:
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
                row["subject"],
                row["html"],
                row["text"],
                row["header"],
                row["footer"],
                row["module"],
            )
        except TemplateProblem as exc:
            raise template_problem(exc) from None
        context = build_context(
            module, record, related, user, org, unsubscribe_url="https://example.invalid/u/preview"
        )
        rendered = compiled.render(context)
        return JSON({"subject": rendered.subject, "html": rendered.html, "text": rendered.text})
