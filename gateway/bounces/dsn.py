"""RFC 3464 delivery status notifications: the one format that says exactly
which recipient failed, how, and with which codes.

The field parser works on plain text so the same code reads a proper
``message/delivery-status`` part and the DSN fields that some MTAs paste
into a ``text/plain`` body.
"""

from __future__ import annotations

import re

from gateway.bounces import addresses, reasons
from gateway.bounces.addresses import lines_about
from gateway.bounces.report import BouncedRecipient

_FIELD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)[ \t]*:[ \t]*(.*)$")
_FAILED = {"failed", "failure", "delayed", ""}


def parse_fields(text: str) -> list[dict[str, str]]:
    """Split DSN text into field blocks (lower-cased names, unfolded values)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
            continue
        if line[:1] in " \t" and last:
            current[last] += " " + line.strip()
            continue
        match = _FIELD_RE.match(line)
        if match:
            last = match.group(1).lower()
            value = match.group(2).strip()
            # Keep the first of a repeated field: the per-recipient one.
            current.setdefault(last, value)
            if current[last] != value and last == "diagnostic-code":
                current[last] += " " + value
        else:
            last = ""
    if current:
        blocks.append(current)
    return blocks


def _diagnostic(value: str) -> str:
    """``smtp; 550 5.1.1 ...`` → ``550 5.1.1 ...``."""
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"\s*[A-Za-z0-9-]+\s*", kind):
        return rest.strip()
    return value.strip()


def recipients(text: str, context: str = "") -> list[BouncedRecipient]:
    """Failed/delayed recipients described by DSN fields in ``text``.

    ``context`` is the human-readable part of the report: used for the reason
    when a recipient block carries no diagnostic of its own.
    """
    found: dict[str, BouncedRecipient] = {}
    for block in parse_fields(text):
        email = addresses.extract_address(
            block.get("final-recipient", "")
        ) or addresses.extract_address(block.get("original-recipient", ""))
        if not email:
            email = addresses.extract_address(block.get("x-actual-recipient", ""))
        if not email:
            continue
        action = block.get("action", "").split()[0].lower() if block.get("action") else ""
        action = action.strip(";(")
        if action not in _FAILED:
            continue  # delivered / relayed / expanded: not a failure
        diagnostic = _diagnostic(block.get("diagnostic-code", ""))
        status_field = reasons.first_status(block.get("status", ""))
        diag_status = reasons.first_status(diagnostic)
        # A specific code in the diagnostic beats a generic one in Status (5.0.0).
        # The code the remote server actually said beats the reporting MTA's summary.
        status = diag_status or status_field
        if status_field and diag_status.endswith(".0.0") and not status_field.endswith(".0.0"):
            status = status_field
        if status and status.startswith("2"):
            continue
        reply_code = reasons.first_reply_code(diagnostic)
        if action == "delayed" and not status:
            status = "4.0.0"
        near = lines_about(context, email)
        reason, severity = reasons.decide(status, reply_code, diagnostic, near, context)
        if action == "delayed":
            severity = "soft"
        if email not in found:
            found[email] = BouncedRecipient(
                email=email,
                severity=severity,
                status=status,
                reply_code=reply_code,
                diagnostic=diagnostic[:1000],
                reason=reason,
            )
    return list(found.values())


def has_fields(text: str) -> bool:
    return bool(re.search(r"^(final|original)-recipient\s*:", text, re.I | re.M))
