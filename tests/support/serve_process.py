"""``mailgate serve`` as a real subprocess on free loopback ports (fault tests).

The fault tests stop its database or send it a signal, exactly as an operator
would, and read what it logged.  Set-up (orgs, users, sends) is done in the
test process, straight against the same database.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.server import MAIL_DOMAIN
from tests.test_cli import LAUNCH, ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """``mailgate serve [--only roles]``; stderr goes to a file so a long run cannot block it."""

    def __init__(
        self, database_url: str, data_dir: Path, roles: str | None = None, **settings: str
    ) -> None:
        self.smtp_port, self.http_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MAILGATE_DATABASE_URL": database_url,
            "MAILGATE_DATA_DIR": str(data_dir),
            "MAILGATE_MAIL_DOMAIN": MAIL_DOMAIN,
            "MAILGATE_SECRET_KEY": "test-secret-key",
            "MAILGATE_SMTP_LISTEN": f"127.0.0.1:{self.smtp_port}",
            "MAILGATE_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "MAILGATE_PUBLIC_URL": f"http://127.0.0.1:{self.http_port}",
        }
        self.env.update({f"MAILGATE_{k.upper()}": v for k, v in settings.items()})
        self.args = [*LAUNCH, "serve", *(["--only", roles] if roles else [])]
        self._log = tempfile.NamedTemporaryFile(prefix="mailgate-serve-", suffix=".log")
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> ServeProcess:
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mailgate serve exited {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.http_url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"mailgate serve did not answer /healthz: {self.log()}")

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
