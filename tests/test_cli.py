"""The ``mailgate`` command line, run as a real subprocess the way an operator runs it.

Every command is started with a fresh interpreter against a real database
(SQLite always, PostgreSQL too when ``MAILGATE_TEST_DATABASE_URL`` is set),
and judged only by what an operator sees: exit code, JSON on stdout, one
``error:`` line on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from storage.db import Database
from storage.schema import contacts, leads
from tests.support.databases import fresh_database

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-c", "from gateway.cli.main import main; main()"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.stderr}"
        return json.loads(self.stdout)

    def error_line(self) -> str:
        """The single ``error:`` line a failing command must print."""
        assert self.code != 0, f"expected failure, got exit 0 with {self.stdout!r}"
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert lines, "a failure printed nothing on stderr"
        assert lines[-1].startswith("error: "), self.stderr
        assert "Traceback" not in self.stderr, self.stderr
        return lines[-1]


class Mailgate:
    """Runs ``mailgate`` commands against one database and data directory."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        self.database_url = database_url
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MAILGATE_DATABASE_URL": database_url,
            "MAILGATE_DATA_DIR": str(data_dir),
            "MAILGATE_MAIL_DOMAIN": "mailgate.test",
        }

    def __call__(self, *args: str) -> Result:
        proc = subprocess.run(
            [*LAUNCH, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def count(self, table) -> int:
        async def go() -> int:
            db = Database(self.database_url)
            try:
                async with db.connect() as conn:
                    return (await conn.execute(select(func.count()).select_from(table))).scalar()
            finally:
                await db.dispose()

        return asyncio.run(go())

    def rows(self, table) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            db = Database(self.database_url)
            try:
                async with db.connect() as conn:
                    q = select(table).order_by(table.c.id)
                    return [dict(r) for r in (await conn.execute(q)).mappings()]
            finally:
                await db.dispose()

        return asyncio.run(go())


def _mailgate(backend: str, tmp: Path) -> Iterator[Mailgate]:
    with fresh_database(backend, tmp) as url:
        mg = Mailgate(url, tmp / "data")
        assert mg("db", "upgrade").code == 0
        yield mg


@pytest.fixture
def mailgate_cli(tmp_path) -> Iterator[Mailgate]:
    """A migrated SQLite database: the default embedded set-up."""
    yield from _mailgate("sqlite", tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_cli(request, tmp_path) -> Iterator[Mailgate]:
    """A migrated database of each engine."""
    yield from _mailgate(request.param, tmp_path)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- help and wiring ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["db", "upgrade"],
        ["org", "create"],
        ["user", "create"],
        ["user", "dropbox"],
        ["user", "senders"],
        ["user", "list"],
        ["user", "deactivate"],
        ["user", "activate"],
        ["org", "update"],
        ["import"],
        ["demo"],
    ],
    ids=lambda c: " ".join(c) or "mailgate",
)
def test_every_command_answers_help(tmp_path, command):
    result = Mailgate(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path)(*command, "--help")
    assert result.code == 0, result.stderr
    assert "Usage: mailgate" in result.stdout


def test_serve_with_an_unknown_role_fails_with_one_line(tmp_path):
    result = Mailgate(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path)(
        "serve", "--only", "bogus"
    )
    assert "bogus" in result.error_line()


def test_a_database_never_migrated_asks_for_db_upgrade(tmp_path):
    mg = Mailgate(f"sqlite+aiosqlite:///{tmp_path / 'never.db'}", tmp_path)
    line = mg("org", "create", "Acme", "--plan", "standard").error_line()
    assert "mailgate db upgrade" in line


def test_an_unreachable_database_is_one_clear_line(tmp_path):
    mg = Mailgate("postgresql+asyncpg://nobody@127.0.0.1:1/none", tmp_path)
    line = mg("org", "create", "Acme", "--plan", "standard").error_line()
    assert "database unavailable" in line


# --- org and user set-up, on both engines --------------------------------------------


def test_org_user_and_import_flow(any_db_cli, tmp_path):
    mg = any_db_cli
    org = mg(
        "org",
        "create",
        "Acme 株式会社",
        "--plan",
        "standard",
        "--timezone",
        "Asia/Tokyo",
        "--domain",
        "example.co.jp",
    ).json()
    assert isinstance(org["id"], int)
    assert org["domains"] == ["example.co.jp"]

    user = mg(
        "user",
        "create",
        "--org",
        "Acme 株式会社",
        "taro@example.co.jp",
        "--name",
        "山田 太郎",
        "--admin",
    ).json()
    assert user["id"] and user["api_token"]
    assert user["dropbox_address"].endswith("@mailgate.test")
    assert user["name"] == "山田 太郎" and user["is_admin"] is True

    csv = write(
        tmp_path / "leads.csv",
        "姓,名,メールアドレス,会社名\r\n山田,花子,hanako@customer.example.jp,顧客商事\r\n"
        "佐藤,一郎,ichiro@other.example.jp,他社\r\n".encode("cp932"),
    )
    report = mg("import", "leads", str(csv), "--org", str(org["id"])).json()
    assert report["imported"] == 2
    rows = mg.rows(leads)
    assert [(r["last_name"], r["first_name"], r["email"], r["company"]) for r in rows] == [
        ("山田", "花子", "hanako@customer.example.jp", "顧客商事"),
        ("佐藤", "一郎", "ichiro@other.example.jp", "他社"),
    ]

    again = mg("org", "create", "Acme 株式会社", "--plan", "free")
    assert "already exists" in again.error_line()


def test_org_create_refuses_an_unknown_plan(mailgate_cli):
    line = mailgate_cli("org", "create", "Acme", "--plan", "gold").error_line()
    assert "gold" in line and "standard" in line


def test_org_create_refuses_an_unknown_time_zone(mailgate_cli):
    line = mailgate_cli(
        "org", "create", "Acme", "--plan", "free", "--timezone", "Mars/Olympus"
    ).error_line()
    assert "Mars/Olympus" in line


def test_user_create_needs_an_existing_org_and_a_real_address(mailgate_cli):
    assert "no organization" in (
        mailgate_cli("user", "create", "--org", "Nope", "a@b.jp", "--name", "A").error_line()
    )
    mailgate_cli("org", "create", "Acme", "--plan", "free").json()
    assert "not an email address" in (
        mailgate_cli("user", "create", "--org", "Acme", "not-mail", "--name", "A").error_line()
    )


def test_the_same_user_twice_in_one_org_is_refused(mailgate_cli):
    mailgate_cli("org", "create", "Acme", "--plan", "standard").json()
    mailgate_cli("user", "create", "--org", "Acme", "a@acme.jp", "--name", "A").json()
    line = mailgate_cli("user", "create", "--org", "Acme", "A@Acme.JP", "--name", "A").error_line()
    assert "already exists" in line


def test_the_free_plan_refuses_a_fifth_user(mailgate_cli):
    mailgate_cli("org", "create", "Tiny", "--plan", "free").json()
    for i in range(4):
        mailgate_cli("user", "create", "--org", "Tiny", f"u{i}@tiny.jp", "--name", "U").json()
    line = mailgate_cli("user", "create", "--org", "Tiny", "u5@tiny.jp", "--name", "U").error_line()
    assert "free plan" in line


def test_dropbox_regenerate_changes_the_address_and_writes_a_vcard(mailgate_cli, tmp_path):
    mailgate_cli("org", "create", "Acme", "--plan", "standard").json()
    user = mailgate_cli(
        "user", "create", "--org", "Acme", "taro@acme.jp", "--name", "山田, 太郎"
    ).json()
    shown = mailgate_cli("user", "dropbox", "taro@acme.jp").json()
    assert shown["dropbox_address"] == user["dropbox_address"]

    card = tmp_path / "dropbox.vcf"
    fresh = mailgate_cli(
        "user", "dropbox", str(user["id"]), "--regenerate", "--vcard", str(card)
    ).json()
    assert fresh["dropbox_address"] != user["dropbox_address"]
    assert (
        mailgate_cli("user", "dropbox", "taro@acme.jp").json()["dropbox_address"]
        == (fresh["dropbox_address"])
    )

    text = card.read_bytes().decode("utf-8")
    lines = text.split("\r\n")
    assert lines[0] == "BEGIN:VCARD" and lines[1] == "VERSION:3.0"
    assert lines[-2:] == ["END:VCARD", ""]
    assert f"EMAIL;TYPE=INTERNET:{fresh['dropbox_address']}" in lines
    assert any(line.startswith("FN:山田\\, 太郎") for line in lines)
    assert any(line.startswith("N:") for line in lines)


def test_dropbox_of_an_unknown_user_is_an_error(mailgate_cli):
    assert "no user" in mailgate_cli("user", "dropbox", "ghost@nowhere.jp").error_line()


def test_vcard_to_an_unwritable_place_is_one_line(mailgate_cli, tmp_path):
    mailgate_cli("org", "create", "Acme", "--plan", "standard").json()
    mailgate_cli("user", "create", "--org", "Acme", "taro@acme.jp", "--name", "T").json()
    line = mailgate_cli(
        "user", "dropbox", "taro@acme.jp", "--vcard", str(tmp_path / "no" / "dir" / "x.vcf")
    ).error_line()
    assert "cannot write" in line


def test_allowed_senders_are_capped_at_five(mailgate_cli):
    mailgate_cli("org", "create", "Acme", "--plan", "standard").json()
    mailgate_cli("user", "create", "--org", "Acme", "taro@acme.jp", "--name", "T").json()
    for i in range(5):
        senders = mailgate_cli("user", "senders", "taro@acme.jp", "add", f"s{i}@home.jp").json()
    assert senders["senders"] == [f"s{i}@home.jp" for i in range(5)]

    line = mailgate_cli("user", "senders", "taro@acme.jp", "add", "s6@home.jp").error_line()
    assert "at most 5" in line

    listed = mailgate_cli("user", "senders", "taro@acme.jp", "list").json()["senders"]
    assert listed == [f"s{i}@home.jp" for i in range(5)]

    left = mailgate_cli("user", "senders", "taro@acme.jp", "remove", "S0@Home.JP").json()
    assert left["senders"] == [f"s{i}@home.jp" for i in range(1, 5)]
    assert mailgate_cli("user", "senders", "taro@acme.jp", "add", "s6@home.jp").code == 0

    line = mailgate_cli("user", "senders", "taro@acme.jp", "remove", "ghost@home.jp").error_line()
    assert "ghost@home.jp" in line


def test_senders_with_bad_arguments_fail_clearly(mailgate_cli):
    mailgate_cli("org", "create", "Acme", "--plan", "standard").json()
    mailgate_cli("user", "create", "--org", "Acme", "taro@acme.jp", "--name", "T").json()
    assert "add, remove or list" in (
        mailgate_cli("user", "senders", "taro@acme.jp", "purge").error_line()
    )
    assert "needs an EMAIL" in mailgate_cli("user", "senders", "taro@acme.jp", "add").error_line()
    assert "not an email address" in (
        mailgate_cli("user", "senders", "taro@acme.jp", "add", "nope").error_line()
    )


# --- CSV import ---------------------------------------------------------------------


@pytest.fixture
def acme(mailgate_cli) -> Mailgate:
    mailgate_cli("org", "create", "Acme", "--plan", "standard").json()
    return mailgate_cli


def test_import_of_a_good_utf8_csv_imports_every_row(acme, tmp_path):
    csv = write(
        tmp_path / "leads.csv",
        b"\xef\xbb\xbffirst_name,last_name,email,company\n"
        + "Taro,Yamada,taro@ex.jp,Ex\n"
        'Hanako,Sato,Hanako@EX.jp,"Ex, Inc."\n'
        "花子,佐藤,sato@ex.jp,顧客商事\n".encode(),
    )
    report = acme("import", "leads", str(csv), "--org", "Acme").json()
    assert report["imported"] == 3
    rows = acme.rows(leads)
    assert [r["email"] for r in rows] == ["taro@ex.jp", "Hanako@EX.jp", "sato@ex.jp"]
    assert rows[1]["company"] == "Ex, Inc."
    assert rows[2]["last_name"] == "佐藤"

    # Running it again skips rows already present rather than duplicating them.
    again = acme("import", "leads", str(csv), "--org", "Acme").json()
    assert again["imported"] == 0 and again["skipped"] == 3
    assert acme.count(leads) == 3


def test_import_of_a_shift_jis_csv_with_japanese_headers(acme, tmp_path):
    csv = write(
        tmp_path / "sjis.csv",
        "姓,名,メールアドレス,会社名\r\n髙橋,﨑子,takahashi@ex.jp,株式会社ソニー①\r\n".encode(
            "cp932"
        ),
    )
    assert acme("import", "contacts", str(csv), "--org", "Acme").code != 0  # 会社名: leads only
    csv.write_bytes("姓,名,メールアドレス\r\n髙橋,﨑子,takahashi@ex.jp\r\n".encode("cp932"))
    assert acme("import", "contacts", str(csv), "--org", "Acme").json()["imported"] == 1
    [row] = acme.rows(contacts)
    assert (row["last_name"], row["first_name"], row["email"]) == (
        "髙橋",
        "﨑子",
        "takahashi@ex.jp",
    )


def test_one_bad_row_imports_nothing_and_names_every_line(acme, tmp_path):
    csv = write(
        tmp_path / "bad.csv",
        b"first_name,last_name,email,company\n"
        b"A,Ok,a@ex.jp,C\n"
        b"B,Bad,not-an-email,C\n"
        b"C,Wide,c@ex.jp,C,extra\n"
        b"D,Twice,A@EX.JP,C\n",
    )
    result = acme("import", "leads", str(csv), "--org", "Acme")
    assert "nothing was imported" in result.error_line()
    assert "line 3" in result.stderr and "not-an-email" in result.stderr
    assert "line 4" in result.stderr and "5 fields" in result.stderr
    assert "line 5" in result.stderr and "line 2" in result.stderr
    assert acme.count(leads) == 0


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (bytes(range(256)) * 8, "neither UTF-8 nor Shift_JIS"),
        (b"first_name,last_name,email\nA\x00,B,z@ex.jp\n", "NUL"),
        (b"email,colour\na@ex.jp,red\n", "unknown column(s): colour"),
    ],
    ids=["empty", "binary", "nul", "unknown-columns"],
)
def test_a_file_that_is_not_usable_csv_is_one_clear_error(acme, tmp_path, data, says):
    csv = write(tmp_path / "x.csv", data)
    line = acme("import", "leads", str(csv), "--org", "Acme").error_line()
    assert says in line
    assert acme.count(leads) == 0


