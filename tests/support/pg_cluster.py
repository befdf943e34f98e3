"""A private PostgreSQL cluster a test starts and stops itself (outage tests).

The suite's shared server (``MAILGATE_TEST_DATABASE_URL``) cannot be stopped
by one test while others use it, so a fault test gets its own: ``initdb`` into
a temporary directory, ``pg_ctl start`` on a free loopback port, ``pg_ctl
stop -m fast`` to make storage go away (every connection cut, new ones
refused) and ``start`` again to bring it back with its data.

As root, the binaries run as the ``postgres`` OS user (``runuser``), which
owns the data directory; PostgreSQL refuses to run as root.  Tests skip with
the reason when the binaries are missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BIN = Path(os.environ.get("MAILGATE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"


def missing() -> str | None:
    """Why a private cluster cannot be started here (None when it can)."""
    for name in ("initdb", "pg_ctl", "postgres"):
        if not os.access(BIN / name, os.X_OK):
            return f"PostgreSQL server binaries not found in {BIN} (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser to start PostgreSQL as the postgres user"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgCluster:
    """One throw-away PostgreSQL cluster on ``127.0.0.1:port`` with trust authentication."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.port = _free_port()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", OS_USER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)

    def init(self) -> PgCluster:
        if os.geteuid() == 0:
            shutil.chown(self.root, OS_USER, OS_USER)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",  # a test cluster: its durability is not what is tested
            "-E",
            "UTF8",
            "--locale=C",
        )
        return self

    def start(self) -> PgCluster:
        """Start (or restart) the cluster and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c max_connections=100 -c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "start"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not listen on {self.port}; see {self.logfile}")

    def stop(self) -> None:
        """Stop it now: sessions are cut (``-m fast``), the port refuses until :meth:`start`."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
