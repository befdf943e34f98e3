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
* merge values are data: Jinja never re-reads them as template source;
* every render runs against a :class:`RenderLimits` budget counted inside the
  sandbox (loop iterations, filter calls, the size of every string it builds,
  the characters it produces, a deadline), so a template that would take
  gigabytes or minutes stops early with a :class:`TemplateLimit`.  The budget
  is cooperative: a render thread cannot be killed, so the bound has to come
  from the sandbox itself, not from a timeout around it.

Everything costly happens once in :func:`compile_template` (cached): hosted-CRM
syntax translation, header/footer wrapping, CSS inlining on the template
*source*, and deriving the text part from the HTML.  Per message only three
compiled Jinja templates run.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import css_inline
from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, nodes, pass_eval_context
from jinja2.exceptions import TemplateError
from jinja2.nodes import EvalContext
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

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


# --------------------------------------------------------------------------- render budget


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """What one render (subject, HTML and text of one message) may cost.

    The setting names (``MAILGATE_TEMPLATE_…``) are what an error names, so an
    operator who meets one knows which knob it is.
    """

    #: Loop iterations, filter calls and string joins, together.
    max_steps: int = 100_000
    #: The longest string (or list, counted as its text) any expression may build.
    max_string: int = 100_000
    #: Characters produced in all: output, intermediate strings and repeated loop text.
    max_chars: int = 4_000_000
    #: Wall-clock seconds, checked as the steps are counted.
    seconds: float = 2.0


class TemplateLimit(TemplateProblem):
    """A template that would cost more than :class:`RenderLimits` allows.

    ``status`` is the HTTP answer: 413 for sizes, 422 for work; ``limit`` names
    the setting.
    """

    def __init__(self, message: str, *, limit: str, status: int = 422) -> None:
        super().__init__(message)
        self.limit, self.status = limit, status


DEFAULT_LIMITS = RenderLimits()
_MAX_INT = 10_000  # bounds filter arguments such as center(n) and truncate(n)
_limits = DEFAULT_LIMITS


def configure(limits: RenderLimits) -> None:
    """Set the process-wide render limits (the server does this from its settings)."""
    global _limits
    _limits = limits


def current_limits() -> RenderLimits:
    return _limits


class _Budget:
    """The running count of one render; every guarded operation charges it."""

    __slots__ = ("limits", "steps", "chars", "deadline")

    def __init__(self, limits: RenderLimits, deadline: float | None = None) -> None:
        self.limits = limits
        self.steps = 0
        self.chars = 0
        now = time.monotonic()
        self.deadline = now + limits.seconds if deadline is None else deadline
        if now > self.deadline:
            raise _too_slow(limits)

    def charge(self, steps: int, chars: int) -> None:
        self.steps += steps
        self.chars += chars
        limits = self.limits
        if self.steps > limits.max_steps:
            raise TemplateLimit(
                f"the template needs more than {limits.max_steps} loop iterations and "
                "filter calls to render (limit template_max_steps)",
                limit="template_max_steps",
            )
        if self.chars > limits.max_chars:
            raise _too_many_chars(limits)
        # The clock is read every 64 steps: cheap, and a step is short.
        if not self.steps & 0x3F and self._tick():
            raise _too_slow(limits)

    def _tick(self) -> bool:
        """Past the deadline?  Also lets other threads (the event loop) have the GIL."""
        time.sleep(0)
        return time.monotonic() > self.deadline


def _too_slow(limits: RenderLimits) -> TemplateLimit:
    return TemplateLimit(
        f"rendering took longer than {limits.seconds:g} s (limit template_render_seconds)",
        limit="template_render_seconds",
    )


def _too_many_chars(limits: RenderLimits) -> TemplateLimit:
    return TemplateLimit(
        f"the template would produce more than {limits.max_chars} characters "
        "(limit template_max_chars)",
        limit="template_max_chars",
        status=413,
    )


def _too_long(limits: RenderLimits) -> TemplateLimit:
    return TemplateLimit(
        f"the template builds a value longer than {limits.max_string} characters "
        "(limit template_max_string)",
        limit="template_max_string",
        status=413,
    )


_BUDGET: ContextVar[_Budget | None] = ContextVar("mailgate_render_budget", default=None)


def _budget() -> _Budget:
    """The running render's budget; a render outside :meth:`CompiledTemplate.render`
    (constant folding while compiling) gets a fresh one."""
    return _BUDGET.get() or _Budget(_limits)


