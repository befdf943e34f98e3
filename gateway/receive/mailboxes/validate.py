"""What a connected mailbox may look like: one check for the API and the CLI.

A mailbox host is a place the server will connect to on a user's word, so
every address it resolves to must be public unless the operator allows
private targets (:mod:`gateway.targets`, shared with webhooks).  The check
runs when a mailbox is connected and again before *every* connection, which
then goes to the very address that was checked (DNS rebinding gains
nothing).  The refusal is the same whatever the port, and it comes before any
connection, so it says nothing about which ports are open.
"""

from __future__ import annotations

import re
from typing import Any

from gateway import targets
from gateway.receive.imap import MailboxConfig
from gateway.targets import is_public  # noqa: F401 - the mailbox code's name for it

_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FIELDS = {"host", "port", "login", "password", "security", "sent_folder", "bounce", "backfill_days"}
MAX_BACKFILL_DAYS = 3650


class InvalidMailbox(ValueError):
    """A field is missing or wrong; the message names it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PrivateTarget(InvalidMailbox):
    """The host is (or resolves to) a loopback, private or otherwise non-public address."""

    def __init__(self) -> None:
        super().__init__(
            "private_host",
            "host must be a public mail server: loopback, private and link-local addresses "
            "are not allowed here",
        )


class UnresolvableHost(InvalidMailbox):
    """The host name does not resolve (now): nothing to check, nothing to connect to."""

    def __init__(self, host: str) -> None:
        super().__init__("unresolvable_host", f"the host name {host!r} does not resolve")


async def resolve_target(host: str, port: int, *, allow_private: bool) -> str:
    """:func:`gateway.targets.resolve_target` with the mailbox API's own errors.

    Raises :class:`PrivateTarget` or :class:`UnresolvableHost`.
    """
    try:
        return await targets.resolve_target(host, port, allow_private=allow_private)
    except targets.PrivateAddress as exc:
        raise PrivateTarget from exc
    except targets.Unresolvable as exc:
        raise UnresolvableHost(host) from exc


def mailbox_values(body: dict[str, Any], extra: set[str] = frozenset()) -> dict[str, Any]:
    """Checked, normalised mailbox settings (the password still in clear)."""
    unknown = sorted(set(body) - FIELDS - extra)
    if unknown:
        raise InvalidMailbox("unknown_field", f"unknown field(s): {', '.join(unknown)}")
    for name in ("host", "port", "login", "password"):
        if body.get(name) in (None, ""):
            raise InvalidMailbox("missing_field", f"{name} is required")
    host = _text(body, "host", 253)
    if not _HOST.match(host):
        raise InvalidMailbox("invalid_field", "host must be a host name or an IP address")
    port = body["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidMailbox("invalid_field", "port must be an integer between 1 and 65535")
    login = _text(body, "login", 320)
    password = body["password"]
    if not isinstance(password, str) or len(password) > 1024 or _CONTROL.search(password):
        raise InvalidMailbox(
            "invalid_field", "password must be a string of at most 1024 printable characters"
        )
    security = body.get("security", "tls")
    if security not in ("tls", "starttls", "none"):
        raise InvalidMailbox("invalid_field", "security must be tls, starttls or none")
    sent = body.get("sent_folder")
    if sent is not None:
        sent = _text(body, "sent_folder", 300) or None
    bounce = body.get("bounce", False)
    if not isinstance(bounce, bool):
        raise InvalidMailbox("invalid_field", "bounce must be true or false")
    days = body.get("backfill_days", 30)
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= MAX_BACKFILL_DAYS:
        raise InvalidMailbox(
            "invalid_field", f"backfill_days must be an integer between 0 and {MAX_BACKFILL_DAYS}"
        )
    return {
        "host": host,
        "port": port,
        "login": login,
        "password": password,
        "security": security,
        "sent_folder": sent,
        "bounce": bounce,
        "backfill_days": days,
    }


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise InvalidMailbox("invalid_field", f"{name} must be a string")
    value = value.strip()
    if len(value) > limit or _CONTROL.search(value):
        raise InvalidMailbox(
            "invalid_field",
            f"{name} must be at most {limit} characters, without control characters",
        )
    return value


def config_from(values: dict[str, Any], password: str) -> MailboxConfig:
    return MailboxConfig(
        host=values["host"],
        port=values["port"],
        login=values["login"],
        password=password,
        security=values["security"],
        sent_folder_override=values.get("sent_folder"),
    )
