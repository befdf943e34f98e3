"""Validate, compile and render mail templates in a Jinja sandbox.

Template authors are CRM users, and merge values come from leads who typed them
into web forms, so both sides are hostile input:

* rendering happens in :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`
  with no globals at all (no ``range``/``lipsum``/``cycler``/``joiner``/
  ``namespace``) and without the ``safe``/``attr`` filters;
* save-time validation walks the template's AST and refuses any name or
  attribute that is not in the merge-field catalogue, any call, the arithmetic
  operators that can allocate without bound (``*``, ``**`` …), imports,
  includes, macros and ``{% autoescape %}`` (which would switch off the
  HTML-escaping of merge values);
* merge values are data: Jinja never re-reads them as template source.

Everything costly happens once in :func:`compile_template` (cached): hosted-CRM
syntax translation, header/footer wrapping, CSS inlining on the template
*source*, and deriving the text part from the HTML.  Per message only three
compiled Jinja templates run.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import css_inline
from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, nodes
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from templates import fields
from templates.crm_syntax import UnknownLabel, translate
from templates.htmltext import html_to_text

PARTS = ("subject", "html", "text", "header", "footer")


class TemplateProblem(ValueError):
    """A template that cannot be saved: names the part, the field and the line."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        part: str | None = None,
    ) -> None:
        self.message = message
        self.field = field
        self.line = line
        self.part = part
        where = f"{part} line {line}" if part and line else (part or "")
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    html: str
    text: str


class _MergeEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with a fast path for our context's plain dicts.

    Jinja tries ``getattr(dict, name)`` first and only then the key, paying
    for an AttributeError on every merge field.  A key of a plain dict is
    data (build_context only puts str/number/dict values there), and no
    catalogue name is a dict method, so reading the key first is safe.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = _MergeEnvironment(
        autoescape=autoescape,
        # Block tags on their own line leave no blank line in plain text.
        trim_blocks=not autoescape,
        lstrip_blocks=not autoescape,
        undefined=ChainableUndefined,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.globals.clear()
    # `safe` would let an author unescape a lead's value in HTML; `attr`
    # would dodge the catalogue check.
    for name in ("safe", "attr"):
        env.filters.pop(name, None)
    return env


_HTML_ENV = _environment(autoescape=True)
_BLANK_RUN = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TEXT_ENV = _environment(autoescape=False)

# Node types a merge template never needs and that widen the attack surface.
_REFUSED: dict[type[nodes.Node], str] = {
    nodes.Extends: "{% extends %} is not allowed",
    nodes.Include: "{% include %} is not allowed",
    nodes.Import: "{% import %} is not allowed",
    nodes.FromImport: "{% from … import %} is not allowed",
    nodes.Macro: "{% macro %} is not allowed",
    nodes.CallBlock: "{% call %} is not allowed",
    nodes.Call: "calling functions is not allowed; use a filter",
    nodes.Mul: "the * operator is not allowed",
    nodes.Pow: "the ** operator is not allowed",
    nodes.Div: "the / operator is not allowed",
    nodes.FloorDiv: "the // operator is not allowed",
    nodes.Mod: "the % operator is not allowed",
    nodes.ScopedEvalContextModifier: "{% autoescape %} is not allowed",
    nodes.EvalContextModifier: "{% autoescape %} is not allowed",
}
_MAX_INT = 10_000  # bounds filter arguments such as center(n) and truncate(n)


# --------------------------------------------------------------------------- validation


def validate(
    subject: str,
    html: str,
    text: str | None = None,
    header: str | None = None,
    footer: str | None = None,
    module: str = "leads",
) -> None:
    """Refuse a template with an unknown merge field or a syntax error.

    Raises :class:`TemplateProblem` for the first problem found, naming the
    part, the field (``lead.fax``, ``${Leads.Fax}``) and the line.
    """
    module = fields.normalise_module(module)
    for part, source in zip(PARTS, (subject, html, text, header, footer), strict=True):
        if source:
            _checked(part, source, module)


def _checked(part: str, source: str, module: str) -> str:
    """Translate ``source`` to Jinja and check it; returns the translation."""
    try:
        jinja = translate(source)
    except UnknownLabel as exc:
        raise TemplateProblem(
            f"unknown merge field {exc.field}", field=exc.field, line=exc.line, part=part
        ) from None
    try:
        tree = _TEXT_ENV.parse(jinja)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(exc.message or "syntax error", line=exc.lineno, part=part) from None
    _check_tree(tree, module, part)
    try:  # unknown filters and tests are only found by compiling
        _TEXT_ENV.compile(tree)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise TemplateProblem(exc.message or str(exc), line=line, part=part) from None
    return jinja


def _check_tree(tree: nodes.Template, module: str, part: str) -> None:
    allowed = fields.top_level(module)
    local = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    local.add("loop")

    def problem(message: str, node: nodes.Node, field: str | None = None) -> TemplateProblem:
        return TemplateProblem(message, field=field, line=node.lineno, part=part)

    def visit(node: nodes.Node) -> None:
        for kind, message in _REFUSED.items():
            if isinstance(node, kind):
                raise problem(message, node)
        if isinstance(node, nodes.Const) and isinstance(node.value, int):
            if abs(node.value) > _MAX_INT:
                raise problem(f"number {node.value} is too large", node)
        if isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Name):
            path, root, rest = _reference(node)
            private = next((p for p in path if p.startswith("_")), None)
            if private is not None:
                raise problem(f"{private} is not a merge field", node, field=private)
            if isinstance(root, nodes.Name):
                if root.ctx == "load":
                    _check_reference(path, node)
            elif root is not node:
                raise problem("attributes are only allowed on merge fields", node)
            for child in rest:
                visit(child)
            return
        for child in node.iter_child_nodes():
            visit(child)

    def _check_reference(path: list[str], node: nodes.Node) -> None:
        name = path[0]
        if name in local:
            return
        if name not in allowed:
            raise problem(f"unknown merge field {name}", node, field=name)
        for end in range(2, len(path) + 1):
            if not fields.lookup(module, tuple(path[:end])):
                dotted = ".".join(path[:end])  # name the first unknown part
                raise problem(f"unknown merge field {dotted}", node, field=dotted)

    visit(tree)