def _weight(value: Any, limit: int) -> int:
    """About how many characters ``value`` is as text; stops counting past ``limit``.

    Lists may hold the same long string many times over, so their text can be
    far larger than their memory: what matters is what ``str()``, ``join`` or
    output would make of them.
    """
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        items: Iterable[Any] = (x for pair in value.items() for x in pair)
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        return 8
    total = 2
    for item in items:
        total += 2 + _weight(item, limit - total)
        if total > limit:
            break
    return total


def _check_size(value: Any, budget: _Budget) -> int:
    size = _weight(value, budget.limits.max_string)
    if size > budget.limits.max_string:
        raise _too_long(budget.limits)
    return size


def _finalize(value: Any) -> Any:
    """Every ``{{ … }}`` passes here before output: count what it writes."""
    budget = _BUDGET.get()
    if budget is not None:
        limits = budget.limits
        size = len(value) if isinstance(value, str) else _weight(value, limits.max_string)
        if size > limits.max_string:
            raise _too_long(limits)
        budget.chars += size  # the hot path: no step, so no clock or step check
        if budget.chars > limits.max_chars:
            raise _too_many_chars(limits)
    return value


@pass_eval_context
def _concat(eval_ctx: EvalContext, left: Any, right: Any) -> str:
    """``a ~ b``, joined pairwise so no join can outgrow the string limit."""
    budget = _budget()
    size = _check_size(left, budget) + _check_size(right, budget)
    if size > budget.limits.max_string:
        raise _too_long(budget.limits)
    budget.charge(1, size)
    return (markup_join if eval_ctx.autoescape else str_join)((left, right))


def _loop(iterable: Any, weight: int) -> Iterator[Any]:
    """A ``{% for %}``'s items, each charged one step plus the text its body repeats."""
    budget = _budget()
    for item in iterable:
        budget.charge(1, weight)
        yield item


def _arg(params: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str, default: Any):
    if len(params) > i:
        return params[i]
    return kwargs.get(name, default)


