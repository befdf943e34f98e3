"""Mail templates: merge-field catalogue, hosted-CRM syntax, sandboxed rendering."""

from templates.render import (
    CompiledTemplate,
    Rendered,
    TemplateProblem,
    build_context,
    compile_template,
    render,
    validate,
)

__all__ = [
    "CompiledTemplate",
    "Rendered",
    "TemplateProblem",
    "build_context",
    "compile_template",
    "render",
    "validate",
]