def _reference(node: nodes.Node) -> tuple[list[str], nodes.Node, list[nodes.Node]]:
    """Split ``a.b['c'][0].d`` into the field path up to the first non-name
    subscript (``['a', 'b', 'c']``), the root node, and the nodes still to
    visit (subscript expressions).
    """
    chain: list[nodes.Node] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        chain.append(node)
        node = node.node
    chain.reverse()
    rest: list[nodes.Node] = []
    path: list[str] = [node.name] if isinstance(node, nodes.Name) else []
    stopped = False
    for link in chain:
        if isinstance(link, nodes.Getattr):
            # After a subscript (lead.x[0].y) the name stays in the path: the
            # catalogue has no such leaf, so the reference is refused.
            path.append(link.attr)
        elif isinstance(link.arg, nodes.Const) and isinstance(link.arg.value, str) and not stopped:
            path.append(link.arg.value)
        else:
            stopped = True
            rest.append(link.arg)
    return path, node, rest


# --------------------------------------------------------------------------- compiling


class CompiledTemplate:
    """A template ready to render many messages; build with :func:`compile_template`."""

    __slots__ = ("module", "_subject", "_html", "_text", "html_source", "text_source")

    def __init__(self, module: str, subject: Template, html: Template, text: Template,
                 html_source: str, text_source: str) -> None:  # fmt: skip
        self.module = module
        self._subject = subject
        self._html = html
        self._text = text
        #: The final Jinja sources (after translation, wrapping, CSS inlining).
        self.html_source = html_source
        self.text_source = text_source

    def render(self, context: Mapping[str, Any]) -> Rendered:
        """Render for one recipient; ``context`` comes from :func:`build_context`."""
        subject = self._subject.render(context)
        return Rendered(
            # A merge value must not break the Subject header: one line.
            subject=" ".join(subject.split()),
            html=self._html.render(context),
            text=_BLANK_RUN.sub("\n\n", self._text.render(context)),
        )


