"""Importing records from CSV (CLI) and the demo organization of ``make run``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import Progress

from gateway.config import Settings
from gateway.org import admin
from gateway.records.csv_rows import parse_csv
from storage import crm, orgs
from storage.db import Database
from storage.events import NewEvent, append
from storage.payloads import record_created

CHUNK = 500


def imported_events(org_id: int, module: str, rows: list[dict[str, Any]]) -> list[NewEvent]:
    """One ``record.created`` per imported record, in id order, with the fields it got."""
    return [
        record_created(
            org_id,
            module=module,
            record_id=row["id"],
            source="import",
            values={k: v for k, v in row.items() if k != "source"},
        )
        for row in sorted(rows, key=lambda r: r["id"])
    ]


async def import_file(db: Database, module: str, org_ref: str, data: bytes) -> dict[str, Any]:
    parsed = parse_csv(data, module)
    if parsed.errors:
        return {"errors": parsed.errors}
    async with db.begin() as conn:
        org = await orgs.find_org(conn, org_ref)
        if org is None:
            raise admin.AdminError(f"no organization {org_ref!r}")
        org_id = org["id"]
        emails = [r["email_norm"] for r in parsed.rows if r.get("email_norm")]
        existing: set[str] = set()
        for i in range(0, len(emails), CHUNK):
            existing |= await crm.existing_emails(conn, module, org_id, emails[i : i + CHUNK])
        errors = []
        if module == "contacts":
            account_ids = {r["account_id"] for r in parsed.rows if r.get("account_id")}
            for aid in sorted(account_ids):
                if await crm.get(conn, "accounts", org_id, aid) is None:
                    errors.append(f"account_id {aid} does not exist in this organization")
        if errors:
            return {"errors": errors}
        todo = [
            r for r in parsed.rows if r.get("email_norm") not in existing or not r.get("email_norm")
        ]
        skipped = [
            f"line {r['_line']}: {r['email']} already exists" for r in parsed.rows if r not in todo
        ]
        created: list[dict[str, Any]] = []
        # stderr: stdout carries only the JSON report, for scripts.
        with Progress(transient=True, console=Console(stderr=True)) as progress:
            task = progress.add_task(f"importing {module}", total=len(todo))
            for i in range(0, len(todo), CHUNK):
                chunk = [
                    {**{k: v for k, v in r.items() if k != "_line"}, "source": "import"}
                    for r in todo[i : i + CHUNK]
                ]
                created += await crm.insert_many(conn, module, org_id, chunk)
                progress.advance(task, len(chunk))
        await append(conn, imported_events(org_id, module, created))
    return {
        "errors": [],
        "imported": len(todo),
        "skipped": len(skipped),
        "skipped_rows": skipped[:100],
    }


DEMO_ORG = "Demo 株式会社"
DEMO_USER = "demo@demo.example.jp"


async def ensure_demo(db: Database, settings: Settings) -> dict[str, Any]:
    async with db.connect() as conn:
        org = await orgs.find_org(conn, DEMO_ORG)
        user = await admin.find_user(conn, DEMO_USER)
    if org is None:
        org = await admin.create_org(
            db, DEMO_ORG, plan="professional", timezone="Asia/Tokyo", domains=["demo.example.jp"]
        )
    if user is None:
        created = await admin.create_user(
            db,
            str(org["id"]),
            DEMO_USER,
            name="山田 太郎",
            admin=True,
            mail_domain=settings.mail_domain,
        )
        token, user_id = created["api_token"], created["id"]
        async with db.begin() as conn:
            lead = await crm.create(
                conn,
                "leads",
                org["id"],
                {
                    "first_name": "花子",
                    "last_name": "佐藤",
                    "email": "hanako@customer.example.jp",
                    "email_norm": "hanako@customer.example.jp",
                    "company": "顧客商事",
                    "owner_id": user_id,
                },
            )
    else:
        token, user_id = await admin.issue_api_token(db, user["id"]), user["id"]
        lead = None
    info = await admin.dropbox(db, str(user_id), regenerate=False, mail_domain=settings.mail_domain)
    return {
        "org_id": org["id"],
        "user_id": user_id,
        "user_email": DEMO_USER,
        "api_token": token,
        "dropbox_address": info["dropbox_address"],
        "demo_lead_id": lead,
    }
