"""``mailgate imap add|backfill|status`` run as a real subprocess against a real Dovecot.

Judged by what an operator sees: exit code, JSON on stdout, progress and one
``error:`` line on stderr, and what ended up in the database (SQLite and
PostgreSQL).
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from storage.schema import messages
from storage.schema_mailboxes import mailboxes
from tests.support.dovecot import free_port, start_or_skip
from tests.test_cli import LAUNCH, ROOT, Mailgate, Result

PASSWORD = "s3cret-Kx9"  # noqa: S105 - the test account's password; must never be printed
LOGINS = [f"cli{i}" for i in range(12)]


@pytest.fixture(scope="module")
def dovecot():
    server = start_or_skip()
    server.add_users({login: PASSWORD for login in LOGINS})
    server.unused = list(LOGINS)
    yield server
    server.stop()


class ImapCli(Mailgate):
    """``Mailgate`` plus extra environment (the password variable) per call."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        super().__init__(database_url, data_dir)
        # The test Dovecot listens on loopback, refused unless the operator allows it.
        self.env["MAILGATE_ALLOW_PRIVATE_TARGETS"] = "true"

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        proc = subprocess.run(
            [*LAUNCH, *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def mg(database_url, tmp_path_factory) -> ImapCli:
    cli = ImapCli(database_url, tmp_path_factory.mktemp("data"))
    assert cli("db", "upgrade").code == 0
    return cli


@pytest.fixture(scope="module")
def sqlite_mg(tmp_path_factory) -> ImapCli:
    """Argument checks fail before any engine-specific work: one engine is enough."""
    tmp = tmp_path_factory.mktemp("argcheck")
    cli = ImapCli(f"sqlite+aiosqlite:///{tmp / 'm.db'}", tmp)
    assert cli("db", "upgrade").code == 0
    return cli


class Rep:
    """An org, a user with a Dovecot login of their own, and a lead who writes to them."""

    def __init__(self, mg: ImapCli, dovecot, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.mg, self.dovecot = mg, dovecot
        self.login = dovecot.unused.pop()
        self.org = mg("org", "create", f"Org {tag}", "--plan", "standard").json()
        self.address = f"rep@{tag}.example.jp"
        self.user = mg(
            "user", "create", "--org", str(self.org["id"]), self.address, "--name", "佐藤 花子"
        ).json()
        self.lead_email = f"lead-{tag}@customer.example.com"
        csv = tmp_path / "leads.csv"
        csv.write_text(f"last_name,email\n鈴木,{self.lead_email}\n")
        assert mg("import", "leads", str(csv), "--org", str(self.org["id"])).json()["imported"] == 1

    def add(self, *extra: str, password: str | None = PASSWORD, **over: str) -> Result:
        args = {
            "--host": self.dovecot.host,
            "--port": str(self.dovecot.port),
            "--login": self.login,
            "--password-env": "MG_IMAP_PW",
            "--security": "none",
            **over,
        }
        argv = ["imap", "add", args.pop("user", self.address)]
        for k, v in args.items():
            argv += [k, v]
        env = {} if password is None else {"MG_IMAP_PW": password}
        return self.mg.run(*argv, *extra, env=env)

    def mailboxes(self) -> list[dict]:
        return [r for r in self.mg.rows(mailboxes) if r["user_id"] == self.user["id"]]

    def filed(self) -> list[dict]:
        return [
            r
            for r in self.mg.rows(messages)
            if r["org_id"] == self.org["id"] and r["source"] == "imap"
        ]

    def mail(self, i: int, *, sent: bool = False) -> bytes:
        frm, to = (self.address, self.lead_email) if sent else (self.lead_email, self.address)
        return (
            f"From: {frm}\nTo: {to}\nMessage-ID: <{uuid.uuid4().hex}.{i}@example.com>\n"
            f"Subject: Re: 見積もり {i}\nDate: {format_datetime(datetime.now(UTC))}\n\n"
            f"Thanks, message {i}.\n"
        ).encode()


def test_add_reads_the_password_from_the_named_variable_and_never_shows_it(mg, dovecot, tmp_path):
    rep = Rep(mg, dovecot, tmp_path)
    argv = [
        *LAUNCH,
        "imap",
        "add",
        rep.address,
        "--host",
        dovecot.host,
        "--port",
        str(dovecot.port),
        "--login",
        rep.login,
        "--password-env",
        "MG_IMAP_PW",
        "--security",
        "none",
    ]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**mg.env, "MG_IMAP_PW": PASSWORD},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # What `ps` shows for the running command: the variable's name, never its value.
    cmdline = b""
    while not cmdline and proc.poll() is None:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert b"MG_IMAP_PW" in cmdline and PASSWORD.encode() not in cmdline
    assert PASSWORD not in stdout and PASSWORD not in stderr
    shown = Result(0, stdout, stderr).json()
    assert shown["login"] == rep.login and shown["user_id"] == rep.user["id"]
    assert "password" not in stdout
    [row] = rep.mailboxes()
    sealed = row["password_enc"]
    assert PASSWORD not in (sealed if isinstance(sealed, str) else bytes(sealed).decode("latin-1"))

    again = rep.add()
    assert "already connected" in again.error_line()
    assert len(rep.mailboxes()) == 1


def test_a_wrong_password_is_refused_in_plain_words_and_nothing_is_saved(mg, dovecot, tmp_path):
    rep = Rep(mg, dovecot, tmp_path)
    result = rep.add(password="not-the-password")
    line = result.error_line()
    assert "refused the login or password" in line
    assert "not-the-password" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert rep.mailboxes() == []


def test_an_unreachable_server_and_a_missing_variable_are_one_clear_line(mg, dovecot, tmp_path):
    rep = Rep(mg, dovecot, tmp_path)
    line = rep.add(**{"--port": str(free_port())}).error_line()
    assert "could not be reached" in line
    line = rep.add(password=None).error_line()
    assert "MG_IMAP_PW" in line and "not set" in line
    assert rep.mailboxes() == []


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"--port": "0"}, "port"),
        ({"--port": "70000"}, "port"),
        ({"--port": "imap"}, "port"),
        ({"--login": "cli0\r\nA1 LOGOUT"}, "login"),
        ({"--host": "bad host;rm -rf"}, "host"),
        ({"--security": "ssl3"}, "security"),
        ({"user": "nobody@nowhere.example"}, "no user"),
    ],
    ids=["port-0", "port-70000", "port-word", "crlf-login", "bad-host", "bad-security", "no-user"],
)
def test_hostile_add_arguments_are_one_line_errors(sqlite_mg, dovecot, override, words):
    rep = Rep.__new__(Rep)  # only the address is needed: no org set-up per case
    rep.mg, rep.dovecot, rep.login, rep.address = sqlite_mg, dovecot, "cli0", "x@example.jp"
    result = rep.add(**override)
    assert words in result.error_line().lower()
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1
    assert PASSWORD not in result.stderr