@functools.lru_cache(maxsize=512)
def compile_template(
    subject: str,
    html: str,
    text: str | None = None,
    header: str | None = None,
    footer: str | None = None,
    module: str = "leads",
) -> CompiledTemplate:
    """Validate and compile once; identical arguments return the cached object.

    Raises :class:`TemplateProblem` like :func:`validate`.
    """
    module = fields.normalise_module(module)
    sources = {
        part: _checked(part, source, module) if source else ""
        for part, source in zip(PARTS, (subject, html, text, header, footer), strict=True)
    }
    body = _wrap(sources["html"], sources["header"], sources["footer"])
    if sources["text"]:
        text_source = "".join(
            (
                _derive_text(sources["header"]) + "\n" if sources["header"] else "",
                sources["text"],
                "\n" + _derive_text(sources["footer"]) if sources["footer"] else "",
            )
        )
    else:
        text_source = _derive_text(body)
    html_source = _inline_css(body)
    # The derived sources are rearrangements of checked code; check them
    # again so no rearrangement can produce something the validator refused.
    for part, source in (("html", html_source), ("text", text_source)):
        try:
            _check_tree(_TEXT_ENV.parse(source), module, part)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(
                f"could not prepare the {part} part ({exc.message}); "
                "keep Jinja blocks balanced within one HTML element, or give a text part",
                line=exc.lineno,
                part=part,
            ) from None
    return CompiledTemplate(
        module,
        _TEXT_ENV.from_string(sources["subject"]),
        _HTML_ENV.from_string(html_source),
        _TEXT_ENV.from_string(text_source),
        html_source,
        text_source,
    )


compile = compile_template  # noqa: A001 - the name the API layer uses


def render(compiled: CompiledTemplate, context: Mapping[str, Any]) -> Rendered:
    return compiled.render(context)


_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)


def _wrap(html: str, header: str, footer: str) -> str:
    """Put the header and footer inside ``<body>`` when there is one."""
    if not header and not footer:
        return html
    opening = _BODY_OPEN.search(html)
    closing = _BODY_CLOSE.search(html)
    if opening and closing and opening.end() <= closing.start():
        return "".join(
            (html[: opening.end()], header, html[opening.end() : closing.start()], footer,
             html[closing.start() :])
        )  # fmt: skip
    return "\n".join(part for part in (header, html, footer) if part)


# Jinja constructs inside HTML; a string literal containing "}}" is the one
# case this misses, and the re-check in compile_template catches the result.
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_PUA_OPEN, _PUA_CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(r'\ue000(\d+)\ue001|<!--mgj(\d+)-->|\s?data-mgj(\d+)(?:="")?')


def _mask(source: str, html_aware: bool) -> tuple[str, Callable[[str], str]]:
    """Hide Jinja constructs from an HTML processor and return a restorer.

    ``html_aware`` picks placeholders that survive an HTML5 parser at each
    position: a comment between elements (text there would be
    foster-parented out of a table), a private-use token inside attribute
    values, a dummy attribute between attributes.
    """
    source = source.replace(_PUA_OPEN, "").replace(_PUA_CLOSE, "")
    pieces: list[str] = []
    originals: list[str] = []
    state = "text"
    last = 0
    for match in _JINJA.finditer(source):
        between = source[last : match.start()]
        state = _scan(between, state)
        pieces.append(between)
        index = len(originals)
        originals.append(match.group(0))
        if not html_aware or state in ("dq", "sq"):
            pieces.append(f"{_PUA_OPEN}{index}{_PUA_CLOSE}")
        elif state == "tag":
            pieces.append(f" data-mgj{index} ")
        else:
            pieces.append(f"<!--mgj{index}-->")
        last = match.end()
    pieces.append(source[last:])

    def restore(processed: str) -> str:
        def put(m: re.Match[str]) -> str:
            token, comment, attribute = m.groups()
            if attribute is not None:
                return " " + originals[int(attribute)]
            return originals[int(token or comment)]

        return _PLACEHOLDER.sub(put, processed)

    return "".join(pieces), restore


