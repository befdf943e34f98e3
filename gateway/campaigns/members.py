"""List members: what a hand-added or imported member must be, and writing them.

The checks are pure (:func:`member_problem`, :func:`parse_members_csv`) and
shared by the API and the CSV import; :func:`add_members` writes a batch in
the caller's transaction.  A member's ``status`` (subscribed, unsubscribed,
bounced, complained) is never set here: adding or importing an address again
must not resubscribe someone who unsubscribed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection

from gateway.addresses import normalise
from gateway.records.csv_rows import HEADERS, LIMITS, decode
from gateway.records.validation import address_problem, name_problem
from storage import campaigns as store

SUBSCRIPTIONS = ("marketing", "non_marketing")
CONSENTS = ("none", "pending", "confirmed")
#: The member columns a person may set, with their longest value.
MEMBER_LIMITS = {
    "email": LIMITS["email"],
    "first_name": LIMITS["first_name"],
    "last_name": LIMITS["last_name"],
    "company": LIMITS["company"],
    "legal_basis": 40,
}
#: CSV columns beyond the record import's (English and Japanese names).
CSV_HEADERS = {
    **HEADERS,
    "subscription": "subscription",
    "購読種別": "subscription",
    "consent": "consent",
    "同意": "consent",
    "同意状況": "consent",
    "legal_basis": "legal_basis",
    "legal basis": "legal_basis",
    "法的根拠": "legal_basis",
}
CSV_COLUMNS = frozenset({"subscription", "consent", *MEMBER_LIMITS})
MAX_CSV_ROWS = 50_000


class RowProblem(StrEnum):
    """Why one CSV row was skipped (the import answer's ``reason``)."""

    MISSING_EMAIL = "missing_email"
    NOT_TEXT = "not_text"  # a JSON number, list or object where text belongs
    INVALID_ADDRESS = "invalid_address"
    INVALID_NAME = "invalid_name"
    TOO_LONG = "too_long"
    INVALID_SUBSCRIPTION = "invalid_subscription"
    INVALID_CONSENT = "invalid_consent"
    DUPLICATE = "duplicate"  # the address came earlier in the same file
    WRONG_FIELD_COUNT = "wrong_field_count"


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    reason: RowProblem
    message: str


def member_problem(values: Mapping[str, Any]) -> Problem | None:
    """The first field of a member that cannot be stored or mailed, or None."""
    email = values.get("email")
    if not isinstance(email, str) or not email.strip():
        return Problem("email", RowProblem.MISSING_EMAIL, "email is required")
    for key, limit in MEMBER_LIMITS.items():
        value = values.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return Problem(key, RowProblem.NOT_TEXT, f"{key} must be a string")
        if len(value) > limit:
            return Problem(key, RowProblem.TOO_LONG, f"{key} is longer than {limit} characters")
    problem = address_problem(email.strip()) if normalise(email) else "not an email address"
    if problem:
        return Problem("email", RowProblem.INVALID_ADDRESS, f"email is not valid: {problem}")
    for key in ("first_name", "last_name", "company", "legal_basis"):
        trouble = name_problem(values.get(key) or "")
        if trouble:
            return Problem(key, RowProblem.INVALID_NAME, f"{key} {trouble}")
    if values.get("subscription", "marketing") not in SUBSCRIPTIONS:
        return Problem(
            "subscription",
            RowProblem.INVALID_SUBSCRIPTION,
            "subscription must be marketing or non_marketing",
        )
    if values.get("consent", "none") not in CONSENTS:
        return Problem(
            "consent", RowProblem.INVALID_CONSENT, "consent must be none, pending or confirmed"
        )
    return None


def member_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of a checked member (defaults filled in, the address normalised)."""
    email = values["email"].strip()
    return {
        "email": email,
        "email_norm": normalise(email),
        "first_name": (values.get("first_name") or "").strip(),
        "last_name": (values.get("last_name") or "").strip(),
        "company": (values.get("company") or "").strip(),
        "subscription": values.get("subscription") or "marketing",
        "consent": values.get("consent") or "none",
        "legal_basis": (values.get("legal_basis") or "").strip() or None,
    }


class CsvRefused(ValueError):
    """The file as a whole cannot be read (encoding, header, size): a 422 naming why."""


@dataclass
class ParsedMembers:
    rows: list[dict[str, Any]] = field(default_factory=list)  # member_row(...) + "_row"
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"row", "email", "reason"}


def csv_columns(header: Sequence[str]) -> list[str | None]:
    """The member column each header cell names; unknown ones refuse the file."""
    columns = [CSV_HEADERS.get(h.strip().lower()) for h in header]
    unknown = [
        h for h, c in zip(header, columns, strict=True) if h.strip() and c not in CSV_COLUMNS
    ]
    if unknown:
        raise CsvRefused(f"unknown column(s): {', '.join(unknown)}")
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:
        raise CsvRefused(f"column(s) given twice: {', '.join(repeated)}")
    if "email" not in columns:
        raise CsvRefused("the file needs an email column")
    return columns


def parse_members_csv(data: bytes) -> ParsedMembers:
    """Every row as a member or a skip with its reason; raises CsvRefused for the whole file.

    Rows are numbered as a spreadsheet shows them (the header is row 1).
    """
    try:
        text = decode(data)
    except ValueError as exc:
        raise CsvRefused(str(exc)) from None
    if "\x00" in text:
        raise CsvRefused("the file contains NUL bytes; is it really CSV?")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise CsvRefused("the file is empty") from None
    except csv.Error as exc:
        raise CsvRefused(f"row 1: {exc}") from None
    columns = csv_columns(header)
    out = ParsedMembers()
    seen: set[str] = set()
    try:
        for rowno, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if len(out.rows) + len(out.skipped) >= MAX_CSV_ROWS:
                raise CsvRefused(f"more than {MAX_CSV_ROWS} rows; split the file")
            values = {c: cell.strip() for c, cell in zip(columns, cells, strict=False) if c}
            email = values.get("email", "")
            if len(cells) != len(columns):
                reason = RowProblem.WRONG_FIELD_COUNT
            else:
                values = {k: v for k, v in values.items() if v != ""}
                problem = member_problem(values)
                reason = problem.reason if problem else None
            if reason is None:
                row = member_row(values)
                if row["email_norm"] in seen:
                    reason = RowProblem.DUPLICATE
                else:
                    seen.add(row["email_norm"])
                    out.rows.append({**row, "_row": rowno, "_given": set(values)})
                    continue
            out.skipped.append({"row": rowno, "email": email[:320], "reason": str(reason)})
    except csv.Error as exc:
        raise CsvRefused(f"row {reader.line_num}: {exc}") from None
    return out


@dataclass
class Written:
    added: list[int] = field(default_factory=list)  # member ids, new or restored
    updated: list[int] = field(default_factory=list)
    existing: list[int] = field(default_factory=list)  # current members left as they were


def add_members(
    conn: Connection,
    org_id: int,
    list_id: int,
    rows: Sequence[dict[str, Any]],
    *,
    source: str,
    now: datetime,
    update_existing: bool,
) -> Written:
    """Add new members, restore removed ones, and (when asked) update current ones.

    Each new member is linked to a lead or contact of the org with its address.
    An update changes only the columns the row gave (``_given``), never the status.
    """
    out = Written()
    emails = [r["email_norm"] for r in rows]
    current = store.members_by_email(conn, list_id, emails)
    links = store.crm_matches(conn, org_id, emails)
    new, changes = [], []
    for r in rows:
        values = {k: v for k, v in r.items() if not k.startswith("_")}
        given = r.get("_given") or set(values)
        found = current.get(r["email_norm"])
        if found is None:
            module, rid, _ = links.get(r["email_norm"], (None, None, False))
            new.append(
                {
                    **values,
                    "org_id": org_id,
                    "list_id": list_id,
                    "fields": {},
                    "status": "subscribed",
                    "module": module,
                    "record_id": rid,
                    "source": source,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        elif found["removed_at"] is not None:
            store.restore_member(conn, found["id"], {**values, "updated_at": now})
            out.added.append(found["id"])
        elif update_existing:
            diff = {k: values[k] for k in given if k in values and values[k] != found.get(k)}
            if diff:
                changes.append((found["id"], {**diff, "updated_at": now}))
                out.updated.append(found["id"])
            else:
                out.existing.append(found["id"])
        else:
            out.existing.append(found["id"])
    store.insert_members(conn, new)
    store.update_members(conn, changes)
    if new:
        ids = store.members_by_email(conn, list_id, [n["email_norm"] for n in new])
        out.added += [ids[n["email_norm"]]["id"] for n in new if n["email_norm"] in ids]
    return out
