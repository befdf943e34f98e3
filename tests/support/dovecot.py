"""A throwaway Dovecot IMAP and POP3 server for tests and benchmarks.

Real IMAP behaviour (literals, SPECIAL-USE, IDLE, UIDVALIDITY, ``* BYE`` on a
kick) cannot be faked convincingly, so the IMAP tests talk to Debian's
``dovecot``.  The server runs unprivileged (``setpriv`` to ``nobody`` when we
are root), keeps all its state in a short directory under ``/dev/shm`` and
stores mail as maildir, which lets tests seed thousands of messages by
writing files instead of slow APPENDs.  Recipe: ``/work/shared/RECIPES.md``.

Tests declare the fixture with ``pytest.fixture(dovecot_server, name="dovecot")``;
it skips with a reason when the binary is absent.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
)
DOVEADM = shutil.which("doveadm") or (
    "/usr/bin/doveadm" if Path("/usr/bin/doveadm").exists() else None
)

_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap pop3
pop3_uidl_format = %08Xu%08Xv
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 1
first_valid_gid = 1
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
mail_location = maildir:{root}/mail/%n
mail_max_userip_connections = 100
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%n
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    user = {user}
  }}
  unix_listener stats-writer {{
    user = {user}
  }}
}}
"""


class DovecotError(RuntimeError):
    """Dovecot could not be started (bad config, port taken): see the log excerpt."""


