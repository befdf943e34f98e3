"""Organization From addresses: the shared senders (``support@`` …) a user may send as.

PRODUCT.md allows "up to 10 per license".  A license is one active user, so
the limit is ``10 × active users``: an org of three active users may have
30 shared addresses, and deactivating users never deletes existing ones
(it only stops new ones being added until the org is back under the limit).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.addresses import normalise
from gateway.org import plans
from storage import org_addresses
from storage.db import Database

MAX_NAME = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class OrgAddressError(Exception):
    """Why an address cannot be added or removed; ``status`` is the HTTP status it maps to."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def checked(email: Any, name: Any) -> tuple[str, str]:
    """(normalised address, display name), refusing anything that could break a From header."""
    if not isinstance(email, str) or not email.strip():
        raise OrgAddressError(422, "invalid_field", "email is required")
    norm = normalise(email) if len(email) <= 320 else None
    if norm is None:
        raise OrgAddressError(422, "invalid_field", f"{email!r} is not an email address")
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise OrgAddressError(422, "invalid_field", "name must be a string")
    name = name.strip()
    if len(name) > MAX_NAME or _CONTROL.search(name):
        raise OrgAddressError(
            422,
            "invalid_field",
            f"name must be at most {MAX_NAME} characters, without control characters",
        )
    return norm, name


async def add(db: Database, org_id: int, email: Any, name: Any = None) -> dict[str, Any]:
    """Add a shared address, atomically within the plan catalogue's per-license limit."""
    norm, clean_name = checked(email, name)

    def write(conn) -> dict[str, Any]:
        if not org_addresses.lock_org(conn, org_id):
            raise OrgAddressError(404, "not_found", "no such organization")
        if org_addresses.find(conn, org_id, norm) is not None:
            raise OrgAddressError(409, "exists", f"{norm} is already an organization address")
        have, active = org_addresses.counts(conn, org_id)
        limit = plans.shared_address_limit(active)
        if have >= limit:
            raise OrgAddressError(
                422,
                "limit_reached",
                f"the organization has {have} of its {limit} addresses "
                f"({plans.SHARED_ADDRESSES_PER_LICENSE} per active user, {active} active); "
                "remove one first",
            )
        return org_addresses.insert_address(conn, org_id, norm, clean_name)

    return await db.run_write(write)


async def list_all(db: Database, org_id: int) -> list[dict[str, Any]]:
    async with db.connect() as conn:
        return await org_addresses.list_addresses(conn, org_id)


async def remove(db: Database, org_id: int, address_id: int) -> None:
    async with db.begin() as conn:
        if not await org_addresses.remove(conn, org_id, address_id):
            raise OrgAddressError(404, "not_found", "no such organization address")


async def remove_email(db: Database, org_id: int, email: str) -> None:
    norm = normalise(email)
    async with db.begin() as conn:
        if norm is None or not await org_addresses.remove_email(conn, org_id, norm):
            raise OrgAddressError(404, "not_found", f"{email} is not an organization address")