def test_backfill_files_seeded_mail_with_progress_and_status_reports_it(mg, dovecot, tmp_path):
    rep = Rep(mg, dovecot, tmp_path)
    dovecot.seed(rep.login, "INBOX", [rep.mail(i) for i in range(6)])
    dovecot.seed(rep.login, "Sent", [rep.mail(i, sent=True) for i in range(2)])
    added = rep.add()
    mailbox_id = str(added.json()["id"])

    result = mg("imap", "backfill", rep.address, "--days", "7")
    assert result.json() == {mailbox_id: {"fetched": 8}}
    assert "INBOX" in result.stderr and "6/6" in result.stderr  # progress goes to stderr
    assert "Sent" in result.stderr and "2/2" in result.stderr
    filed = rep.filed()
    assert len(filed) == 8
    assert sorted(r["direction"] for r in filed) == ["incoming"] * 6 + ["outgoing"] * 2

    again = mg("imap", "backfill", rep.address, "--days", "7")
    assert again.json() == {mailbox_id: {"fetched": 8}}
    assert len(rep.filed()) == 8  # a second backfill files nothing twice

    [status] = mg("imap", "status", rep.address).json()
    assert status["state"] == "ok" and status["error"] is None
    assert status["progress"]["INBOX"] == {"done": 6, "total": 6}
    assert status["progress"]["Sent"] == {"done": 2, "total": 2}
    assert status["messages"] == 8
    assert PASSWORD not in str(status)


def test_status_shows_the_last_error_after_the_password_changed(mg, dovecot, tmp_path):
    rep = Rep(mg, dovecot, tmp_path)
    rep.add().json()
    dovecot.add_user(rep.login, "changed-on-the-server")
    try:
        line = mg("imap", "backfill", rep.address).error_line()
        assert "refused the login or password" in line
        [status] = mg("imap", "status", rep.address).json()
        assert status["state"] == "error"
        assert status["error"]["kind"] == "bad_login"
        assert "refused the login or password" in status["error"]["message"]
    finally:
        dovecot.add_user(rep.login, PASSWORD)


def test_backfill_and_status_refuse_unknown_users_bad_days_and_users_without_mailbox(
    mg, dovecot, tmp_path
):
    rep = Rep(mg, dovecot, tmp_path)
    assert "no connected mailbox" in mg("imap", "backfill", rep.address).error_line()
    assert "no connected mailbox" in mg("imap", "status", rep.address).error_line()
    assert "no user" in mg("imap", "status", "ghost@nowhere.example").error_line()
    assert "--days" in mg("imap", "backfill", rep.address, "--days", "-1").error_line()
    assert "--days" in mg("imap", "backfill", rep.address, "--days", "99999").error_line()


@pytest.mark.parametrize(
    "command", [["imap"], ["imap", "add"], ["imap", "backfill"], ["imap", "status"]]
)
def test_imap_commands_answer_help(tmp_path, command):
    result = Mailgate(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path)(*command, "--help")
    assert result.code == 0, result.stderr
    assert "Usage: mailgate" in result.stdout
