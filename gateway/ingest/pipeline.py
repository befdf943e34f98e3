"""The filing pipeline: steps over a batch, one transaction, one commit.

Parsing (pure, CPU) runs first, outside the transaction and off the event loop;
the remaining steps are synchronous code over one ``Connection`` so the whole
batch costs a single thread hop on SQLite (see ``Database.run_write``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from gateway.addresses import in_domains, is_role_address, normalise
from gateway.ingest.parse import ParsedMail, parse
from storage import events, filing, replies
from storage.events import NewEvent


class Outcome(enum.Enum):
    FILED = "filed"
    DUPLICATE = "duplicate"
    UNKNOWN_DROPBOX = "unknown_dropbox"  # regenerated or deactivated meanwhile: 550 5.1.1
    SENDER_REFUSED = "sender_refused"  # envelope or From not allowed: 550 5.7.1
    IGNORED = "ignored"  # IMAP mail with no CRM counterpart: not ours to keep
    SHUNTED = "shunted"


@dataclass(slots=True)
class Delivery:
    """One message for one mailbox owner, from the dropbox or a polled mailbox."""

    raw: bytes
    channel: str  # dropbox | imap
    org_id: int
    user_id: int
    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    dropbox_token: str | None = None  # dropbox mail: re-checked inside the filing transaction
    accepted_earlier: bool = False  # replay of mail that was answered 250 before: no re-check
    folder: str | None = None  # imap: "sent" means outgoing
    parsed: ParsedMail | None = None
    direction: str = "outgoing"
    counterparts: list[str] = field(default_factory=list)
    records: list[tuple[str, int]] = field(default_factory=list)
    outcome: Outcome | None = None
    message_pk: int | None = None
    stage: str = "parse"


@dataclass(slots=True)
class Batch:
    items: list[Delivery]
    mail_domain: str
    orgs: dict[int, dict[str, Any]] = field(default_factory=dict)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    own_addresses: dict[int, set[str]] = field(default_factory=dict)
    excluded: dict[int, list[str]] = field(default_factory=dict)  # org → domains never filed
    new_events: list[NewEvent] = field(default_factory=list)

    def live(self) -> list[Delivery]:
        return [d for d in self.items if d.outcome is None]


def parse_all(items: list[Delivery]) -> None:
    """Parse every delivery (pure; the intake runs it in a worker thread)."""
    for d in items:
        if d.parsed is None:
            d.stage = "parse"
            d.parsed = parse(d.raw)


def step_load_context(conn: Connection, batch: Batch) -> None:
    """Fresh each batch: who may file, and who is a colleague, must be current."""
    ctx = filing.load_context(
        conn, sorted({d.org_id for d in batch.items}), sorted({d.user_id for d in batch.items})
    )
    batch.orgs, batch.users, batch.own_addresses = ctx.orgs, ctx.users, ctx.own
    batch.excluded = ctx.excluded


def authorise(d: Delivery, user: dict[str, Any] | None, own: set[str]) -> Outcome | None:
    """The authoritative dropbox checks, made in the transaction that files the mail.

    The SMTP session answered RCPT from a short-lived cache; here a regenerated
    address, a deactivated user or a sender removed meanwhile still refuses it.
    Both the envelope sender and every From address must be allowed.
    """
    if d.channel != "dropbox" or d.accepted_earlier:
        return None
    if user is None or not user["active"] or user["dropbox_token"] != d.dropbox_token:
        return Outcome.UNKNOWN_DROPBOX
    envelope = normalise(d.mail_from)
    froms = d.parsed.from_addresses
    if envelope not in own or not froms or not set(froms) <= own:
        return Outcome.SENDER_REFUSED
    return None


def step_authorise(batch: Batch) -> None:
    for d in batch.live():
        d.stage = "authorise"
        d.outcome = authorise(
            d, batch.users.get(d.user_id), batch.own_addresses.get(d.user_id, set())
        )


def step_dedupe(conn: Connection, batch: Batch) -> None:
    live = batch.live()
    for d in live:
        d.stage = "dedupe"
    keys = [(d.org_id, d.parsed.message_id, d.parsed.content_hash) for d in live]
    seen_ids, seen_hashes = filing.existing(conn, keys)
    for d in live:
        p = d.parsed
        if (d.org_id, p.content_hash) in seen_hashes or (
            p.message_id and (d.org_id, p.message_id) in seen_ids
        ):
            d.outcome = Outcome.DUPLICATE
            continue
        seen_hashes.add((d.org_id, p.content_hash))
        if p.message_id:
            seen_ids.add((d.org_id, p.message_id))


def classify(d: Delivery, own: set[str]) -> None:
    """Direction and the addresses on the other side of the conversation."""
    d.stage = "classify"
    p = d.parsed
    sender = p.sender.email if p.sender else None
    if d.channel == "dropbox" or d.folder == "sent" or (sender in own):
        d.direction = "outgoing"
        d.counterparts = [a.email for a in (*p.to, *p.cc)]
    else:
        d.direction = "incoming"
        d.counterparts = [sender] if sender else []


def exclude_counterparts(d: Delivery, excluded: list[str]) -> bool:
    """Drop counterparts in the org's excluded domains; True when nobody is left.

    Mail with an excluded domain is never filed (any channel) or shared: the
    counterpart is dropped, and mail that only involves excluded domains is
    ignored altogether.
    """
    if not excluded or not d.counterparts:
        return False
    d.counterparts = [a for a in d.counterparts if not in_domains(a, excluded)]
    if not d.counterparts:
        d.outcome = Outcome.IGNORED
        return True
    return False


def creatable(address: str, *, own: set[str], org_domains: list[str], mail_domain: str) -> bool:
    """Colleagues, role mailboxes and our own dropbox addresses never become records."""
    return not (
        address in own
        or in_domains(address, org_domains)
        or in_domains(address, [mail_domain])
        or is_role_address(address)
    )


def step_match_and_create(conn: Connection, batch: Batch) -> None:
    by_org: dict[int, set[str]] = {}
    for d in batch.live():
        classify(d, batch.own_addresses.get(d.user_id, set()))
        if exclude_counterparts(d, batch.excluded.get(d.org_id, [])):
            continue
        by_org.setdefault(d.org_id, set()).update(d.counterparts)
    known = {o: filing.records_by_email(conn, o, emails) for o, emails in by_org.items()}
    for d in batch.live():
        d.stage = "match"
        found = known.get(d.org_id, {})
        own = batch.own_addresses.get(d.user_id, set())
        org = batch.orgs[d.org_id]
        for address in d.counterparts:
            if address in own:
                continue
            if address in found:
                d.records.extend(found[address])
                continue
            setting = batch.users[d.user_id]["dropbox_setting"]
            if d.channel != "dropbox" or setting == "none":
                continue
            if not creatable(
                address, own=own, org_domains=org["domains"], mail_domain=batch.mail_domain
            ):
                continue
            module = "contacts" if setting == "contact" else "leads"
            name = next((a.name for a in (*d.parsed.to, *d.parsed.cc) if a.email == address), "")
            rid = filing.create_record(
                conn, module, d.org_id, _new_record(module, address, name, d.user_id)
            )
            found[address] = [(module, rid)]
            d.records.append((module, rid))
            batch.new_events.append(
                NewEvent(
                    d.org_id,
                    "record.created",
                    {"module": module, "id": rid, "email": address, "source": d.channel},
                )
            )
        d.records = list(dict.fromkeys(d.records))
        if d.channel == "imap" and not d.records:
            d.outcome = Outcome.IGNORED


def _new_record(module: str, address: str, display: str, owner: int) -> dict[str, Any]:
    """Split a display name into 姓/名 (or first/last); the local part when there is none."""
    last, first = _split_name(display) if display else (address.split("@")[0], "")
    return {
        "email": address,
        "email_norm": address,
        "last_name": last[:100],
        "first_name": first[:100],
        "owner_id": owner,
        "source": "dropbox",
    }


def _split_name(display: str) -> tuple[str, str]:
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


def step_file(conn: Connection, batch: Batch) -> None:
    live = batch.live()
    for d in live:
        d.stage = "file"
    rows = [_message_row(d) for d in live]
    ids = filing.insert_messages(conn, rows)
    links: list[dict[str, Any]] = []
    for d, pk in zip(live, ids, strict=True):
        d.message_pk = pk
        d.outcome = Outcome.FILED
        links.extend(
            {"org_id": d.org_id, "message_id": pk, "module": m, "record_id": r}
            for m, r in d.records
        )
        batch.new_events.append(_filed_event(d))
        if d.direction == "incoming":
            batch.new_events.append(
                NewEvent(
                    d.org_id,
                    "email.received",
                    {
                        "message_id": pk,
                        "user_id": d.user_id,
                        "from": d.parsed.sender.email if d.parsed.sender else "",
                    },
                )
            )
    filing.insert_links(conn, links)


def _message_row(d: Delivery) -> dict[str, Any]:
    p = d.parsed
    return {
        "org_id": d.org_id,
        "user_id": d.user_id,
        "message_id": p.message_id,
        "content_hash": p.content_hash,
        "subject": p.subject,
        "from_addr": p.sender.email if p.sender else "",
        "from_name": p.sender.name if p.sender else "",
        "to_addrs": [a.as_json() for a in p.to],
        "cc_addrs": [a.as_json() for a in p.cc],
        "date": p.date,
        "direction": d.direction,
        "source": d.channel,
        "in_reply_to": p.in_reply_to,
        "references": p.references,
        "text_body": p.text,
        "html_body": p.html,
        "defects": p.defects,
        "size": len(d.raw),
        "raw": d.raw,
    }


def _filed_event(d: Delivery) -> NewEvent:
    return NewEvent(
        d.org_id,
        "email.filed",
        {
            "message_id": d.message_pk,
            "header_message_id": d.parsed.message_id,
            "user_id": d.user_id,
            "direction": d.direction,
            "source": d.channel,
            "subject": d.parsed.subject[:200],
            "records": [{"module": m, "id": r} for m, r in d.records],
        },
    )


def step_replies(conn: Connection, batch: Batch) -> None:
    """Incoming mail answering one of our sends marks that send replied (dropbox or IMAP)."""
    now = datetime.now(UTC)
    for d in batch.items:
        if d.direction != "incoming" or d.outcome not in (Outcome.FILED, Outcome.IGNORED):
            continue
        refs = [*d.parsed.references, d.parsed.in_reply_to]
        if not any(refs):
            continue
        d.stage = "replies"
        for send in replies.mark_replied(conn, d.org_id, refs, now):
            batch.new_events.append(
                NewEvent(
                    d.org_id,
                    "email.replied",
                    {
                        "send_id": send["id"],
                        "message_id": d.message_pk,
                        "user_id": d.user_id,
                        "from": d.parsed.sender.email if d.parsed.sender else "",
                        "module": send["module"],
                        "record_id": send["record_id"],
                    },
                )
            )


def file_batch(conn: Connection, items: list[Delivery], mail_domain: str) -> Batch:
    """Run every step over parsed ``items`` inside the caller's transaction."""
    parse_all(items)  # no-op for what the intake already parsed
    batch = Batch(items=items, mail_domain=mail_domain)
    step_load_context(conn, batch)
    step_authorise(batch)
    step_dedupe(conn, batch)
    step_match_and_create(conn, batch)
    step_file(conn, batch)
    step_replies(conn, batch)
    events.append_sync(conn, batch.new_events)
    return batch
