"""Email addresses as the CRM compares them: case- and IDN-insensitive."""

from __future__ import annotations

import re

#: Shared mailboxes that are never a person: they never create leads or contacts.
ROLE_LOCAL_PARTS = frozenset(
    """
    info sales support noreply no-reply no_reply donotreply do-not-reply do_not_reply admin
    administrator contact contactus office hello team marketing billing accounts accounting
    postmaster abuse webmaster hostmaster mailer-daemon help helpdesk service customerservice
    customer-service cs jobs careers recruit press pr news newsletter notifications notification
    root security privacy legal hr enquiries enquiry inquiry inquiries feedback mail bounce
    bounces system daemon list lists all staff general soumu eigyo otoiawase
    """.split()
)

_ADDR = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise(address: str | None) -> str | None:
    """``Taro@Example.JP`` / ``taro@例え.jp`` → one comparable form, or None if not an address."""
    if not address:
        return None
    address = address.strip().strip("<>").strip()
    if not _ADDR.match(address):
        return None
    local, _, domain = address.rpartition("@")
    domain = domain.rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return f"{local.lower()}@{domain}"


def domain_of(normalised: str) -> str:
    return normalised.rpartition("@")[2]


def is_role_address(normalised: str) -> bool:
    local = normalised.rpartition("@")[0]
    base = local.split("+", 1)[0]
    return base in ROLE_LOCAL_PARTS


def in_domains(normalised: str, domains: list[str] | set[str] | frozenset[str]) -> bool:
    """True for the org's own domains and their subdomains."""
    d = domain_of(normalised)
    return any(d == own or d.endswith("." + own) for own in domains)
