"""A relay that answers what a test tells it to, over a real socket.

``smtp-sink`` refuses a whole command with one fixed reply; telling a refusal
about the recipient from one about us needs chosen codes at chosen stages:
``530`` at ``MAIL`` (authentication required), ``553`` at ``MAIL FROM``,
``552``/``554 5.7.1`` at ``RCPT``, a ``554`` after ``DATA`` naming the
recipient or not, and a ``554`` greeting.  aiosmtpd speaks the protocol; a
plain socket answers the greeting refusal (aiosmtpd always greets with 220).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller


@dataclass
class Script:
    """Replies by stage; ``None`` accepts.  ``{rcpt}`` in ``data`` is the recipient."""

    mail: str | None = None
    rcpt: dict[str, str] = field(default_factory=dict)  # address (lower case) → reply
    data: str | None = None
    received: list[str] = field(default_factory=list)  # recipients of accepted messages
    #: Each accepted message as delivered: (its recipients, the raw bytes after DATA).
    messages: list[tuple[list[str], bytes]] = field(default_factory=list)
    #: Replies to the first messages' DATA, one each, before ``data``/acceptance applies
    #: (``["451 4.3.0 Try again later"]``: the first message is refused, the next accepted).
    data_first: list[str] = field(default_factory=list)
    #: Every message whose bytes arrived, answered or not, refused or not, in order.
    arrived: list[bytes] = field(default_factory=list)
    #: While true, the reply to a message's DATA is withheld (the bytes have arrived):
    #: a sender killed meanwhile never learns that the relay had it.
    stall: bool = False
    #: Seconds every reply to a message's DATA is held back (a slow relay).
    data_delay: float = 0.0


class _Handler:
    def __init__(self, script: Script) -> None:
        self.script = script

    async def handle_MAIL(self, server, session, envelope, address, options):  # noqa: N802
        if self.script.mail:
            return self.script.mail
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        refusal = self.script.rcpt.get(address.lower())
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.script.arrived.append(bytes(envelope.content))
        await asyncio.sleep(self.script.data_delay)
        while self.script.stall:
            await asyncio.sleep(0.02)
        if self.script.data_first:
            return self.script.data_first.pop(0)
        if self.script.data:
            return self.script.data.format(rcpt=",".join(envelope.rcpt_tos))
        self.script.received.extend(envelope.rcpt_tos)
        self.script.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 2.0.0 Ok: queued"


class ScriptedRelay:
    """aiosmtpd on 127.0.0.1:port answering :class:`Script`; a context manager."""

    def __init__(self, port: int, script: Script) -> None:
        self.script = script
        self.controller = Controller(_Handler(script), hostname="127.0.0.1", port=port)

    def __enter__(self) -> Script:
        self.controller.start()
        return self.script

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class RefusingGreeting:
    """A server that greets every connection with ``reply`` (``554 …``) and hangs up."""

    def __init__(self, port: int, reply: str = "554 5.7.1 No SMTP service for you") -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.connections = 0

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                try:
                    conn.sendall(self.reply.encode() + b"\r\n")
                    conn.settimeout(1)
                    conn.recv(1024)  # QUIT, or nothing
                    conn.sendall(b"221 Bye\r\n")
                except OSError:
                    pass

    def __enter__(self) -> RefusingGreeting:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
