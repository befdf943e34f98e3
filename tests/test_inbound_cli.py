"""Operators list and replay kept mail from the command line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import insert, select

from storage.db import Database
from storage.schema import inbound, messages

ROOT = Path(__file__).resolve().parents[1]


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MAILGATE_DATA_DIR": str(tmp_path),
        "MAILGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}",
    }
    return subprocess.run(
        [sys.executable, "-c", "from gateway.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def db_call(tmp_path: Path, fn):
    async def go():
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
        try:
            async with db.begin() as conn:
                return await fn(conn)
        finally:
            await db.dispose()

    return asyncio.run(go())


def test_held_and_failed_mail_can_be_listed_and_replayed(tmp_path):
    assert cli(tmp_path, "db", "upgrade").returncode == 0
    org = json.loads(cli(tmp_path, "org", "create", "Ops", "--plan", "standard").stdout)
    user = json.loads(
        cli(tmp_path, "user", "create", "--org", "Ops", "rep@ops.example", "--name", "Rep").stdout
    )
    raw = b"From: rep@ops.example\r\nTo: x@client.example\r\nSubject: kept\r\nMessage-ID: <k1@ops>\r\n\r\nbody\r\n"

    async def seed(conn):
        failed = (
            await conn.execute(
                insert(inbound)
                .values(
                    org_id=org["id"],
                    user_id=user["id"],
                    channel="dropbox",
                    state="failed",
                    failed_stage="match",
                    last_error="RuntimeError: boom",
                    raw=raw,
                )
                .returning(inbound.c.id)
            )
        ).scalar_one()
        held = (
            await conn.execute(
                insert(inbound)
                .values(
                    channel="bounce",
                    state="held",
                    last_error="unrecognised: no report",
                    raw=b"junk",
                    rcpt_to=["bounces+x@mailgate.localhost"],
                )
                .returning(inbound.c.id)
            )
        ).scalar_one()
        return failed, held

    failed_id, held_id = db_call(tmp_path, seed)
    listed = json.loads(cli(tmp_path, "inbound", "list", "--state", "held").stdout)
    assert [r["id"] for r in listed] == [held_id]
    assert listed[0]["last_error"].startswith("unrecognised")

    replayed = json.loads(cli(tmp_path, "inbound", "replay", str(failed_id)).stdout)
    assert replayed["result"] == "filed"

    async def filed(conn):
        return (
            await conn.execute(select(messages.c.subject).where(messages.c.message_id == "k1@ops"))
        ).all()

    assert db_call(tmp_path, filed) == [("kept",)]
    assert json.loads(cli(tmp_path, "inbound", "replay", str(held_id)).stdout)["result"].startswith(
        "queued"
    )

    again = cli(tmp_path, "inbound", "replay", str(failed_id))
    assert (
        again.returncode != 0
        and again.stderr.startswith("error:")
        and "not held or failed" in again.stderr
    )
    missing = cli(tmp_path, "inbound", "replay", "99999")
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0
    assert cli(tmp_path, "inbound", "list", "--state", "bogus").returncode != 0


def test_replay_of_mail_refused_again_is_one_clear_line_and_it_stays_kept(tmp_path):
    """A refused dropbox mail replayed while its sender is still not allowed: no traceback."""
    assert cli(tmp_path, "db", "upgrade").returncode == 0
    org = json.loads(cli(tmp_path, "org", "create", "Ops2", "--plan", "standard").stdout)
    user = json.loads(
        cli(tmp_path, "user", "create", "--org", "Ops2", "rep@ops2.example", "--name", "Rep").stdout
    )
    raw = (
        b"From: stranger@else.example\r\nTo: x@client.example\r\nSubject: kept\r\n"
        b"Message-ID: <r1@ops2>\r\n\r\nbody\r\n"
    )

    async def seed(conn):
        return (
            await conn.execute(
                insert(inbound)
                .values(
                    org_id=org["id"],
                    user_id=user["id"],
                    channel="dropbox",
                    state="refused",
                    failed_stage="authorise",
                    last_error="envelope sender stranger@else.example is not an allowed sender",
                    mail_from="stranger@else.example",
                    rcpt_to=[user["dropbox_address"]],
                    raw=raw,
                )
                .returning(inbound.c.id)
            )
        ).scalar_one()

    refused_id = db_call(tmp_path, seed)
    again = cli(tmp_path, "inbound", "replay", str(refused_id))
    lines = again.stderr.strip().splitlines()
    assert again.returncode != 0 and "Traceback" not in again.stderr and len(lines) == 1
    assert lines[0].startswith(f"error: message {refused_id} refused again at authorise")
    assert "stranger@else.example" in lines[0]
    listed = json.loads(cli(tmp_path, "inbound", "list", "--state", "refused").stdout)
    assert [r["id"] for r in listed] == [refused_id]
