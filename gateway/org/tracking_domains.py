"""Per-org tracking skip domains: links to these (and their subdomains) go out untracked.

Orgs use it for their own site, a partner's portal, or links a recipient's
security gateway would flag if rewritten.  The composer reads the list from
the org row (``orgs.tracking_skip_domains``) on every send.
"""

from __future__ import annotations

from typing import Any

from gateway.addresses import normalise
from storage import org_settings
from storage.db import Database

MAX_DOMAINS = 100


class InvalidDomains(ValueError):
    """The list or one of its entries is not acceptable; the message names it."""


def clean(domains: Any) -> list[str]:
    """Lower-case, IDNA, deduplicated and sorted; refuses anything that is not a domain."""
    if not isinstance(domains, list) or len(domains) > MAX_DOMAINS:
        raise InvalidDomains(f"domains must be a list of at most {MAX_DOMAINS} domain names")
    out = set()
    for d in domains:
        norm = None
        if isinstance(d, str) and 0 < len(d) <= 253 and "@" not in d:
            norm = normalise(f"x@{d.strip()}")
        if norm is None:
            raise InvalidDomains(f"{d!r} is not a domain name")
        out.add(norm.split("@", 1)[1])
    return sorted(out)


async def get(db: Database, org_id: int) -> list[str]:
    async with db.connect() as conn:
        return await org_settings.tracking_skip_domains(conn, org_id)


async def replace(db: Database, org_id: int, domains: Any) -> list[str]:
    cleaned = clean(domains)
    async with db.begin() as conn:
        await org_settings.set_tracking_skip_domains(conn, org_id, cleaned)
    return cleaned
