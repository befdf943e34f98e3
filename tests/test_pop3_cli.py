"""``mailgate pop add`` run as a real subprocess against a real Dovecot POP3 server, then
``mailgate serve --only worker,imap`` filing its mail, as an operator would run them.

Judged by what an operator sees: exit code, JSON on stdout, one ``error:`` line
on stderr, no password anywhere, and what ended up in the database (SQLite and
PostgreSQL).
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from storage.schema import messages
from storage.schema_mailboxes import mailboxes
from tests.support.dovecot import free_port, start_or_skip
from tests.support.processes import ServeProcess
from tests.test_cli import LAUNCH, ROOT, Mailgate, Result
from tests.test_imap_cli import ImapCli

PASSWORD = "p0p-s3cret-Qz"  # noqa: S105 - the test account's password; must never be printed
LOGINS = [f"popcli{i}" for i in range(8)]


@pytest.fixture(scope="module")
def dovecot():
    server = start_or_skip()
    server.add_users({login: PASSWORD for login in LOGINS})
    server.unused = list(LOGINS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mg(database_url, tmp_path_factory) -> ImapCli:
    cli = ImapCli(database_url, tmp_path_factory.mktemp("data"))
    assert cli("db", "upgrade").code == 0
    return cli


class Rep:
    """An org, a user with a POP3 login of their own, and a lead who writes to them."""

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

    def argv(self, **over: str) -> list[str]:
        args = {
            "--host": self.dovecot.host,
            "--port": str(self.dovecot.pop3_port),
            "--login": self.login,
            "--password-env": "MG_POP_PW",
            "--security": "none",
            **over,
        }
        argv = ["pop", "add", args.pop("user", self.address)]
        for k, v in args.items():
            argv += [k, v]
        return argv

    def add(self, password: str | None = PASSWORD, **over: str) -> Result:
        env = {} if password is None else {"MG_POP_PW": password}
        return self.mg.run(*self.argv(**over), env=env)

    def mailboxes(self) -> list[dict]:
        return [r for r in self.mg.rows(mailboxes) if r["user_id"] == self.user["id"]]

    def filed(self) -> list[dict]:
        return [
            r
            for r in self.mg.rows(messages)
            if r["org_id"] == self.org["id"] and r["source"] == "pop"
        ]

    def mail(self, i: int) -> bytes:
        return (
            f"From: {self.lead_email}\nTo: {self.address}\n"
            f"Message-ID: <{uuid.uuid4().hex}.{i}@example.com>\n"
            f"Subject: Re: 見積もり {i}\nDate: {format_datetime(datetime.now(UTC))}\n\n"
            f"Thanks, message {i}.\n"
        ).encode()


def test_pop_add_then_serve_files_the_mail_and_leaves_it_on_the_server(mg, dovecot, tmp_path):
    rep = Rep(mg, dovecot, tmp_path)
    dovecot.seed(rep.login, "INBOX", [rep.mail(i) for i in range(3)])
    proc = subprocess.Popen(
        [*LAUNCH, *rep.argv()],
        cwd=ROOT,
        env={**mg.env, "MG_POP_PW": PASSWORD},
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
    assert b"MG_POP_PW" in cmdline and PASSWORD.encode() not in cmdline
    assert PASSWORD not in stdout + stderr and "password" not in stdout
    shown = Result(0, stdout, stderr).json()
    assert shown["protocol"] == "pop3" and shown["login"] == rep.login
    [row] = rep.mailboxes()
    assert row["protocol"] == "pop3"
    assert PASSWORD not in row["password_enc"]

    assert "already connected" in rep.add().error_line()
    assert len(rep.mailboxes()) == 1

    # Read as it runs (a pipe nobody reads would block a process that logs a lot).
    data_dir = Path(mg.env["MAILGATE_DATA_DIR"])
    serve = ServeProcess(
        mg.env["MAILGATE_DATABASE_URL"],
        data_dir,
        "worker,imap",
        # The key `pop add` generated into the data dir sealed the password: the same one.
        environ={
            **mg.env,
            "MAILGATE_POP_INTERVAL": "0.3",
            "MAILGATE_SECRET_KEY": (data_dir / "secret_key").read_text().strip(),
        },
    )
    try:
        deadline = time.monotonic() + 60
        while len(rep.filed()) < 3:
            assert serve.proc.poll() is None, serve.output
            assert time.monotonic() < deadline, "the served poller filed nothing"
            time.sleep(0.2)
        dovecot.append(rep.login, "INBOX", rep.mail(9))
        while len(rep.filed()) < 4:
            assert time.monotonic() < deadline, "new mail was not filed"
            time.sleep(0.2)
    finally:
        code, logs = serve.signal(signal.SIGTERM)
    assert code == 0, logs
    assert PASSWORD not in logs
    filed = rep.filed()
    assert len(filed) == 4 and {r["direction"] for r in filed} == {"incoming"}
    assert dovecot.count(rep.login) == 4  # kept on the server

    [status] = mg("imap", "status", rep.address).json()
    assert status["protocol"] == "pop3" and status["state"] == "ok"
    assert status["messages"] == 4 and PASSWORD not in str(status)


def test_a_wrong_password_is_refused_in_plain_words_and_nothing_is_saved(mg, dovecot, tmp_path):
    rep = Rep(mg, dovecot, tmp_path)
    result = rep.add(password="not-the-password")
    assert "refused the login or password" in result.error_line()
    assert "not-the-password" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert rep.mailboxes() == []


def test_a_missing_variable_and_an_unreachable_server_are_one_clear_line(mg, dovecot, tmp_path):
    rep = Rep(mg, dovecot, tmp_path)
    line = rep.add(password=None).error_line()
    assert "MG_POP_PW" in line and "not set" in line
    line = rep.add(**{"--port": str(free_port())}).error_line()
    assert "could not be reached" in line
    line = rep.add(**{"--security": "starttls"}).error_line()  # the test server offers no STLS
    assert "STLS" in line
    assert rep.mailboxes() == []


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"--port": "0"}, "port"),
        ({"--port": "pop3"}, "port"),
        ({"--login": "popcli0\r\nDELE 1"}, "login"),
        ({"--host": "bad host;rm -rf"}, "host"),
        ({"--security": "ssl3"}, "security"),
        ({"user": "nobody@nowhere.example"}, "no user"),
    ],
    ids=["port-0", "port-word", "crlf-login", "bad-host", "bad-security", "no-user"],
)
def test_hostile_pop_add_arguments_are_one_line_errors(tmp_path, dovecot, override, words):
    cli = ImapCli(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", tmp_path)
    assert cli("db", "upgrade").code == 0
    rep = Rep.__new__(Rep)  # only the address is needed: no org set-up per case
    rep.mg, rep.dovecot, rep.login, rep.address = cli, dovecot, "popcli0", "x@example.jp"
    result = rep.add(**override)
    assert words in result.error_line().lower()
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 1
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize("command", [["pop"], ["pop", "add"]])
def test_pop_commands_answer_help(tmp_path, command):
    result = Mailgate(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path)(*command, "--help")
    assert result.code == 0, result.stderr
    assert "Usage: mailgate" in result.stdout
