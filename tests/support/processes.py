"""``mailgate serve [--only ROLES]`` as a real subprocess, as an operator runs it on each node.

The one way the tests start a mailgate process, stop it (SIGTERM, timed), kill
it (``kill -9``, a crash or an OOM kill) or send it any other signal, and read
what it said.  Set-up (orgs, users, sends) is done in the test process,
straight against the same database.

Two reader threads drain stdout and stderr into one list as lines arrive, so a
process that logs a lot can never block on a full pipe, a test can wait for
"serving" on stdout, and a failure shows everything the process said.  By
default each listener is on ``127.0.0.1:0`` and the ports are read from what
the process prints; ``fixed_ports`` picks them up front instead, for a test
that needs ``MAILGATE_PUBLIC_URL`` to name the HTTP port (tracking links).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, NamedTuple

import httpx

from tests.support.server import MAIL_DOMAIN
from tests.support.smtp_sink import free_port
from tests.test_cli import LAUNCH, ROOT

_SMTP = re.compile(r"SMTP dropbox \+ bounces on [\d.]+:(\d+)")
_HTTP = re.compile(r"HTTP API on http://[\d.]+:(\d+)")
_OPS = re.compile(r"ops \(/healthz /readyz /metrics\) on [\d.]+:(\d+)")
_ROLES = re.compile(r"roles: (.*?); runners: (.*?); database")


class Stopped(NamedTuple):
    """How a process ended: its exit code (``-N`` for signal N) and how long that took."""

    code: int
    seconds: float


class ServeProcess:
    """One ``mailgate serve [--only ROLES]`` subprocess; ``settings`` become ``MAILGATE_*``.

    ``argv`` replaces the command (a wrapper script that patches mailgate before
    its ``main()``, or a compose service's command); ``environ`` adds raw
    ``MAILGATE_*`` variables (a compose service's environment) after everything else.
    """

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        only: str | None = None,
        *,
        fixed_ports: bool = False,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        name: str | None = None,
        **settings: str,
    ) -> None:
        self.name = name or f"mailgate serve{'' if only is None else f' --only {only}'}"
        self.smtp_port: int | None = None
        self.http_port: int | None = None
        self.ops_port: int | None = None
        listen = {"MAILGATE_SMTP_LISTEN": "127.0.0.1:0", "MAILGATE_HTTP_LISTEN": "127.0.0.1:0"}
        if fixed_ports:
            self.smtp_port, self.http_port = free_port(), free_port()
            listen = {
                "MAILGATE_SMTP_LISTEN": f"127.0.0.1:{self.smtp_port}",
                "MAILGATE_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
                "MAILGATE_PUBLIC_URL": f"http://127.0.0.1:{self.http_port}",
            }
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "MAILGATE_DATABASE_URL": database_url,
            "MAILGATE_DATA_DIR": str(data_dir),
            "MAILGATE_MAIL_DOMAIN": MAIL_DOMAIN,
            "MAILGATE_SECRET_KEY": "test-secret-key",
            **listen,
            **{f"MAILGATE_{k.upper()}": str(v) for k, v in settings.items()},
            **(environ or {}),
        }
        if argv is None:
            argv = [*LAUNCH, "serve", *([] if only is None else ["--only", only])]
        self.proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.lines: list[tuple[str, str]] = []  # (stream, line), in arrival order
        self.roles: list[str] = []
        self.runners: list[str] = []
        self._serving = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None, which: str) -> None:
        assert stream is not None
        for raw in stream:
            line = raw.rstrip("\n")
            self.lines.append((which, line))
            if which == "stdout":
                self._notice(line)
        if which == "stdout":
            self._serving.set()  # ended: wake whoever waits, they see it is not serving

    def _notice(self, line: str) -> None:
        """Take the ports and the roles from what ``serve`` prints once it listens."""
        if m := _SMTP.search(line):
            self.smtp_port = int(m.group(1))
        if m := _HTTP.search(line):
            self.http_port = int(m.group(1))
        if m := _OPS.search(line):
            self.ops_port = int(m.group(1))
        if m := _ROLES.search(line):
            self.roles = [r for r in m.group(1).split(", ") if r]
            self.runners = [r for r in m.group(2).split(", ") if r]
            self._serving.set()

    # -- what it said ------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        """stdout and stderr merged, as the lines arrived."""
        return "\n".join(line for _, line in self.lines)

    @property
    def stderr(self) -> str:
        """stderr alone: the log, without the start-up banner ``serve`` prints on stdout."""
        return "\n".join(line for which, line in self.lines if which == "stderr")

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ops_url(self) -> str:
        """Where /healthz, /readyz and /metrics answer: the HTTP API, else the ops listener."""
        return self.http_url if self.http_port else f"http://127.0.0.1:{self.ops_port}"

    # -- waiting -----------------------------------------------------------------------

    def wait_serving(self, timeout: float = 60.0, probe: str | None = None) -> ServeProcess:
        """Block until the process says it serves and, given ``probe`` (``/healthz``,
        ``/readyz``), until that path answers 200; AssertionError with its output if not."""
        deadline = time.monotonic() + timeout
        self._serving.wait(timeout)
        if not self.runners and not self.roles:
            self._fail("did not come up")
        while probe is not None:
            if self.proc.poll() is not None:
                self._fail(f"exited {self.proc.returncode}")
            try:
                if httpx.get(self.ops_url + probe, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self._fail(f"did not answer {probe}")
            time.sleep(0.1)
        return self

    def _fail(self, what: str) -> None:
        self._join()
        raise AssertionError(f"{self.name} {what}:\n{self.output}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for it to end by itself (or after a signal sent through ``proc``); its code."""
        code = self.proc.wait(timeout)
        self._join()
        return code

    def _join(self) -> None:
        if self.proc.poll() is not None:
            for reader in self._readers:
                reader.join(5)

    # -- stopping ----------------------------------------------------------------------

    def signal(self, sig: int, timeout: float = 30.0) -> tuple[int, str]:
        """Send ``sig`` and wait for the exit: (exit code, everything it said)."""
        self.proc.send_signal(sig)  # a no-op once it has ended
        return self.wait_exit(timeout), self.output

    def terminate(self, timeout: float = 30.0) -> Stopped:
        """SIGTERM, a clean stop, and how long it took; ``kill -9`` if it outlives ``timeout``
        (the code then says so).  An ended process answers its code and 0 s."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)  # a no-op once it has ended
        return Stopped(self._wait_or_kill(timeout), time.monotonic() - started)

    def _wait_or_kill(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._join()
        return self.proc.returncode

    def kill(self) -> None:
        """``kill -9``: no clean-up at all, as a crash or an OOM kill."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._join()


def stop_all(processes: Iterable[ServeProcess], timeout: float = 20.0) -> None:
    """SIGTERM every process still running at once (test clean-up), then wait for each
    (``kill -9`` for one still there after ``timeout``)."""
    processes = list(processes)
    for p in processes:
        p.proc.send_signal(signal.SIGTERM)  # a no-op once it has ended
    deadline = time.monotonic() + timeout
    for p in processes:
        p._wait_or_kill(max(0.1, deadline - time.monotonic()))
