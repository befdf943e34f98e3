"""``mailgate serve --only ROLES`` as a real subprocess, for the fault tests.

A fault the issue names (``kill -9`` mid-batch, SIGTERM under load) is a
signal to a process, so these tests run the roles as operators do: one
process per role, sharing one database, stopped or killed from outside.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.server import MAIL_DOMAIN
from tests.test_cli import LAUNCH, ROOT


class RoleProcess:
    """``mailgate serve --only ROLES`` in its own process; ``settings`` become ``MAILGATE_*``."""

    def __init__(self, roles: str, database_url: str, data_dir: Path, **settings: str) -> None:
        self.roles = roles
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MAILGATE_DATABASE_URL": database_url,
            "MAILGATE_DATA_DIR": str(data_dir),
            "MAILGATE_MAIL_DOMAIN": MAIL_DOMAIN,
            "MAILGATE_SECRET_KEY": "test-secret-key",
        }
        env.update({f"MAILGATE_{k.upper()}": v for k, v in settings.items()})
        # stderr to a file: a pipe nobody reads would block a process that logs a lot.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [*LAUNCH, "serve", "--only", roles],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_listening(self, port: int, timeout: float = 30.0) -> RoleProcess:
        """Return once ``port`` accepts connections; fail with the process's output if it died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc.wait()
                raise AssertionError(f"serve --only {self.roles} exited: {self.stderr()}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"serve --only {self.roles} did not listen on {port}")

    def wait_started(self) -> RoleProcess:
        """Return once the process says its roles run (``roles: …`` on stdout)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("roles: "):
                return self
        self.proc.wait()
        raise AssertionError(f"serve --only {self.roles} exited: {self.stderr()}")

    def signal(self, sig: int) -> tuple[int, str]:
        """Send ``sig`` and wait for the exit: (return code, stderr)."""
        self.proc.send_signal(sig)
        self.proc.communicate(timeout=30)
        return self.proc.returncode, self.stderr()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
