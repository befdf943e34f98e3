"""CSV import of leads and contacts: all rows or none, with a per-row report.

Rows are validated first; one bad row means nothing is written and every
problem is listed with its line number.  Files exported by Japanese Excel are
cp932 rather than UTF-8, so both are read; Japanese column names (姓, 名,
メール …) map to the same fields as English ones.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from gateway.addresses import normalise
from gateway.ingest.charsets import as_japanese
from gateway.records.validation import NAME_FIELDS, address_problem, name_problem

#: Ids are 64-bit in the database; a larger number names no account.
MAX_ID = 2**63 - 1

HEADERS = {
    "first_name": "first_name",
    "first name": "first_name",
    "firstname": "first_name",
    "名": "first_name",
    "last_name": "last_name",
    "last name": "last_name",
    "lastname": "last_name",
    "姓": "last_name",
    "email": "email",
    "e-mail": "email",
    "email address": "email",
    "メール": "email",
    "メールアドレス": "email",
    "eメール": "email",
    "company": "company",
    "会社名": "company",
    "company name": "company",
    "phone": "phone",
    "電話": "phone",
    "電話番号": "phone",
    "title": "title",
    "役職": "title",
    "account_id": "account_id",
}
LIMITS = {
    "first_name": 100,
    "last_name": 100,
    "company": 300,
    "phone": 50,
    "title": 100,
    "email": 320,
}
MAX_ROWS = 200_000
#: Columns each module stores; anything else would be dropped silently, so it is refused.
FIELDS = {
    "leads": frozenset({"first_name", "last_name", "email", "company", "phone", "title"}),
    "contacts": frozenset({"first_name", "last_name", "email", "account_id", "phone", "title"}),
}


@dataclass
class Parsed:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def decode(data: bytes) -> str:
    """UTF-8 (with or without a BOM), else cp932 when its reading looks Japanese.

    Latin-1 or Big5 bytes also decode as cp932, into stray kanji and
    half-width katakana: such a file is refused rather than imported garbled.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    japanese = as_japanese(data)
    if japanese is None:
        raise ValueError("the file is neither UTF-8 nor Shift_JIS (cp932) Japanese text")
    return japanese


def parse_csv(data: bytes, module: str) -> Parsed:
    out = Parsed()
    try:
        text = decode(data)
    except ValueError as exc:
        out.errors.append(str(exc))
        return out
    if "\x00" in text:
        out.errors.append("the file contains NUL bytes; is it really CSV?")
        return out
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        out.errors.append("the file is empty")
        return out
    except csv.Error as exc:
        out.errors.append(f"line 1: {exc}")
        return out
    columns = [HEADERS.get(h.strip().lower()) for h in header]
    unknown = [h for h, c in zip(header, columns, strict=True) if c is None and h.strip()]
    if unknown:
        out.errors.append(f"line 1: unknown column(s): {', '.join(unknown)}")
    foreign = [h for h, c in zip(header, columns, strict=True) if c and c not in FIELDS[module]]
    if foreign:
        out.errors.append(f"line 1: {module} have no column(s): {', '.join(foreign)}")
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:
        out.errors.append(f"line 1: column(s) given twice: {', '.join(repeated)}")
    if "email" not in columns and "last_name" not in columns:
        out.errors.append("line 1: need at least an email or a last_name column")
    if out.errors:
        return out
    seen: dict[str, int] = {}
    try:
        for lineno, row in enumerate(reader, start=2):
            if len(out.rows) >= MAX_ROWS:
                out.errors.append(f"more than {MAX_ROWS} rows; split the file")
                break
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                out.errors.append(f"line {lineno}: {len(row)} fields, expected {len(columns)}")
                continue
            record: dict[str, Any] = {}
            for col, cell in zip(columns, row, strict=True):
                cell = cell.strip()
                if col == "account_id":
                    number = cell.isascii() and cell.isdigit() and 0 < int(cell) <= MAX_ID
                    if cell and not number:
                        out.errors.append(f"line {lineno}: account_id {cell!r} is not an id")
                    record[col] = int(cell) if number else None
                    continue
                if len(cell) > LIMITS[col]:
                    out.errors.append(f"line {lineno}: {col} longer than {LIMITS[col]} characters")
                elif col in NAME_FIELDS and name_problem(cell):
                    out.errors.append(f"line {lineno}: {col} {name_problem(cell)}")
                record[col] = cell
            email = record.get("email") or ""
            if email:
                norm = normalise(email)
                problem = address_problem(email) if norm else "not an email address"
                if norm is None or problem:
                    out.errors.append(f"line {lineno}: {email!r} is not a valid address: {problem}")
                elif norm in seen:
                    out.errors.append(f"line {lineno}: {email} repeats line {seen[norm]}")
                else:
                    seen[norm] = lineno
                record["email_norm"] = norm
            else:
                record["email"] = None
                record["email_norm"] = None
            if not (record.get("last_name") or email):
                out.errors.append(f"line {lineno}: needs a last_name or an email")
            record["_line"] = lineno
            out.rows.append(record)
    except csv.Error as exc:
        out.errors.append(f"line {reader.line_num}: {exc}")
    return out
