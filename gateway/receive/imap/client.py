"""One IMAP connection: connect, log in, and run commands that always end.

aioimaplib does the wire protocol; this module adds what a long-running poller
needs from it:

* every command runs under a finite timeout and is abandoned the moment the
  connection drops (aioimaplib leaves a command waiting forever when the
  server hangs up, e.g. after ``doveadm kick``);
* failures become a :class:`MailboxError` whose ``kind`` the caller can act on
  and whose message a CRM user can read;
* the password is never written to a log (aioimaplib's own send log is
  bypassed: its scrubbing misses passwords that need quoting);
* a per-session command counter, so tests and metrics can prove that an idle
  poll issues no FETCH.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aioimaplib import aioimaplib as imap

from gateway.receive.imap.checkpoint import FolderState
from gateway.receive.imap.utf7 import encode_modified_utf7

log = logging.getLogger(__name__)

Security = Literal["tls", "starttls", "none"]
ErrorKind = Literal[
    "bad_login",
    "tls_failure",
    "unreachable",
    "protocol",
    "timeout",
    "disconnected",
    "private_host",
]

#: Generous for a slow server, finite so a dead socket cannot hang a poller.
DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    """How to reach one user's mailbox (one CRM user's connected account)."""

    host: str
    port: int
    login: str
    password: str = field(repr=False)
    security: Security = "tls"
    #: The account's Sent folder when the server does not flag one \\Sent.
    sent_folder_override: str | None = None
    #: The IP address to connect to, checked beforehand (``host`` still names the server
    #: for TLS); None connects to whatever ``host`` resolves to at connect time.
    address: str | None = None

    def __post_init__(self) -> None:
        if self.security not in ("tls", "starttls", "none"):
            raise ValueError(f"security must be tls, starttls or none, not {self.security!r}")


class MailboxError(Exception):
    """A mailbox problem, in words a CRM user can act on.

    ``kind`` is one of: ``bad_login`` (fix the credentials; retrying will not
    help), ``private_host`` (the host is not a public address and the operator
    does not allow private targets; no connection was tried), ``tls_failure``,
    ``unreachable``, ``protocol`` (the server said something we cannot work
    with), ``timeout`` and ``disconnected`` (reconnect and carry on from the
    checkpoint).
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.kind != "bad_login"

    def __repr__(self) -> str:
        return f"MailboxError({self.kind!r}, {self.message!r})"


