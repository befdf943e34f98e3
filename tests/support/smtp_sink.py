"""Postfix's ``smtp-sink`` as a real relay for outbound tests (and the send benchmark).

It accepts (or, with flags, refuses) over a real socket and can dump each
message to a file.  Tests skip with a clear reason when it is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def available() -> bool:
    return os.access(SMTP_SINK, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """``smtp-sink`` on 127.0.0.1:port; ``flags`` inject failures (``-r RCPT`` → 4xx …)."""

    def __init__(self, port: int, dump: bool = True, flags: tuple[str, ...] = ()):
        self.port, self.flags = port, flags
        self.dump_dir: Path | None = None
        if dump:
            # Its own world-writable directory: as root, smtp-sink runs as nobody and
            # cannot reach into pytest's private (0700) temporary directories.
            self.dump_dir = Path(tempfile.mkdtemp(prefix="mailgate-sink-"))
            os.chmod(self.dump_dir, 0o777)  # noqa: S103 - a test-only dump dir
        self.proc: subprocess.Popen | None = None

    def start(self) -> SmtpSink:
        args = [SMTP_SINK, "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        if self.dump_dir is not None:
            args += ["-d", f"{self.dump_dir}/%M"]
        args += [*self.flags, f"127.0.0.1:{self.port}", "100"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"smtp-sink did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir, ignore_errors=True)

    def messages(self) -> list[bytes]:
        """Dumped messages (smtp-sink's X-* envelope headers first), oldest first."""
        if self.dump_dir is None or not self.dump_dir.exists():  # stopped: removed
            return []
        files = sorted(
            (p for p in self.dump_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime
        )
        return [p.read_bytes() for p in files]
