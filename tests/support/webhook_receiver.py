"""A real HTTP receiver for webhook tests: verifies every request with ``standardwebhooks``.

It listens on 127.0.0.1 in a thread (``http.server``), checks each POST's
signature with ``standardwebhooks.Webhook(secret).verify(body, headers)`` for
the secret registered for its path, and answers from a per-path script of
statuses (then 200).  It records every request, and how many were in flight
at once per path (two deliverers posting to one endpoint at the same time
would show here).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Hit:
    path: str
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    status: int
    verified: bool
    problem: str = ""

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _DualStack(ThreadingHTTPServer):
    """Listens on ``::`` for IPv6 and IPv4 alike: ``localhost`` may resolve to either."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Receiver:
    """Plain HTTP on 127.0.0.1; with ``tls`` (a server context), HTTPS on ``localhost``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.hits: list[Hit] = []
        self.script: dict[str, list[int]] = defaultdict(list)
        self.secrets: dict[str, str] = {}
        #: Seconds to wait before answering: for every path, or per path.
        self.delay = 0.0
        self.delays: dict[str, float] = {}
        self.inflight: dict[str, int] = defaultdict(int)
        self.max_inflight: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                receiver.handle(self)

        self.tls = tls
        if tls is None:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        else:
            if socket.has_dualstack_ipv6():
                self.server = _DualStack(("::", 0), Handler)
            else:
                self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        port = self.server.server_address[1]
        if self.tls is not None:
            return f"https://localhost:{port}{path}"
        return f"http://127.0.0.1:{port}{path}"

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path
        body = req.rfile.read(int(req.headers.get("content-length") or 0))
        with self.lock:
            self.inflight[path] += 1
            self.max_inflight[path] = max(self.max_inflight[path], self.inflight[path])
        try:
            delay = self.delays.get(path, self.delay)
            if delay:
                time.sleep(delay)
            headers = {k.lower(): v for k, v in req.headers.items()}
            verified, problem = False, "no secret registered"
            secret = self.secrets.get(path)
            if secret is not None:
                try:
                    Webhook(secret).verify(body, headers)
                    verified, problem = True, ""
                except WebhookVerificationError as exc:
                    problem = str(exc)
            with self.lock:
                status = self.script[path].pop(0) if self.script[path] else 200
                self.hits.append(
                    Hit(
                        path,
                        headers.get("webhook-id", ""),
                        headers.get("webhook-timestamp", ""),
                        headers.get("webhook-signature", ""),
                        body,
                        status,
                        verified,
                        problem,
                    )
                )
        finally:
            with self.lock:
                self.inflight[path] -= 1
        req.send_response(status)
        req.send_header("content-type", "text/plain")
        reply = b"ok" if status < 300 else b"nope " * 100
        req.send_header("content-length", str(len(reply)))
        req.end_headers()
        req.wfile.write(reply)

    def at(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]

    def delivered(self, path: str) -> list[Hit]:
        return [h for h in self.at(path) if h.ok]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