def free_port() -> int:
    """A port nothing listens on right now (also handy for "connection refused" tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Dovecot:
    """One Dovecot instance with passwd-file users and maildir folders.

    Folders are named as the IMAP client sees them (``"INBOX"``, ``"Sent"``).
    """

    def __init__(self) -> None:
        if DOVECOT is None:
            raise DovecotError("the dovecot binary is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="dc", dir=_shm()))
        self.host = "127.0.0.1"
        self.port = 0
        self.tls_port = 0
        #: POP3 (plain/STLS) and POP3S listeners of the same server, same users and mail.
        self.pop3_port = 0
        self.pop3s_port = 0
        self.ca_file: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._users: dict[str, str] = {}
        self._seq = itertools.count(1)
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
            self.run_as: list[str] = [
                "setpriv",
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--clear-groups",
                "--",
            ]
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            self.run_as = []
        self.user_name = pwd.getpwuid(self.uid).pw_name
        self.group_name = _group_name(self.gid)

    # -- lifecycle ---------------------------------------------------------

    def start(self, port: int = 0, timeout: float = 5.0, tls: bool = False) -> Dovecot:
        """Start in the foreground of its own process group; returns once the port answers.

        With ``tls`` the server gets a fresh self-signed certificate for 127.0.0.1
        (``self.ca_file``), offers STARTTLS on ``port`` and implicit TLS on
        ``tls_port``.  POP3 listens on ``pop3_port`` (STLS with ``tls``) and, with
        ``tls``, POP3S on ``pop3s_port``; UIDLs are ``%08Xu%08Xv`` (UID, UIDVALIDITY).
        """
        self.port = port or free_port()
        self.tls_port = free_port() if tls else 0
        self.pop3_port = free_port()
        self.pop3s_port = free_port() if tls else 0
        ssl_setting = "ssl = no"
        if tls:
            self.ca_file = self.root / "cert.pem"
            _self_signed(self.ca_file, self.root / "key.pem")
            ssl_setting = f"ssl = yes\nssl_cert = <{self.ca_file}\nssl_key = <{self.root}/key.pem"
        for sub in ("run", "state", "mail", "home"):
            (self.root / sub).mkdir(exist_ok=True)
        (self.root / "passwd").touch()
        self.config.write_text(
            _CONFIG.format(
                root=self.root,
                user=self.user_name,
                group=self.group_name,
                uid=self.uid,
                gid=self.gid,
                port=self.port,
                tls_port=self.tls_port,
                pop3_port=self.pop3_port,
                pop3s_port=self.pop3s_port,
                ssl=ssl_setting,
            )
        )
        self._chown_tree(self.root)
        self._proc = subprocess.Popen(
            [*self.run_as, DOVECOT, "-F", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fatal = self._fatal_in_log()
            if fatal or self._proc.poll() is not None:
                self.stop()
                raise DovecotError(f"dovecot failed to start: {fatal or 'process exited'}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return self
            time.sleep(0.01)
        self.stop()
        raise DovecotError(f"dovecot did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Kill the server's process group and remove every file it wrote."""
        if self._proc is not None:
            # All state is thrown away, so nothing needs a clean shutdown.  SIGTERM to
            # the group now and then left the master waiting 5 s; SIGTERM to the master
            # alone costs 1 s while it waits for its children.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=5)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def config(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- users and mail ----------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add a login (or change its password) in the passwd-file.

        The file is replaced atomically, so a login running meanwhile never reads it
        half-written.  Dovecot re-reads it at most once per second (it remembers the
        second of its last check), so we return only once a new second has begun:
        the next login is then sure to see the change.
        """
        self.add_users({name: password})

    def add_users(self, logins: dict[str, str]) -> None:
        """:meth:`add_user` for many logins with one write and one wait."""
        self._users.update(logins)
        lines = "".join(f"{user}:{{PLAIN}}{pw}::::::\n" for user, pw in self._users.items())
        passwd = self.root / "passwd"
        tmp = self.root / "passwd.tmp"
        tmp.write_text(lines)
        self._chown(tmp)
        tmp.replace(passwd)
        for name in logins:
            self.maildir(name, "INBOX")
            self.maildir(name, "Sent")
        time.sleep(1.05 - (time.time() % 1.0))

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        """The maildir of ``folder`` (created with cur/new/tmp if missing)."""
        base = self.root / "mail" / user
        path = base if folder.upper() == "INBOX" else base / ("." + folder.replace("/", "."))
        for sub in ("cur", "new", "tmp"):
            if not (path / sub).is_dir():
                (path / sub).mkdir(parents=True, exist_ok=True)
                self._chown_tree(base)
        return path

    def seed(self, user: str, folder: str, messages: Iterable[bytes]) -> int:
        """Deliver messages by writing maildir files (tmp/ then rename into new/).

        Thousands per second, versus ~40/s for an IMAP APPEND loop.  UIDs are
        assigned in file-name order, which follows the order given here.
        """
        box = self.maildir(user, folder)
        host = socket.gethostname().replace("/", "_").replace(":", "_")
        stamp = int(time.time())
        count = 0
        for raw in messages:
            name = f"{stamp}.M{next(self._seq):08d}P{os.getpid()}.{host},S={len(raw)}"
            tmp = box / "tmp" / name
            tmp.write_bytes(raw)
            if self.run_as:
                os.chown(tmp, self.uid, self.gid)
            tmp.rename(box / "new" / name)
            count += 1
        return count

    def append(self, user: str, folder: str, message: bytes) -> None:
        """Deliver one message while clients are connected (what a new mail looks like)."""
        self.seed(user, folder, [message])

    def reset_uidvalidity(self, user: str, folder: str = "INBOX") -> None:
        """Make the server renumber the folder, as after a restore or mailbox rebuild.

        Deleting ``dovecot-uidlist`` (and the index) makes Dovecot assign a new
        UIDVALIDITY and fresh UIDs the next time the folder is opened.
        """
        box = self.maildir(user, folder)
        for name in os.listdir(box):
            if name.startswith("dovecot"):
                path = box / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        # Dovecot derives a new UIDVALIDITY from the clock: make sure it differs.
        time.sleep(1.05)

    # -- administration ----------------------------------------------------

    def doveadm(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        if DOVEADM is None:
            raise DovecotError("the doveadm binary is not installed")
        return subprocess.run(
            [*self.run_as, DOVEADM, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def count(self, user: str, folder: str = "INBOX") -> int:
        """Messages in ``folder`` as files (``new/`` + ``cur/``): what a DELE would lower."""
        box = self.maildir(user, folder)
        return len(os.listdir(box / "new")) + len(os.listdir(box / "cur"))

    def kick(self, user: str) -> None:
        """Drop every IMAP (and POP3) connection of ``user``; IMAP says ``* BYE`` first."""
        done = self.doveadm("kick", user)
        if done.returncode not in (0, 68):  # 68: nobody to kick
            raise DovecotError(f"doveadm kick failed: {done.stderr.strip()}")

    # -- internals ---------------------------------------------------------

    def _fatal_in_log(self) -> str | None:
        for line in self.log.splitlines():
            if "Fatal:" in line:
                return line
        return None

    def _chown(self, path: Path) -> None:
        if self.run_as:
            os.chown(path, self.uid, self.gid)

    def _chown_tree(self, top: Path) -> None:
        if not self.run_as:
            return
        os.chown(top, self.uid, self.gid)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in itertools.chain(dirnames, filenames):
                os.chown(os.path.join(dirpath, name), self.uid, self.gid)


def _self_signed(cert_path: Path, key_path: Path) -> None:
    """A throwaway certificate for 127.0.0.1/localhost, so TLS paths run for real."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _shm() -> str | None:
    """/dev/shm is ~10x faster than /tmp here, and short enough for unix socket paths."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def start_or_skip() -> Dovecot:
    """A started server, or ``pytest.skip`` with the reason a fresh clone would need to know."""
    if DOVECOT is None:
        pytest.skip("dovecot is not installed (Debian: apt-get install dovecot-imapd)")
    return Dovecot().start()


def dovecot_server() -> Iterator[Dovecot]:
    """Fixture body: a fresh Dovecot with one user, ``alice`` / ``secret``.

    In a test module: ``dovecot = pytest.fixture(dovecot_server, name="dovecot")``
    (add ``scope="module"`` to share one server between a module's tests).
    """
    server = start_or_skip()
    try:
        server.add_user("alice", "secret")
        yield server
    finally:
        server.stop()


def crlf(raw: bytes) -> bytes:
    """What Dovecot returns for a stored message in ``BODY[]``.

    IMAP literals carry CRLF lines and no NUL bytes (RFC 3501 4.3), so every
    bare LF becomes CRLF and every NUL becomes 0x80.  Nothing else changes.
    """
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").replace(b"\0", b"\x80")
