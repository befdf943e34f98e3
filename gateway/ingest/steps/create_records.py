"""Step ``create``: dropbox mail to someone not yet in the CRM creates a lead (or contact).

What the user chose decides (``dropbox_setting``: lead, contact, or none).
Colleagues, role mailboxes (info@, noreply@ …), the org's excluded domains and
our own addresses never become records.  A record created for one message is linked to every later
message of the batch that involves the same address.  Each creation is a
``record.created`` event carrying the record's id and the fields it was created
with.

A message creates at most as many records as it may be linked to in all
(``max_records``, shared with ``match``): the addresses past the cap stay on
the message as plain addresses, and a mass mailing does not create 100,000
leads while every other org's mail waits behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from gateway.addresses import in_domains, is_role_address
from gateway.ingest.context import Batch, Flow
from gateway.ingest.steps.match_records import DEFAULT_MAX_RECORDS, searched
from storage import filing
from storage.payloads import record_created

NAME = "create"


def creatable(
    address: str,
    *,
    own: set[str],
    org_domains: list[str],
    mail_domain: str,
    excluded: Sequence[str] = (),
) -> bool:
    return not (
        address in own
        or in_domains(address, org_domains)
        or in_domains(address, list(excluded))
        or in_domains(address, [mail_domain])
        or is_role_address(address)
    )


def new_record(address: str, display: str, owner: int) -> dict[str, Any]:
    """Split a display name into 姓/名 (or last/first); the local part when there is none."""
    last, first = split_name(display) if display else (address.split("@")[0], "")
    return {
        "email": address,
        "email_norm": address,
        "last_name": last[:100],
        "first_name": first[:100],
        "owner_id": owner,
        "source": "dropbox",
    }


def split_name(display: str) -> tuple[str, str]:
    """(last, first).  Japanese names are written 姓 名; Western ones First Last or Last, First."""
    display = display.strip().strip('"')
    if "," in display:
        last, first = (s.strip() for s in display.split(",", 1))
        return last, first
    parts = display.split()
    if len(parts) < 2:
        return display, ""
    if any(ord(ch) > 0x2E7F for ch in display):  # CJK: family name first
        return parts[0], " ".join(parts[1:])
    return parts[-1], " ".join(parts[:-1])


def run(conn: Connection, batch: Batch, *, max_records: int = DEFAULT_MAX_RECORDS) -> Flow:
    # Records this round created, by (org, address): a later message of the batch links
    # to them instead of creating the same lead twice, whatever its user searches.
    created: dict[tuple[int, str], tuple[str, int]] = {}
    for d in batch.live():
        if d.channel != "dropbox":
            continue
        setting = batch.users[d.user_id]["dropbox_setting"]
        if setting == "none":
            continue
        module = "contacts" if setting == "contact" else "leads"
        # Only records of the modules the user searches count as known (``dropbox_search``):
        # with "contacts", an address that is only a lead is new, as ``match`` saw it.
        modules = searched(d, batch.users[d.user_id])
        own = batch.own_addresses.get(d.user_id, set())
        org = batch.orgs[d.org_id]
        known = batch.known.setdefault(d.org_id, {})
        linked = dict.fromkeys(d.records)
        names: dict[str, str] | None = None
        for address in d.counterparts:
            if len(linked) >= max_records:
                break  # the rest stay addresses on the message (see the module's doc)
            if address in own:
                continue
            made = created.get((d.org_id, address))
            if made is not None:
                linked[made] = None  # created by an earlier message of this batch
                continue
            hits = [r for r in known.get(address, ()) if r[0] in modules]
            if hits:
                linked.update(dict.fromkeys(hits))  # matched
                continue
            if not creatable(
                address,
                own=own,
                org_domains=org["domains"],
                mail_domain=batch.mail_domain,
                excluded=batch.excluded.get(d.org_id, ()),
            ):
                continue
            if names is None:  # once per message: a scan per address is quadratic
                names = {a.email: a.name for a in reversed((*d.parsed.to, *d.parsed.cc))}
            values = new_record(address, names.get(address, ""), d.user_id)
            rid = filing.create_record(conn, module, d.org_id, values)
            known.setdefault(address, []).append((module, rid))
            created[(d.org_id, address)] = (module, rid)
            linked[(module, rid)] = None
            batch.new_events.append(
                record_created(
                    d.org_id,
                    module=module,
                    record_id=rid,
                    source=d.channel,
                    values=values,
                    user_id=d.user_id,
                    at=batch.now,
                )
            )
        d.records = list(linked)[:max_records]
    return batch.flow()
