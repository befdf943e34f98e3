"""One POP3 connection: connect, log in, list, retrieve, and nothing that deletes.

Python's :mod:`poplib` speaks the protocol; it is blocking, so every command
runs in a worker thread (:func:`asyncio.to_thread`).  Why poplib and not an
async client: no asyncio POP3 library on PyPI is maintained (the few there are
single-release experiments), POP3 is a handful of line commands, and poplib is
in the standard library and reviewed with it.  This module adds what a
long-running poller needs from it:

* a finite deadline on every command.  The socket timeout bounds each read; a
  server dripping one byte just inside it would still hold a thread forever, so
  past the deadline the socket is shut down from the event loop, which ends the
  blocked read in the thread;
* bounded answers: a status line or listing line of at most :data:`MAX_LINE`
  bytes, at most :data:`MAX_LISTING` messages, and a message body read by our
  own loop with a byte cap (poplib's ``retr`` keeps everything a server sends,
  and refuses real mail whose lines exceed its 2,048-byte ``_MAXLINE``);
* failures as :class:`~gateway.receive.imap.client.MailboxError`, the one error
  language of the mailbox service (``bad_login``, ``tls_failure``, …), with
  messages a CRM user can read and never the password;
* no ``DELE``, ever: the rep's mail stays on their server.
"""

from __future__ import annotations

import asyncio
import contextlib
import poplib
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.receive.imap.client import MailboxConfig, MailboxError, _os_reason, _ssl_reason

#: A status or listing line (RFC 1939 allows 512 octets; UIDLs are at most 70 characters).
MAX_LINE = 4096
#: Messages one listing may name; a server saying more is not believed.
MAX_LISTING = 1_000_000
#: Bytes drained after a message turned out larger than its LIST size before giving up
#: on the connection (what a hostile server sends endlessly is never kept).
DRAIN_LIMIT = 64 * 1024 * 1024

DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Listed:
    """One message of the maildrop: its number in this session, size and unique id."""

    number: int
    size: int
    uidl: str


class TooLarge(Exception):
    """The message grew past the limit while it was being read (its LIST size was wrong)."""

    def __init__(self, size: int, drained: bool) -> None:
        super().__init__(f"more than {size} bytes")
        self.size = size
        #: False: the rest was not read, the connection can no longer be used.
        self.drained = drained


class _Client(poplib.POP3):
    """poplib with bounded reads; the TLS variants are chosen at connect time."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        context: ssl.SSLContext | None,
        server_hostname: str,
    ) -> None:
        self._implicit_tls = context
        self._server_hostname = server_hostname
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = super()._create_socket(timeout)
        if self._implicit_tls is not None:
            sock = self._implicit_tls.wrap_socket(sock, server_hostname=self._server_hostname)
            self._tls_established = True
        return sock

    def _getline(self) -> tuple[bytes, int]:
        line = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets

    def starttls(self, context: ssl.SSLContext) -> None:
        """STLS, checking the certificate against the server's name (not the address)."""
        self._shortcmd("STLS")
        self.sock = context.wrap_socket(self.sock, server_hostname=self._server_hostname)
        self.file = self.sock.makefile("rb")
        self._tls_established = True

    def listing(self, command: str) -> list[bytes]:
        """A multi-line answer (LIST, UIDL, CAPA) of at most :data:`MAX_LISTING` lines."""
        self._putcmd(command)
        self._getresp()
        lines: list[bytes] = []
        while True:
            line, _ = self._getline()
            if line == b".":
                return lines
            if len(lines) >= MAX_LISTING:
                raise poplib.error_proto(f"more than {MAX_LISTING} lines in the {command} answer")
            lines.append(line[1:] if line.startswith(b"..") else line)

    def retr_bounded(self, number: int, limit: int) -> bytes:
        """RETR, keeping the message's own bytes (line ends included), at most ``limit``."""
        self._putcmd(f"RETR {number}")
        self._getresp()
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.file.readline(limit + 3)
            if not line:
                raise poplib.error_proto("-ERR EOF")
            if line in (b".\r\n", b".\n"):
                return b"".join(parts)
            if line.startswith(b".."):
                line = line[1:]
            total += len(line)
            if total > limit:
                raise TooLarge(limit, drained=self._drain(total))
            parts.append(line)

    def _drain(self, already: int) -> bool:
        """Read a too-large message to its end, so the session can go on; False: gave up."""
        while already < DRAIN_LIMIT:
            line = self.file.readline(1024 * 1024)
            if not line:
                return False
            if line in (b".\r\n", b".\n"):
                return True
            already += len(line)
        return False


