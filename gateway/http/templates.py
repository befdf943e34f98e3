"""Templates over HTTP: create, list, read, save a new version, preview against a record.

Every save is validated (merge fields must exist for the template's module),
compiled once and rendered once against an empty record, so a template that
saves is a template that renders within the limits
(:class:`templates.render.RenderLimits`).  Compiling and rendering run in a
thread of their own, never on the event loop: a costly template
stops at its budget there while health checks, tracking and other requests
go on answering.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.config import Settings
from gateway.http.auth import int_param, page
from gateway.http.errors import JSON, ApiError
from gateway.http.jsonutil import path_id, read_json
from gateway.http.resource import Resource
from storage import crm, orgs, templates_store
from templates.render import (
    Rendered,
    RenderLimits,
    TemplateLimit,
    TemplateProblem,
    build_context,
    compile_template,
    configure,
    validate,
)

TEMPLATE_FIELDS = ("name", "module", "subject", "html", "text", "header", "footer")
MAX_PART = 512 * 1024
#: One render thread: under the GIL a second would not run in parallel, only take
#: more turns from the event loop.  Renders also yield the GIL every 64 steps.
_RENDER_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="template-render")
_SAMPLE_UNSUBSCRIBE = "https://example.invalid/u/preview"
T = TypeVar("T")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run template work in the render pool, so the event loop keeps answering."""
    return await asyncio.get_running_loop().run_in_executor(
        _RENDER_POOL, functools.partial(fn, *args)
    )


def configure_limits(settings: Settings) -> None:
    """Apply the ``template_*`` settings to every render in this process (API and sending)."""
    configure(
        RenderLimits(
            max_steps=settings.template_max_steps,
            max_string=settings.template_max_string,
            max_chars=settings.template_max_chars,
            seconds=settings.template_render_seconds,
        )
    )


def template_problem(exc: TemplateProblem) -> ApiError:
    """422 naming part, field and line; a cost limit is 413 or 422 naming the limit."""
    if isinstance(exc, TemplateLimit):
        return ApiError(exc.status, "template_too_costly", str(exc), limit=exc.limit)
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
        if len(value) > MAX_PART:
            raise ApiError(413, "too_large", f"{key} is longer than {MAX_PART} characters")
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
    """Validate, compile and render once against an empty record (in the render pool).

    The trial render is what refuses a template whose loops or strings
    exceed the limits at save time, not at its first send.
    """
    module = values["module"]
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
            module,
        ).render(build_context(module, {}, unsubscribe_url=_SAMPLE_UNSUBSCRIBE))
    except TemplateProblem as exc:
        raise template_problem(exc) from None
    except RecursionError:
        raise ApiError(422, "invalid_template", "the template nests too deeply") from None


def _preview(row: dict[str, Any], context: dict[str, Any]) -> Rendered:
    try:
        compiled = compile_template(
            row["subject"], row["html"], row["text"], row["header"], row["footer"], row["module"]
        )
        return compiled.render(context)
    except TemplateProblem as exc:
        raise template_problem(exc) from None
    except RecursionError:
        raise ApiError(422, "invalid_template", "the template nests too deeply") from None


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
        await off_loop(_check_template, values)
        async with self.db.begin() as conn:
            tid = await templates_store.create(conn, user["org_id"], user["id"], values)
            row = await templates_store.get(conn, user["org_id"], tid)
        return JSON(template_json(row), status_code=201)

    async def list_templates(self, request: Request) -> Response:
        user = await self.user(request)
        limit = int_param(request, "limit", 100, lo=1, hi=500)
        after = int_param(request, "cursor", 0)
        module = request.query_params.get("module")
        if module is not None and module not in crm.MODULES:
            raise ApiError(400, "bad_parameter", f"module must be one of {', '.join(crm.MODULES)}")
        async with self.db.connect() as conn:
            rows = await templates_store.list_page(
                conn, user["org_id"], after=after, limit=limit + 1, module=module
            )
        return JSON(page(rows, limit, template_json))

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
            await off_loop(_check_template, merged)
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
            org = await orgs.get_org(conn, user["org_id"])
        if module != row["module"]:
            raise ApiError(
                422, "module_mismatch", f"this template is for {row['module']}, not {module}"
            )
        context = build_context(
            module, record, related, user, org, unsubscribe_url=_SAMPLE_UNSUBSCRIBE
        )
        rendered = await off_loop(_preview, row, context)
        return JSON({"subject": rendered.subject, "html": rendered.html, "text": rendered.text})
