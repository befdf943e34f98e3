"""``mailgate serve --only …`` as a real subprocess, as an operator runs it on each node.

Each process gets its own loopback ports (``127.0.0.1:0``) and reports them on
stdout; :class:`ServeProcess` reads that output in a thread, so a test can wait
for "serving" and still see everything the process said when it fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.support.server import MAIL_DOMAIN
from tests.test_cli import LAUNCH, ROOT

_SMTP = re.compile(r"SMTP dropbox \+ bounces on [\d.]+:(\d+)")
_HTTP = re.compile(r"HTTP API on http://[\d.]+:(\d+)")
_ROLES = re.compile(r"roles: (.*?); runners: (.*?); database")


class ServeProcess:
    """One ``mailgate serve [--only ROLES]`` subprocess on a shared database."""

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        only: str | None,
        **settings: str,
    ) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MAILGATE_DATABASE_URL": database_url,
            "MAILGATE_DATA_DIR": str(data_dir),
            "MAILGATE_MAIL_DOMAIN": MAIL_DOMAIN,
            "MAILGATE_SECRET_KEY": "test-secret-key",
            "MAILGATE_SMTP_LISTEN": "127.0.0.1:0",
            "MAILGATE_HTTP_LISTEN": "127.0.0.1:0",
            "MAILGATE_ALLOW_PRIVATE_TARGETS": "true",
            "MAILGATE_STOP_DEADLINE": "3",
        }
        env.update({f"MAILGATE_{k.upper()}": str(v) for k, v in settings.items()})
        args = [*LAUNCH, "serve"] + ([] if only is None else ["--only", only])
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.smtp_port: int | None = None
        self.http_port: int | None = None
        self.roles: list[str] = []
        self.runners: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if m := _SMTP.search(line):
                self.smtp_port = int(m.group(1))
            if m := _HTTP.search(line):
                self.http_port = int(m.group(1))
            if m := _ROLES.search(line):
                self.roles = [r for r in m.group(1).split(", ") if r]
                self.runners = [r for r in m.group(2).split(", ") if r]
                self._ready.set()
        self._ready.set()  # ended: wake whoever waits, they see it is not serving

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_serving(self, timeout: float = 60.0) -> ServeProcess:
        """Block until the process says it serves; AssertionError (with its output) if not."""
        self._ready.wait(timeout)
        if not self.runners and not self.roles:
            raise AssertionError(f"mailgate serve did not come up:\n{self.output}")
        return self

    def wait_exit(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def kill(self) -> None:
        """``kill -9``: no clean-up at all, as a crash or an OOM kill."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (a clean stop); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode


def stop_all(processes: list[ServeProcess]) -> None:
    """SIGTERM every process still running (test clean-up), then wait for each."""
    for p in processes:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in processes:
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait(10)
