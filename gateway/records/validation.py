"""What a record's address and name must be before mail can carry them.

Checked when a record is created or changed (API and CSV import) and again
when a send is accepted, because records also arrive from the dropbox and
from before these checks existed: a record that fails is skipped with a
reason, it never refuses the rest of the send.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from email_validator import EmailNotValidError, validate_email

#: Characters that end or fold a header line, or that no header may carry.
_HEADER_BREAKING = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
#: The record fields that become the display name in a To: header.
NAME_FIELDS = ("first_name", "last_name")


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot receive mail, or None.  Syntax only: no DNS lookup.

    email-validator knows the rules a regular expression misses (``a@-b.example``,
    ``a..b@x.jp``, reserved domains such as ``.invalid``) and accepts
    internationalised addresses (``user@пример.рф``, ``山田@例え.jp``).
    """
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be part of a display name (a line break, a control character)."""
    if _HEADER_BREAKING.search(value):
        return "contains a line break or control character"
    return None


def record_problem(record: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first field of ``record`` that mail cannot carry, and why; or None."""
    email = record.get("email")
    if email:
        problem = address_problem(email)
        if problem:
            return "email", problem
    for key in NAME_FIELDS:
        value = record.get(key)
        if isinstance(value, str):
            problem = name_problem(value)
            if problem:
                return key, problem
    return None