class _ExamineCommand(imap.Command):
    """EXAMINE run through aioimaplib's SELECT machinery.

    aioimaplib treats EXAMINE as an asynchronous "simple command": it drops
    the untagged EXISTS/UIDVALIDITY/UIDNEXT answers we need and leaves the
    state at AUTH so a following UID FETCH is refused.  SELECT is handled
    right, and EXAMINE is SELECT read-only, so we borrow its name for
    dispatch and put EXAMINE on the wire.
    """

    def __init__(self, tag: str, mailbox: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__("SELECT", tag, mailbox, loop=loop)

    def __repr__(self) -> str:
        return f"{self.tag} EXAMINE {self.args[0]}"


class _Protocol(imap.IMAP4ClientProtocol):
    """aioimaplib's protocol with a command counter and a password-free send log."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, conn_lost_cb: Callable[[Exception | None], None]
    ) -> None:
        super().__init__(loop, conn_lost_cb)
        self.commands: Counter[str] = Counter()

    def send(self, line: str, scrub: str | None = None) -> None:
        words = line.split(" ", 3)
        if words[0] == "DONE":
            name = "DONE"
        elif len(words) > 2 and words[1] == "UID":
            name = f"UID {words[2]}"
        else:
            name = words[1] if len(words) > 1 else words[0]
        self.commands[name] += 1
        log.debug("IMAP send %s", name)
        self.transport.write(f"{line}\r\n".encode())

    @imap.change_state
    async def examine(self, mailbox: str) -> imap.Response:
        response = await self.execute(_ExamineCommand(self.new_tag(), mailbox, self.loop))
        self.state = imap.SELECTED if response.result == "OK" else imap.AUTH
        return response

    async def starttls(self, context: ssl.SSLContext, host: str) -> None:
        response = await self.execute(imap.Command("STARTTLS", self.new_tag(), loop=self.loop))
        if response.result != "OK":
            raise MailboxError("tls_failure", "The server refused to start TLS (STARTTLS)")
        self.transport = await self.loop.start_tls(
            self.transport, self, context, server_hostname=host
        )
        await self.capability()


class _Client(imap.IMAP4):
    def __init__(self, *args: Any, server_hostname: str | None = None, **kwargs: Any) -> None:
        # Set before IMAP4.__init__, which calls create_client.
        self._server_hostname = server_hostname
        super().__init__(*args, **kwargs)

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(
                lambda: self.protocol,
                host,
                port,
                ssl=ssl_context,
                server_hostname=self._server_hostname if ssl_context else None,
            )
        )


class ImapSession:
    """A logged-in connection.  Every method raises :class:`MailboxError` only."""

    def __init__(
        self, config: MailboxConfig, timeout: float, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.config = config
        self.timeout = timeout
        self._ssl_context = ssl_context or _tls_context()
        self._lost = asyncio.Event()
        self._lost_reason: str | None = None
        self.selected: str | None = None
        self.selected_readonly = True
        self._client = _Client(
            config.address or config.host,
            config.port,
            server_hostname=config.host,
            timeout=timeout,
            conn_lost_cb=self._on_connection_lost,
            ssl_context=self._ssl_context if config.security == "tls" else None,
        )

    # -- plumbing ------------------------------------------------------------

    @property
    def protocol(self) -> _Protocol:
        return self._client.protocol  # type: ignore[return-value]

    @property
    def commands(self) -> Counter[str]:
        """Commands sent so far on this connection, by name (``"UID FETCH"``, ``"EXAMINE"``)."""
        return self.protocol.commands

    @property
    def capabilities(self) -> set[str]:
        return {c.upper() for c in self.protocol.capabilities}

    def has_capability(self, name: str) -> bool:
        return name.upper() in self.capabilities

    @property
    def connected(self) -> bool:
        return not self._lost.is_set()

    def _on_connection_lost(self, exc: Exception | None) -> None:
        self._lost_reason = str(exc) if exc else None
        self._lost.set()

    def mark_lost(self, reason: str) -> None:
        """Give up on the connection (the server said BYE, or a command hung)."""
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()
        transport = self.protocol.transport
        if transport is not None:
            transport.close()

    def disconnected_error(self) -> MailboxError:
        detail = f" ({self._lost_reason})" if self._lost_reason else ""
        return MailboxError(
            "disconnected", f"The mail server closed the connection{detail}; will reconnect"
        )

    async def call(self, what: str, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Await an aioimaplib coroutine, but never longer than ``timeout`` or the connection."""
        limit = self.timeout if timeout is None else timeout
        task = asyncio.ensure_future(awaitable)
        if self._lost.is_set():
            task.cancel()
            raise self.disconnected_error()
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            task.cancel()
            lost.cancel()
            raise
        lost.cancel()
        if task in done:
            try:
                return task.result()
            except MailboxError:
                raise
            except ssl.SSLError as exc:  # before ValueError: cert errors are both
                self.mark_lost("TLS failed")
                where = f"{self.config.host}:{self.config.port}"
                raise MailboxError(
                    "tls_failure", f"TLS with {where} failed: {_ssl_reason(exc)}"
                ) from exc
            except (imap.AioImapException, RecursionError, ValueError) as exc:
                self.mark_lost(f"{what} failed")
                raise MailboxError(
                    "protocol", f"The mail server's answer to {what} was not understood: {exc!r}"
                ) from exc
            except OSError as exc:
                self.mark_lost(str(exc))
                raise self.disconnected_error() from exc
            except TimeoutError as exc:
                self.mark_lost(f"{what} timed out")
                raise _timeout(what, limit) from exc
        task.cancel()
        if lost in done:
            raise self.disconnected_error()
        # The command is still pending inside aioimaplib: the connection is unusable.
        self.mark_lost(f"{what} timed out")
        raise _timeout(what, limit)

    async def command(
        self, what: str, awaitable: Awaitable[imap.Response], timeout: float | None = None
    ) -> imap.Response:
        """Like :meth:`call`, and a NO/BAD answer becomes a ``protocol`` error."""
        response = await self.call(what, awaitable, timeout)
        if response.result != "OK":
            raise MailboxError("protocol", f"The mail server refused {what}: {_text(response)}")
        return response

    # -- IMAP commands --------------------------------------------------------

    async def examine(self, folder: str, condstore: bool = False) -> FolderState:
        """Open a folder read-only (so nothing we do marks mail \\Seen).

        ``condstore`` asks for HIGHESTMODSEQ (RFC 7162) for cheap flag sync.
        """
        wire = quote_mailbox(folder) + (" (CONDSTORE)" if condstore else "")
        response = await self.command(f"EXAMINE {folder}", self.protocol.examine(wire))
        self.selected, self.selected_readonly = folder, True
        return parse_folder_state(response.lines)

    async def select(self, folder: str) -> FolderState:
        """Open a folder read-write (needed to change flags)."""
        response = await self.command(
            f"SELECT {folder}", self.protocol.select(quote_mailbox(folder))
        )
        self.selected, self.selected_readonly = folder, False
        return parse_folder_state(response.lines)

    async def uid_search(self, *criteria: str) -> list[int]:
        response = await self.command(
            "UID SEARCH", self.protocol.search(*criteria, charset=None, by_uid=True)
        )
        return parse_search(response.lines)

    async def uid_fetch(
        self, uids: str, items: str, timeout: float | None = None
    ) -> list[bytes | bytearray]:
        response = await self.command(
            "UID FETCH", self.protocol.fetch(uids, items, by_uid=True), timeout
        )
        return response.lines

    async def uid_store(self, uids: str, action: str, flags: str) -> None:
        await self.command("UID STORE", self.protocol.store(uids, action, flags, by_uid=True))

    async def list_folders(self, *args: str) -> list[bytes]:
        response = await self.command("LIST", self.protocol.simple_command("LIST", *args))
        return [line for line in response.lines[:-1] if isinstance(line, bytes)]

    async def noop(self) -> list[bytes]:
        response = await self.command("NOOP", self.protocol.simple_command("NOOP"))
        return [line for line in response.lines if isinstance(line, bytes)]

    async def logout(self) -> None:
        """Polite goodbye; a server that already left is fine too."""
        if self._lost.is_set():
            return
        try:
            await self.call("LOGOUT", self.protocol.logout(), timeout=min(self.timeout, 5.0))
        except MailboxError:
            pass
        finally:
            self.mark_lost("logged out")

    async def __aenter__(self) -> ImapSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.logout()

    # -- connecting --------------------------------------------------------------

    async def _open(self) -> None:
        config = self.config
        where = f"{config.host}:{config.port}"
        try:
            await asyncio.wait_for(self._client._client_task, self.timeout)
        except ssl.SSLError as exc:
            raise MailboxError(
                "tls_failure", f"TLS with {where} failed: {_ssl_reason(exc)}"
            ) from exc
        except (TimeoutError, OSError) as exc:
            raise MailboxError(
                "unreachable", f"Could not reach the mail server {where}: {_os_reason(exc)}"
            ) from exc
        try:
            await asyncio.wait_for(self.protocol.wait("AUTH|NONAUTH"), self.timeout)
        except TimeoutError as exc:
            self.mark_lost("no greeting")
            if self._lost_reason and "ssl" in self._lost_reason.lower():
                raise MailboxError(
                    "tls_failure", f"TLS with {where} failed: {self._lost_reason}"
                ) from exc
            raise MailboxError(
                "protocol", f"{where} accepted the connection but did not greet like an IMAP server"
            ) from exc
        if config.security == "starttls":
            if not self.has_capability("STARTTLS"):
                self.mark_lost("no STARTTLS")
                raise MailboxError(
                    "tls_failure",
                    f"{where} does not offer STARTTLS; refusing to send the password in clear",
                )
            try:
                await self.call("STARTTLS", self.protocol.starttls(self._ssl_context, config.host))
            except MailboxError as exc:
                if exc.kind == "protocol":
                    raise MailboxError(
                        "tls_failure", f"STARTTLS with {where} failed: {exc.message}"
                    ) from exc
                raise

    async def _login(self) -> None:
        if self.protocol.state == imap.AUTH:  # PREAUTH
            return
        response = await self.call(
            "LOGIN",
            self.protocol.execute(
                imap.Command(
                    "LOGIN",
                    self.protocol.new_tag(),
                    imap.quoted(self.config.login),
                    imap.quoted(self.config.password),
                    loop=self.protocol.loop,
                )
            ),
        )
        if response.result != "OK":
            text = _text(response)
            self.mark_lost("login refused")
            if "UNAVAILABLE" in text.upper():
                raise MailboxError(
                    "unreachable", f"The mail server cannot log you in right now: {text}"
                )
            raise MailboxError("bad_login", "The server refused the login or password")
        self.protocol.state = imap.AUTH
        # Capabilities often change after login; ask instead of parsing the OK text.
        await self.call("CAPABILITY", self.protocol.capability())


async def connect(
    config: MailboxConfig,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> ImapSession:
    """Connect and log in.  ``timeout`` bounds each step and every later command.

    ``ssl_context`` replaces the default (system CAs, hostname checked), e.g.
    to trust a self-hosted server's own CA.
    """
    if not timeout or timeout <= 0:
        raise ValueError("an IMAP session needs a finite, positive timeout")
    session = ImapSession(config, timeout, ssl_context)
    try:
        await session._open()
        await session._login()
    except BaseException:
        session.mark_lost("connect failed")
        raise
    return session


# -- parsing helpers (pure) -------------------------------------------------------

_EXISTS = re.compile(rb"^(\d+) EXISTS", re.IGNORECASE)
_CODE = re.compile(rb"\[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)\]", re.IGNORECASE)


def parse_folder_state(lines: list[bytes | bytearray]) -> FolderState:
    """UIDVALIDITY/UIDNEXT/EXISTS out of a SELECT or EXAMINE answer."""
    exists = 0
    codes: dict[bytes, int] = {}
    for line in lines:
        if not isinstance(line, bytes):
            continue
        if m := _EXISTS.match(line):
            exists = int(m.group(1))
        for m in _CODE.finditer(line):
            codes[m.group(1).upper()] = int(m.group(2))
    if b"UIDVALIDITY" not in codes:
        raise MailboxError("protocol", "The mail server did not say the folder's UIDVALIDITY")
    return FolderState(
        uidvalidity=codes[b"UIDVALIDITY"],
        uidnext=codes.get(b"UIDNEXT"),
        exists=exists,
        highestmodseq=codes.get(b"HIGHESTMODSEQ"),
    )


def parse_search(lines: list[bytes | bytearray]) -> list[int]:
    """UIDs of a SEARCH answer, ignoring a CONDSTORE ``(MODSEQ n)`` suffix.

    aioimaplib strips ``* SEARCH`` from the untagged lines and appends the
    tagged status text last, so every line but the last holds numbers.
    """
    uids: list[int] = []
    for line in lines[:-1]:
        if not isinstance(line, bytes):
            continue
        if line[:6].upper() == b"SEARCH":
            line = line[6:]
        uids.extend(int(word) for word in line.split(b"(", 1)[0].split() if word.isdigit())
    return uids


def quote_mailbox(name: str) -> str:
    """A folder name as an IMAP astring (quoted unless it is a plain atom)."""
    wire = encode_modified_utf7(name)
    if wire and re.fullmatch(r"[A-Za-z0-9_.\-/&+,]+", wire):
        return wire
    return imap.quoted(wire)


def _text(response: imap.Response) -> str:
    last = response.lines[-1] if response.lines else b""
    return bytes(last).decode("utf-8", "replace").strip() or response.result


def _timeout(what: str, limit: float) -> MailboxError:
    return MailboxError("timeout", f"The mail server did not answer {what} within {limit:g} s")


def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


def _ssl_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted ({exc.verify_message})"
    return exc.reason or str(exc)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