def test_import_of_a_missing_file_or_org_fails_clearly(acme, tmp_path):
    assert (
        "cannot read"
        in acme("import", "leads", str(tmp_path / "no.csv"), "--org", "Acme").error_line()
    )
    csv = write(tmp_path / "ok.csv", b"email\na@ex.jp\n")
    assert "no organization" in acme("import", "leads", str(csv), "--org", "Nope").error_line()
    assert "leads or contacts" in acme("import", "deals", str(csv), "--org", "Acme").error_line()


def test_import_prints_only_json_on_stdout(acme, tmp_path):
    """Scripts pipe the report into jq: the progress bar must not pollute stdout."""
    csv = write(tmp_path / "ok.csv", b"email\na@ex.jp\nb@ex.jp\n")
    result = acme("import", "leads", str(csv), "--org", "Acme")
    assert result.stdout.lstrip().startswith("{")
    assert result.json()["imported"] == 2


# --- demo ---------------------------------------------------------------------------


def test_demo_prints_a_token_and_dropbox_and_can_run_twice(tmp_path):
    mg = Mailgate(f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}", tmp_path / "data")
    first = mg("demo").json()  # migrates by itself: `make run` calls it on a fresh clone
    second = mg("demo").json()
    for info in (first, second):
        assert info["api_token"].startswith("mg_")
        assert info["dropbox_address"].endswith("@mailgate.test")
    assert first["dropbox_address"] == second["dropbox_address"]
    assert first["org_id"] == second["org_id"] and first["user_id"] == second["user_id"]
    assert mg.count(leads) == 1