def _indent_size(value: Any, params: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    text = str(value)
    width = _arg(params, kwargs, 0, "width", 4)
    per_line = len(width) if isinstance(width, str) else int(width)
    return len(text) + (text.count("\n") + 1) * per_line


def _replace_size(value: Any, params: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    text = str(value)
    old, new = str(_arg(params, kwargs, 0, "old", "")), str(_arg(params, kwargs, 1, "new", ""))
    count = _arg(params, kwargs, 2, "count", None)
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * len(new)


def _wordwrap_size(value: Any, params: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    text = str(value)
    width = _arg(params, kwargs, 0, "width", 79)
    wrap = _arg(params, kwargs, 2, "wrapstring", None) or "\n"
    breaks = len(text) // max(int(width), 1) + text.count(" ") + text.count("\n") + 1
    return len(text) + breaks * len(str(wrap))


def _join_size(value: Any, params: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    separator = str(_arg(params, kwargs, 0, "d", ""))
    items = value if isinstance(value, str | list | tuple | Mapping) else ()
    return _weight(items, 1 << 62) + len(items) * len(separator)


_FORMAT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")


def _format_size(value: Any, params: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    text = str(value)
    widths = [int(n) for m in _FORMAT_WIDTH.finditer(text) for n in m.groups() if n]
    if any(w > _MAX_INT for w in widths):
        raise TemplateLimit(
            f"a format width over {_MAX_INT} is not allowed (limit template_max_number)",
            limit="template_max_number",
        )
    return len(text) + _weight(params, 1 << 62) + _weight(kwargs, 1 << 62) + sum(widths)


def _sum_size(value: Any, params: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    start = _arg(params, kwargs, 1, "start", 0)
    if not isinstance(start, int | float | Decimal):
        raise TemplateLimit("sum adds numbers only", limit="template_max_steps")
    return 0


#: Filters whose output can be much larger than their input: checked before they run.
_ESTIMATES: dict[str, Callable[[Any, tuple[Any, ...], Mapping[str, Any]], int]] = {
    "indent": _indent_size,
    "replace": _replace_size,
    "wordwrap": _wordwrap_size,
    "join": _join_size,
    "format": _format_size,
    "sum": _sum_size,
}
#: Filters whose numeric arguments are values, not sizes.
_ANY_NUMBER = frozenset({"default", "d", "int", "float"})


def _guarded(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a built-in filter so it is charged, and refused before it can blow up.

    Numbers passed to a filter are sizes (``center(n)``, ``truncate(n)``,
    ``batch(n)``) and stay at most 10,000; the input must be within the
    string limit; the few filters that multiply their input are estimated
    first; whatever comes out is measured.
    """
    pass_arg = getattr(fn, "jinja_pass_arg", None)
    skip = 0 if pass_arg is None else 1
    estimate = _ESTIMATES.get(name)
    check_numbers = name not in _ANY_NUMBER

    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        limits = budget.limits
        value, params = args[skip], args[skip + 1 :]
        if check_numbers:
            for param in (*params, *kwargs.values()):
                if type(param) is int and abs(param) > _MAX_INT:
                    raise TemplateLimit(
                        f"the number {param} given to {name} is over {_MAX_INT} "
                        "(limit template_max_number)",
                        limit="template_max_number",
                    )
        if name == "join" and not isinstance(value, str | list | tuple | Mapping):
            value = list(_loop(value, 0))
            args = (*args[:skip], value, *params)
        _check_size(value, budget)
        if estimate is not None and estimate(value, params, kwargs) > limits.max_string:
            raise _too_long(limits)
        budget.charge(1, 0)
        result = fn(*args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            budget.charge(0, _check_size(result, budget))
        return result

    if pass_arg is not None:
        guarded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return guarded


class _Bounded(NodeTransformer):
    """Rewrites a parsed template so loops and joins go through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        # Each iteration repeats the body's literal text: charge it up front.
        weight = sum(len(d.data) for n in node.body for d in n.find_all(nodes.TemplateData))
        node.iter = nodes.Filter(
            node.iter, "mailgate:loop", [nodes.Const(weight)], [], None, None, lineno=node.lineno
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        joined = node.nodes[0]
        for right in node.nodes[1:]:
            joined = nodes.Filter(
                joined, "mailgate:concat", [right], [], None, None, lineno=node.lineno
            )
        return joined


class _MergeEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with a fast path for our context's plain dicts.

    Jinja tries ``getattr(dict, name)`` first and only then the key, paying
    for an AttributeError on every merge field.  A key of a plain dict is
    data (build_context only puts str/number/dict values there), and no
    catalogue name is a dict method, so reading the key first is safe.
    """

    #: ``+`` on strings or lists can double a value per use: sized like ``~``.
    intercepted_binops = frozenset({"+"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if isinstance(left, int | float | Decimal) and isinstance(right, int | float | Decimal):
            return left + right
        budget = _budget()
        size = _check_size(left, budget) + _check_size(right, budget)
        if size > budget.limits.max_string:
            raise _too_long(budget.limits)
        budget.charge(1, size)
        return left + right

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _Bounded().visit(super()._parse(source, name, filename))


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = _MergeEnvironment(
        autoescape=autoescape,
        # Block tags on their own line leave no blank line in plain text.
        trim_blocks=not autoescape,
        lstrip_blocks=not autoescape,
        undefined=ChainableUndefined,
        keep_trailing_newline=True,
        auto_reload=False,
        finalize=_finalize,
    )
    env.globals.clear()
    # `safe` would let an author unescape a lead's value in HTML; `attr`
    # would dodge the catalogue check.
    for name in ("safe", "attr"):
        env.filters.pop(name, None)
    env.filters = {name: _guarded(name, fn) for name, fn in env.filters.items()}
    # Names a template cannot spell (":"), for the rewritten loops and joins.
    env.filters["mailgate:loop"] = _loop
    env.filters["mailgate:concat"] = _concat
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

    def render(
        self,
        context: Mapping[str, Any],
        limits: RenderLimits | None = None,
        *,
        deadline: float | None = None,
    ) -> Rendered:
        """Render for one recipient; ``context`` comes from :func:`build_context`.

        Raises :class:`TemplateLimit` when the three parts together cost more
        than ``limits`` (default: the configured ones).  ``deadline`` (a
        ``time.monotonic()`` value) replaces the per-render time limit, so
        many renders can share one, as the messages of one send request do.
        """
        budget = _Budget(limits or _limits, deadline)
        token = _BUDGET.set(budget)
        try:
            subject = self._subject.render(context)
            html = self._html.render(context)
            text = self._text.render(context)
        finally:
            _BUDGET.reset(token)
        if len(subject) + len(html) + len(text) > budget.limits.max_chars:
            raise _too_many_chars(budget.limits)
        return Rendered(
            # A merge value must not break the Subject header: one line.
            subject=" ".join(subject.split()),
            html=html,
            text=_BLANK_RUN.sub("\n\n", text),
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
