"""Logging for ``mailgate serve``: one line per event, as text or as one JSON object.

``MAILGATE_LOG_FORMAT=json`` writes one JSON object per line (``ts``, ``level``,
``logger``, ``msg``, then whatever context is known: ``request_id`` for an HTTP
request, ``runner`` for a background worker, ``send_id`` / ``inbound_id`` /
``mailbox_id`` where the code names them, and ``exc`` with the whole traceback
as one string), so a log shipper needs no multi-line parsing.  ``text``
(the default) writes the same fields on one readable line.

Context travels in a :mod:`contextvars` variable (:func:`bind`), so it follows
a request or a runner's task through every ``await`` without being passed
around; the runner's name is read from its task name (``runner-<name>``).

Secrets never reach the log: every line goes through :func:`redact`, which
blanks API tokens (``mg_…``), bearer credentials, and the value of anything
called a password, token, secret or key (``password=…``, ``"token": "…"``),
whatever logger wrote it (uvicorn's access log included).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TextIO


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "mailgate_log_context", default=None
)

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (this task and its awaits)."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def set_context(**fields: Any) -> contextvars.Token:
    """:func:`bind` without a block (ASGI middleware); reset with the returned token."""
    return _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})


def reset_context(token: contextvars.Token) -> None:
    _CONTEXT.reset(token)


def context() -> dict[str, Any]:
    """The fields bound here, plus ``runner`` when running inside a runner's task."""
    fields = dict(_CONTEXT.get() or {})
    with contextlib.suppress(RuntimeError):
        task = asyncio.current_task()
        name = task.get_name() if task is not None else ""
        if name.startswith("runner-") and "runner" not in fields:
            fields["runner"] = name.removeprefix("runner-")
    return fields


_SECRET_NAMES = r"(?:password|passwd|pass|secret|token|key|authorization|cookie)"  # noqa: S105
_REDACTIONS = (
    # Bearer/Basic credentials, in a header dump or a message.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    # Our API tokens wherever they appear.
    (re.compile(r"\bmg_[A-Za-z0-9_-]{8,}"), "mg_[redacted]"),
    # name=value (query strings, forms) and "name": "value" (JSON, reprs).
    (
        re.compile(
            r"(?i)([\"']?\b[\w-]*" + _SECRET_NAMES + r"[\"']?\s*[:=]\s*[\"']?)([^\s&\"',;}]+)"
        ),
        r"\1[redacted]",
    ),
)


def redact(text: str) -> str:
    """``text`` with credentials blanked (see the module docstring)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The line's context: what was bound, the runner, and any ``extra=`` fields."""
    fields = context()
    fields.update(
        (k, v) for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    )
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context, and ``exc`` as one field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["exc"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: msg key=value …``; a traceback follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line = f"{ts} {record.levelname} {record.name}: {redact(record.getMessage())}"
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        if extra:
            line += " " + redact(extra)
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def level_of(name: str) -> int:
    """A level name (``debug``, ``INFO`` …) as logging's number; ValueError for anything else."""
    level = logging.getLevelName(name.strip().upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {name!r}; use debug, info, warning, error")
    return level


def configure(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up the root logger for ``serve``: one handler on stderr, the chosen format.

    Replaces any handler already there, so calling it twice does not double lines.
    uvicorn is told not to configure logging (``log_config=None``), so its error
    and access lines come here too, in the same format.
    """
    formatter: logging.Formatter = (
        JsonFormatter() if LogFormat(fmt) is LogFormat.JSON else TextFormatter()
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_of(level))
    # Chatty libraries stay at warning unless debugging (alembic's plugin set-up is 7 lines
    # per start; its migration lines stay).
    quiet = ("aiosqlite", "asyncio", "mail.log", "aiosmtplib", "httpx", "httpcore")
    for name in (*quiet, "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(logging.WARNING if root.level > logging.DEBUG else 0)