def test_mass_addon_is_capped_at_2250_mass_mails_a_day(mailgate_cli):
    ok = mailgate_cli("org", "create", "Big", "--plan", "standard", "--mass-addon", "2000").json()
    assert ok["mass_addon"] == 2000
    line = mailgate_cli(
        "org", "create", "Bigger", "--plan", "standard", "--mass-addon", "2001"
    ).error_line()
    assert "2250" in line and "2000" in line
    line = mailgate_cli(
        "org", "create", "Huge", "--plan", "enterprise", "--mass-addon", "99999999999"
    ).error_line()
    assert "2250" in line
    assert "negative" in (
        mailgate_cli(
            "org", "create", "Neg", "--plan", "standard", "--mass-addon", "-1"
        ).error_line()
    )


# --- users deactivated, dropbox options, the free plan's mass mail (issue #12) ---------


def test_the_free_plan_refuses_a_mass_addon_however_it_is_set(any_db_cli):
    mg = any_db_cli
    line = mg("org", "create", "Tiny", "--plan", "free", "--mass-addon", "10").error_line()
    assert "free plan has no mass mail" in line
    tiny = mg("org", "create", "Tiny", "--plan", "free").json()
    assert tiny["mass_addon"] == 0
    line = mg("org", "update", "Tiny", "--mass-addon", "5").error_line()
    assert "free plan has no mass mail" in line

    mg("org", "create", "Paid", "--plan", "standard", "--mass-addon", "500").json()
    # Down to free with the add-on still bought: refused until the add-on goes too.
    assert (
        "free plan has no mass mail" in mg("org", "update", "Paid", "--plan", "free").error_line()
    )
    changed = mg("org", "update", "Paid", "--plan", "free", "--mass-addon", "0").json()
    assert (changed["plan"], changed["mass_addon"]) == ("free", 0)
    assert "unknown plan" in mg("org", "update", "Paid", "--plan", "gold").error_line()
    assert "no organization" in mg("org", "update", "Nope", "--plan", "free").error_line()
    assert "--plan" in mg("org", "update", "Paid").error_line()


