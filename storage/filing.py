"""SQL of filing: context, dedupe look-ups, record matching, bulk inserts.

These are synchronous functions over a plain ``Connection``: the ingest runner
runs a whole batch of them in one transaction through ``Database.run_write``.
Reading a record's mail (the API) is async.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    exists,
    insert,
    or_,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy import literal as sa_literal
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.lean import db_json, db_time, driver_sql
from storage.schema import (
    contacts,
    leads,
    message_links,
    messages,
    orgs,
    user_senders,
    users,
)
from storage.schema_mailboxes import excluded_domains
from storage.schema_sending import sends
from storage.types import utcnow


@dataclass(slots=True)
class FilingContext:
    """Who may file and who is a colleague, read fresh in the filing transaction."""

    orgs: dict[int, dict[str, Any]]
    users: dict[int, dict[str, Any]]
    own: dict[int, set[str]]  # user → their address + allowed senders
    excluded: dict[int, list[str]]  # org → domains excluded from sharing


def load_context(
    conn: Connection, org_ids: Sequence[int], user_ids: Sequence[int]
) -> FilingContext:
    """Orgs with their excluded domains, users with their allowed senders: two queries.

    Each statement costs more than the rows it reads at dropbox batch sizes, so
    the one-to-many sides are outer-joined rather than read separately.
    """
    org_q = (
        select(orgs, excluded_domains.c.domain.label("excluded_domain"))
        .outerjoin(excluded_domains, excluded_domains.c.org_id == orgs.c.id)
        .where(orgs.c.id.in_(list(org_ids)))
    )
    org_map: dict[int, dict[str, Any]] = {}
    excluded: dict[int, list[str]] = {}
    for r in conn.execute(org_q).mappings():
        row = dict(r)
        domain = row.pop("excluded_domain")
        org_map.setdefault(row["id"], row)
        if domain is not None:
            excluded.setdefault(row["id"], []).append(domain)
    user_q = (
        select(users, user_senders.c.email_norm.label("sender_norm"))
        .outerjoin(user_senders, user_senders.c.user_id == users.c.id)
        .where(users.c.id.in_(list(user_ids)))
    )
    user_map: dict[int, dict[str, Any]] = {}
    own: dict[int, set[str]] = {}
    for r in conn.execute(user_q).mappings():
        row = dict(r)
        sender = row.pop("sender_norm")
        user_map.setdefault(row["id"], row)
        addresses = own.setdefault(row["id"], {row["email_norm"]})
        if sender is not None:
            addresses.add(sender)
    return FilingContext(org_map, user_map, own, excluded)


def existing(
    conn: Connection, keys: Iterable[tuple[int, str | None, str]]
) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
    """Which (org, Message-ID) and (org, content hash) pairs are already filed."""
    keys = list(keys)
    if not keys:
        return set(), set()
    ids = {(o, m) for o, m, _ in keys if m}
    hashes = {(o, h) for o, _, h in keys}
    cols = (messages.c.org_id, messages.c.message_id, messages.c.content_hash)
    parts = []
    # One equality-plus-IN query per org and key: each is a seek on a unique index
    # (an OR over both keys made SQLite scan the org's whole mailbox).
    for org_id in sorted({o for o, _, _ in keys}):
        org_hashes = sorted(h for o, h in hashes if o == org_id)
        parts.append(
            select(*cols).where(
                messages.c.org_id == org_id, messages.c.content_hash.in_(org_hashes)
            )
        )
        org_ids = sorted(m for o, m in ids if o == org_id)
        if org_ids:
            parts.append(
                select(*cols).where(messages.c.org_id == org_id, messages.c.message_id.in_(org_ids))
            )
    q = union_all(*parts) if len(parts) > 1 else parts[0]
    seen_ids: set[tuple[int, str]] = set()
    seen_hashes: set[tuple[int, str]] = set()
    for org_id, mid, h in conn.execute(q).all():
        if mid and (org_id, mid) in ids:
            seen_ids.add((org_id, mid))
        if (org_id, h) in hashes:
            seen_hashes.add((org_id, h))
    return seen_ids, seen_hashes


def records_by_email(
    conn: Connection, org_id: int, emails: Iterable[str]
) -> dict[str, list[tuple[str, int]]]:
    """email_norm → [(module, id)] over leads (not converted) and contacts.

    Both modules are read; a user who searches only one (``dropbox_search``) is
    served by filtering the result (see the ``match`` step), so a batch of many
    users' mail stays one look-up per org.
    """
    wanted = sorted(set(emails))
    found: dict[str, list[tuple[str, int]]] = {}
    if not wanted:
        return found
    lead_q = select(sa_literal("leads"), leads.c.id, leads.c.email_norm).where(
        leads.c.org_id == org_id, leads.c.email_norm.in_(wanted), leads.c.converted_at.is_(None)
    )
    contact_q = select(sa_literal("contacts"), contacts.c.id, contacts.c.email_norm).where(
        contacts.c.org_id == org_id, contacts.c.email_norm.in_(wanted)
    )
    for module, rid, email in sorted(conn.execute(union_all(lead_q, contact_q)).all()):
        found.setdefault(email, []).append((module, rid))
    return found


def create_record(conn: Connection, module: str, org_id: int, values: dict[str, Any]) -> int:
    table = {"leads": leads, "contacts": contacts}[module]
    return conn.execute(
        insert(table).values(org_id=org_id, **values).returning(table.c.id)
    ).scalar_one()


#: The columns filing writes, in the order of the driver-level insert's parameters.
_MESSAGE_COLUMNS = (
    "org_id",
    "user_id",
    "message_id",
    "content_hash",
    "subject",
    "from_addr",
    "from_name",
    "to_addrs",
    "cc_addrs",
    "date",
    "direction",
    "source",
    "in_reply_to",
    "references",
    "text_body",
    "html_body",
    "defects",
    "size",
    "send_id",
    "seen",
    "raw",
    "shared",
    "created_at",
)
# ``inline``: no RETURNING; the ids are read back by content hash (see insert_messages).
_INSERT_MESSAGE = insert(messages).values({c: bindparam(c) for c in _MESSAGE_COLUMNS}).inline()


def insert_messages(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert new mail; its ids in the order of ``rows``.

    The insert is one executemany in the driver's own terms (:mod:`storage.lean`):
    SQLAlchemy's per-row processing of these twenty columns (four of them JSON)
    was the largest share of the filing transaction.

    Ids are read back by (org, content hash), unique per org and already deduped
    in the batch, rather than with RETURNING: SQLite cannot guarantee RETURNING
    order over a multi-row INSERT, so an ordered RETURNING fell back to one
    statement per message.  One executemany plus one indexed SELECT costs the
    same for a batch of 1 or 200.
    """
    if not rows:
        return []
    unknown = set().union(*rows) - set(_MESSAGE_COLUMNS)
    if unknown:  # a column the driver-level insert would silently drop
        raise ValueError(f"insert_messages: unknown columns {sorted(unknown)}")
    at, time_, json = db_time(conn)(utcnow()), db_time(conn), db_json
    params = [
        (
            r["org_id"],
            r["user_id"],
            r["message_id"],
            r["content_hash"],
            r["subject"],
            r["from_addr"],
            r["from_name"],
            json(r["to_addrs"]),
            json(r["cc_addrs"]),
            time_(r["date"]),
            r["direction"],
            r["source"],
            r["in_reply_to"],
            json(r["references"]),
            r["text_body"],
            r["html_body"],
            json(r["defects"]),
            r["size"],
            r.get("send_id"),
            r.get("seen", False),
            r["raw"],
            r.get("shared", True),
            at,
        )
        for r in rows
    ]
    conn.exec_driver_sql(
        driver_sql(conn, "insert_messages", _INSERT_MESSAGE, _MESSAGE_COLUMNS), params
    )
    cols = (messages.c.id, messages.c.org_id, messages.c.content_hash)
    parts = [
        select(*cols).where(
            messages.c.org_id == org_id,
            messages.c.content_hash.in_(
                sorted({r["content_hash"] for r in rows if r["org_id"] == org_id})
            ),
        )
        for org_id in sorted({r["org_id"] for r in rows})
    ]
    q = union_all(*parts) if len(parts) > 1 else parts[0]
    ids = {(org_id, h): pk for pk, org_id, h in conn.execute(q).all()}
    return [ids[(r["org_id"], r["content_hash"])] for r in rows]


