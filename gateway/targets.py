"""Where the server may connect on a user's word: public addresses only, unless allowed.

A mailbox host or a webhook URL is a place mailgate connects to because a
user said so; it must not become a probe of the server's own network.  Every
address a name resolves to must be public (:func:`resolve_target`), unless
the operator allows private targets (``MAILGATE_ALLOW_PRIVATE_TARGETS``:
tests, single-host set-ups).  Callers check when the target is saved and
again before *every* connection, which then goes to the very address that
was checked, so a name re-pointed after the check (DNS rebinding) gains
nothing.  The refusal comes before any connection, so it says nothing about
which ports are open.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket


class TargetRefused(ValueError):
    """The target may not be connected to; ``code`` is the API's error code."""

    code = "refused_target"


class PrivateAddress(TargetRefused):
    """The host is (or resolves to) a loopback, private or otherwise non-public address."""

    code = "private_host"


class Unresolvable(TargetRefused):
    """The host name does not resolve (now): nothing to check, nothing to connect to."""

    code = "unresolvable_host"

    def __init__(self, host: str) -> None:
        super().__init__(f"the host name {host!r} does not resolve")
        self.host = host


def is_public(address: str) -> bool:
    """A globally routable unicast address (an IPv4-mapped IPv6 one judged as IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve_target(host: str, port: int, *, allow_private: bool) -> str:
    """The one address to connect to for ``host``, after checking *every* address it has.

    Raises :class:`PrivateAddress` when any of them is not public (a name with
    one public and one private address is refused: which one a connection
    would take is not ours to choose), :class:`Unresolvable` when it has none.
    """
    literal = host.removeprefix("[").removesuffix("]")
    try:
        addresses = [str(ipaddress.ip_address(literal))]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise Unresolvable(host) from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise Unresolvable(host)
    if not allow_private and not all(is_public(a) for a in addresses):
        raise PrivateAddress("loopback, private and link-local addresses are not allowed here")
    return addresses[0]