def test_deactivating_frees_a_free_plan_seat_and_reactivating_past_the_cap_is_refused(any_db_cli):
    mg = any_db_cli
    mg("org", "create", "Tiny", "--plan", "free").json()
    for i in range(4):
        mg("user", "create", "--org", "Tiny", f"u{i}@tiny.jp", "--name", "U").json()
    gone = mg("user", "deactivate", "u1@tiny.jp").json()
    assert gone["active"] is False and gone["deactivated_at"]
    mg("user", "create", "--org", "Tiny", "u4@tiny.jp", "--name", "U").json()
    line = mg("user", "activate", "u1@tiny.jp").error_line()
    assert "at most 4 active users" in line
    listed = {u["email"]: u["active"] for u in mg("user", "list", "--org", "Tiny").json()}
    assert listed == {f"u{i}@tiny.jp": i != 1 for i in range(5)}
    # Deactivating twice (or activating an active user) changes nothing and is no error.
    assert mg("user", "deactivate", "u1@tiny.jp").json()["active"] is False
    assert "no user" in mg("user", "deactivate", "ghost@tiny.jp").error_line()


def test_the_last_active_admin_cannot_be_deactivated(mailgate_cli):
    mg = mailgate_cli
    mg("org", "create", "Acme", "--plan", "standard").json()
    mg("user", "create", "--org", "Acme", "boss@acme.jp", "--name", "B", "--admin").json()
    assert "last active admin" in mg("user", "deactivate", "boss@acme.jp").error_line()
    mg("user", "create", "--org", "Acme", "vice@acme.jp", "--name", "V", "--admin").json()
    assert mg("user", "deactivate", "boss@acme.jp").json()["active"] is False


def test_user_dropbox_changes_what_unknown_recipients_become_and_what_is_searched(mailgate_cli):
    mg = mailgate_cli
    mg("org", "create", "Acme", "--plan", "standard").json()
    mg("user", "create", "--org", "Acme", "taro@acme.jp", "--name", "T").json()
    shown = mg("user", "dropbox", "taro@acme.jp").json()
    assert (shown["setting"], shown["search"]) == ("lead", "both")
    changed = mg(
        "user", "dropbox", "taro@acme.jp", "--setting", "contact", "--search", "contacts"
    ).json()
    assert (changed["setting"], changed["search"]) == ("contact", "contacts")
    assert changed["dropbox_address"] == shown["dropbox_address"]
    line = mg("user", "dropbox", "taro@acme.jp", "--search", "deals").error_line()
    assert "search must be one of leads, contacts, both" in line