def insert_links(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(message_links), list(rows))


LIST_COLUMNS = (
    messages.c.id,
    messages.c.message_id,
    messages.c.subject,
    messages.c.from_addr,
    messages.c.from_name,
    messages.c.to_addrs,
    messages.c.cc_addrs,
    messages.c.date,
    messages.c.direction,
    messages.c.source,
    messages.c.send_id,
    messages.c.user_id,
    messages.c.seen,
    messages.c.shared,
    messages.c.created_at,
)


@dataclass(frozen=True, slots=True)
class Visibility:
    """Whose mail one viewer may see, as plain values (the rules live in the gateway's
    ``sharing`` module, which builds this; here it only becomes SQL).

    ``hidden``: owners none of whose mail shows; ``partial``: owners whose mail shows
    only when it is filed on one of the given (module, id) records;
    ``public_sources``: ``messages.source`` values everyone sees (mail sent from the
    CRM).  Unshared mail (``shared`` false) is its owner's only, whatever the rest says.
    """

    viewer_id: int
    hidden: frozenset[int] = frozenset()
    partial: Mapping[int, frozenset[tuple[str, int]]] = field(default_factory=dict)
    public_sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MailFilter:
    """A record list's optional filters (None: any): sources, one direction, one owner."""

    sources: tuple[str, ...] | None = None
    direction: str | None = None
    user_id: int | None = None