class PopSession:
    """A logged-in POP3 session.  Every method raises :class:`MailboxError` only.

    POP3 locks the maildrop from login to QUIT and shows no mail that arrives
    meanwhile, so a poller logs in, lists, retrieves and quits each cycle.
    """

    def __init__(self, config: MailboxConfig, timeout: float) -> None:
        self.config = config
        self.timeout = timeout
        self._client: _Client | None = None
        self.commands: Counter[str] = Counter()
        self.capabilities: set[str] = set()

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def _run(self, what: str, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run one blocking step in a thread under a deadline; errors become MailboxError."""
        if what != "connect" and self._client is None:
            raise MailboxError(
                "disconnected", "The mail server closed the connection; will reconnect"
            )
        self.commands[what] += 1
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), limit)
        except TimeoutError as exc:
            self.abandon()
            raise MailboxError(
                "timeout", f"The mail server did not answer {what} within {limit:g} s"
            ) from exc
        except MailboxError:
            raise
        except TooLarge:
            raise
        except ssl.SSLError as exc:
            self.abandon()
            raise MailboxError(
                "tls_failure", f"TLS with {self.where} failed: {_ssl_reason(exc)}"
            ) from exc
        except poplib.error_proto as exc:
            text = _words(exc)
            if "EOF" in text:
                self.abandon()
                raise MailboxError(
                    "disconnected", "The mail server closed the connection; will reconnect"
                ) from exc
            if text.startswith("-ERR") or text.startswith("-"):
                raise MailboxError(
                    "protocol", f"The mail server refused {what}: {text[:200]}"
                ) from exc
            self.abandon()
            raise MailboxError(
                "protocol", f"The mail server's answer to {what} was not understood: {text[:200]}"
            ) from exc
        except (ValueError, UnicodeError, IndexError) as exc:
            self.abandon()
            raise MailboxError(
                "protocol", f"The mail server's answer to {what} was not understood"
            ) from exc
        except OSError as exc:
            self.abandon()
            if what == "connect":
                raise MailboxError(
                    "unreachable",
                    f"Could not reach the mail server {self.where}: {_os_reason(exc)}",
                ) from exc
            raise MailboxError(
                "disconnected",
                f"The mail server closed the connection ({_os_reason(exc)}); will reconnect",
            ) from exc

    def abandon(self) -> None:
        """Drop the connection at once (also unblocks a thread stuck reading it)."""
        client, self._client = self._client, None
        if client is None:
            return
        sock = client.sock  # None once poplib's quit() closed it
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            client.close()

    # -- connecting -------------------------------------------------------------

    async def open(self, context: ssl.SSLContext) -> None:
        config = self.config
        implicit = context if config.security == "tls" else None
        self._client = await self._run(
            "connect",
            lambda: _Client(
                config.address or config.host, config.port, self.timeout, implicit, config.host
            ),
        )
        self.capabilities = await self._capa()
        if config.security == "starttls":
            if "STLS" not in self.capabilities:
                self.abandon()
                raise MailboxError(
                    "tls_failure",
                    f"{self.where} does not offer STLS; refusing to send the password in clear",
                )
            client = self._client
            try:
                await self._run("STLS", lambda: client.starttls(context))
            except MailboxError as exc:
                if exc.kind == "protocol":
                    raise MailboxError(
                        "tls_failure", f"STLS with {self.where} failed: {exc.message}"
                    ) from exc
                raise
            self.capabilities = await self._capa()

    async def _capa(self) -> set[str]:
        client = self._client
        try:
            lines = await self._run("CAPA", lambda: client.listing("CAPA"))
        except MailboxError as exc:
            if exc.kind != "protocol" or self._client is None:
                raise
            return set()  # CAPA is optional (RFC 2449): a -ERR just means "ask nothing"
        return {line.split(b" ", 1)[0].decode("ascii", "replace").upper() for line in lines if line}

    async def login(self) -> None:
        client = self._client
        login, password = self.config.login, self.config.password
        if any(c in login + password for c in "\r\n\0"):
            self.abandon()
            raise MailboxError("bad_login", "The server refused the login or password")
        try:
            await self._run("USER", lambda: client.user(login))
            await self._run("PASS", lambda: client.pass_(password))
        except MailboxError as exc:
            if exc.kind != "protocol":
                raise
            self.abandon()
            text = exc.message.upper()
            if "[IN-USE]" in text or "[SYS/TEMP]" in text or "UNAVAILABLE" in text:
                raise MailboxError(
                    "unreachable", "The mail server cannot log you in right now (mailbox in use)"
                ) from exc
            raise MailboxError("bad_login", "The server refused the login or password") from exc

    # -- commands ------------------------------------------------------------------

    async def list_messages(self) -> list[Listed]:
        """Every message with its size and UIDL (which the server must support)."""
        client = self._client
        try:
            uidl_lines = await self._run("UIDL", lambda: client.listing("UIDL"))
        except MailboxError as exc:
            if exc.kind == "protocol" and self._client is not None:
                raise MailboxError(
                    "protocol",
                    "The POP3 server does not support UIDL (unique message ids), so mail "
                    "left on it cannot be told apart from mail already filed; use IMAP",
                ) from exc
            raise
        list_lines = await self._run("LIST", lambda: client.listing("LIST"))
        return merge_listing(list_lines, uidl_lines)

    async def retrieve(self, number: int, limit: int, timeout: float) -> bytes:
        """RETR one message (at most ``limit`` bytes; :class:`TooLarge` past it)."""
        client = self._client
        try:
            return await self._run("RETR", lambda: client.retr_bounded(number, limit), timeout)
        except TooLarge as exc:
            if not exc.drained:
                self.abandon()
            raise

    async def quit(self) -> None:
        """QUIT (never after a DELE: we send none); a server already gone is fine."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(MailboxError):
            await self._run("QUIT", client.quit, timeout=min(self.timeout, 5.0))
        self.abandon()


async def connect(
    config: MailboxConfig,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> PopSession:
    """Connect, secure (``tls``: POP3S, ``starttls``: STLS) and log in."""
    if not timeout or timeout <= 0:
        raise ValueError("a POP3 session needs a finite, positive timeout")
    session = PopSession(config, timeout)
    try:
        await session.open(ssl_context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
        await session.login()
    except BaseException:
        session.abandon()
        raise
    return session


# -- parsing (pure) ------------------------------------------------------------------


def merge_listing(list_lines: list[bytes], uidl_lines: list[bytes]) -> list[Listed]:
    """``LIST`` (number size) and ``UIDL`` (number uidl) joined on the message number.

    Lines that do not parse, numbers listed twice and UIDLs that are not 1–70
    printable characters (RFC 1939 §7) are refused: a server that answers
    like that cannot be trusted to say what is new.
    """
    sizes = _pairs(list_lines, "LIST")
    uidls = _pairs(uidl_lines, "UIDL")
    out: list[Listed] = []
    seen_uidls: set[str] = set()
    for number, uidl in sorted(uidls.items()):
        if not 1 <= len(uidl) <= 70 or not all(0x21 <= ord(c) <= 0x7E for c in uidl):
            raise MailboxError("protocol", "The POP3 server sent a malformed unique id (UIDL)")
        if uidl in seen_uidls:
            raise MailboxError("protocol", "The POP3 server gave two messages the same UIDL")
        seen_uidls.add(uidl)
        size = sizes.get(number)
        if size is None or not size.isdigit():
            raise MailboxError("protocol", f"The POP3 server did not LIST message {number}")
        out.append(Listed(number, int(size), uidl))
    return out


def _pairs(lines: list[bytes], what: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in lines:
        words = line.decode("ascii", "replace").split()
        if len(words) < 2 or not words[0].isdigit() or int(words[0]) in out:
            raise MailboxError("protocol", f"The POP3 server's {what} answer was not understood")
        out[int(words[0])] = words[1]
    return out


def _words(exc: poplib.error_proto) -> str:
    arg = exc.args[0] if exc.args else ""
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