def _scan(html: str, state: str) -> str:
    """Track whether the end of ``html`` is in text, a tag, or a quoted value."""
    i, n = 0, len(html)
    while i < n:
        ch = html[i]
        if state == "text":
            if ch == "<" and i + 1 < n and (html[i + 1].isalpha() or html[i + 1] in "/!?"):
                state = "tag"
        elif state == "tag":
            if ch == '"':
                state = "dq"
            elif ch == "'":
                state = "sq"
            elif ch == ">":
                state = "text"
        elif state == "dq" and ch == '"' or state == "sq" and ch == "'":
            state = "tag"
        i += 1
    return state


_STYLED = re.compile(r"<style\b|<link\b", re.IGNORECASE)
_DOCUMENT = re.compile(r"<html\b|<body\b", re.IGNORECASE)
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_style_tags=False)


def _inline_css(source: str) -> str:
    """Inline ``<style>`` rules into ``style=""`` once, on the template source."""
    if not _STYLED.search(source):
        return source
    masked, restore = _mask(source, html_aware=True)
    inlined = _INLINER.inline(masked)
    if not _DOCUMENT.search(source):
        opening, closing = _BODY_OPEN.search(inlined), _BODY_CLOSE.search(inlined)
        if opening and closing:
            inlined = inlined[opening.end() : closing.start()]
    return restore(inlined)


def _derive_text(html: str) -> str:
    masked, restore = _mask(html, html_aware=False)
    return restore(html_to_text(masked))


# --------------------------------------------------------------------------- context


def full_name(first: Any, last: Any, locale: str) -> str:
    """Name order by org locale: ja is 姓 名 (last first), others First Last."""
    first_s, last_s = str(first or "").strip(), str(last or "").strip()
    ordered = (last_s, first_s) if locale.lower().startswith("ja") else (first_s, last_s)
    return " ".join(p for p in ordered if p)


def build_context(
    module: str,
    record: Mapping[str, Any],
    related: Mapping[str, Mapping[str, Any] | None] | None = None,
    user: Mapping[str, Any] | None = None,
    org: Mapping[str, Any] | None = None,
    *,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    """Plain dicts for a template of ``module``: only catalogued fields.

    ``related`` holds the records a field path reaches through: ``account``
    (contact.account_id / deal.account_id) and ``contact`` (deal.contact_id).
    Empty values are left out so ``| default('お客様')`` applies to them.
    ``org["locale"]`` (default ``en``) orders ``full_name``.
    """
    module = fields.normalise_module(module)
    org = org or {}
    locale = str(org.get("locale") or "en")
    name, catalogue = fields.MODULES[module]
    context: dict[str, Any] = {
        name: _project(catalogue, record, related or {}, locale),
        "user": _project(fields.USER, user or {}, {}, locale),
        "org": _project(fields.ORG, org, {}, locale),
    }
    user_ctx = context["user"]
    if "name" not in user_ctx and "full_name" in user_ctx:
        user_ctx["name"] = user_ctx["full_name"]
    if unsubscribe_url:
        context["unsubscribe_url"] = unsubscribe_url
    return context


def _project(
    catalogue: fields.Fields,
    data: Mapping[str, Any],
    related: Mapping[str, Mapping[str, Any] | None],
    locale: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, sub in catalogue.items():
        if sub is not None:
            source = related.get(key) or data.get(key)
            if not isinstance(source, Mapping) and data.get(f"{key}_name"):
                source = {"name": data[f"{key}_name"]}  # e.g. contact.account_name
            out[key] = _project(sub, source if isinstance(source, Mapping) else {}, {}, locale)
        elif key in fields.DERIVED:
            value = full_name(data.get("first_name"), data.get("last_name"), locale)
            if value:
                out[key] = value
        else:
            value = _plain(data.get(key))
            if value is not None:
                out[key] = value
    return out


def _plain(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str | int | float | Decimal) and not isinstance(value, bool):
        return value
    return str(value)