def _visible(org_id: int, seen: Visibility) -> ColumnElement[bool]:
    """The WHERE term of :class:`Visibility` over ``messages``."""
    owner = messages.c.user_id
    others = [messages.c.source.in_(seen.public_sources)] if seen.public_sources else []
    restricted = sorted(seen.hidden | set(seen.partial))
    others.append(owner.not_in(restricted) if restricted else true())
    if seen.partial:
        elsewhere = message_links.alias("elsewhere")
        others.append(
            exists().where(
                elsewhere.c.org_id == org_id,
                elsewhere.c.message_id == messages.c.id,
                or_(
                    *(
                        and_(
                            owner == uid,
                            tuple_(elsewhere.c.module, elsewhere.c.record_id).in_(sorted(recs)),
                        )
                        for uid, recs in sorted(seen.partial.items())
                    )
                ),
            )
        )
    return or_(
        owner.is_(None),
        owner == seen.viewer_id,
        and_(messages.c.shared == true(), or_(*others)),
    )


def _filtered(wanted: MailFilter) -> list[ColumnElement[bool]]:
    terms = []
    if wanted.sources is not None:
        terms.append(messages.c.source.in_(wanted.sources))
    if wanted.direction is not None:
        terms.append(messages.c.direction == wanted.direction)
    if wanted.user_id is not None:
        terms.append(messages.c.user_id == wanted.user_id)
    return terms


async def emails_for_record(
    conn: AsyncConnection,
    org_id: int,
    module: str,
    rid: int,
    *,
    seen: Visibility,
    wanted: MailFilter | None = None,
    after: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Mail filed on a record that ``seen``'s viewer may see, matching ``wanted``, oldest first.

    A deal's mail is the mail filed on the deal itself, not its contact's.  Our
    own sends carry their recipient status (sent, opened, clicked, bounced …).
    The record's links come through ``ix_message_links_record``; sharing and the
    filters are checks on that record's rows, never a scan of the org's mail.
    """
    send = and_(sends.c.id == messages.c.send_id, sends.c.org_id == org_id)
    q = (
        select(*LIST_COLUMNS, sends.c.status.label("send_status"))
        .join(message_links, message_links.c.message_id == messages.c.id)
        .outerjoin(sends, send)
        .where(
            message_links.c.org_id == org_id,
            message_links.c.module == module,
            message_links.c.record_id == rid,
            messages.c.org_id == org_id,
            messages.c.id > after,
            _visible(org_id, seen),
            *_filtered(wanted or MailFilter()),
        )
        .order_by(messages.c.id)
        .limit(limit)
    )
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def email_with_records(
    conn: AsyncConnection, org_id: int, email_id: int
) -> dict[str, Any] | None:
    """One filed message of the org (with ``raw``) and the records it is filed on."""
    q = select(*LIST_COLUMNS, messages.c.raw).where(
        messages.c.org_id == org_id, messages.c.id == email_id
    )
    row = (await conn.execute(q)).mappings().first()
    if row is None:
        return None
    links = select(message_links.c.module, message_links.c.record_id).where(
        message_links.c.org_id == org_id, message_links.c.message_id == email_id
    )
    out = dict(row)
    out["records"] = [{"module": m, "id": r} for m, r in sorted((await conn.execute(links)).all())]
    return out
