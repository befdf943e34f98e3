"""SQL of the mailbox integration: mailboxes, IMAP checkpoints and UID locations, POP3
UIDLs, sharing.

Functions over a plain ``Connection`` run inside the spool's transaction (a
fetched batch and its checkpoint commit together) or the ingest runner's
(UID locations, seen flags); the async ones serve the API, the CLI and the
poller's status reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.inserts import insert_ignore
from storage.schema import messages, users
from storage.schema_mailboxes import (
    excluded_domains,
    mailbox_folders,
    mailbox_messages,
    mailbox_pop_seen,
    mailboxes,
    sharing,
    sharing_records,
)

# -- mailboxes -------------------------------------------------------------------


async def create_mailbox(conn: AsyncConnection, values: dict[str, Any]) -> int:
    q = insert(mailboxes).values(**values).returning(mailboxes.c.id)
    return (await conn.execute(q)).scalar_one()


async def get_mailbox(conn: AsyncConnection, mailbox_id: int) -> dict[str, Any] | None:
    row = (
        (await conn.execute(select(mailboxes).where(mailboxes.c.id == mailbox_id)))
        .mappings()
        .first()
    )
    return dict(row) if row else None


async def list_mailboxes(
    conn: AsyncConnection, org_id: int | None = None, user_id: int | None = None
) -> list[dict[str, Any]]:
    q = select(mailboxes).order_by(mailboxes.c.id)
    if org_id is not None:
        q = q.where(mailboxes.c.org_id == org_id)
    if user_id is not None:
        q = q.where(mailboxes.c.user_id == user_id)
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def update_mailbox(conn: AsyncConnection, mailbox_id: int, **values: Any) -> None:
    await conn.execute(update(mailboxes).where(mailboxes.c.id == mailbox_id).values(**values))


async def delete_mailbox(conn: AsyncConnection, org_id: int, mailbox_id: int) -> bool:
    q = delete(mailboxes).where(mailboxes.c.org_id == org_id, mailboxes.c.id == mailbox_id)
    return (await conn.execute(q)).rowcount > 0


async def folder_states(conn: AsyncConnection, mailbox_id: int) -> dict[str, dict[str, Any]]:
    q = select(mailbox_folders).where(mailbox_folders.c.mailbox_id == mailbox_id)
    return {r["folder"]: dict(r) for r in (await conn.execute(q)).mappings()}


async def reset_folders(conn: AsyncConnection, mailbox_id: int) -> None:
    """Forget every checkpoint (and POP3 UIDL): the next poll backfills again (dedupe
    keeps it harmless)."""
    await conn.execute(delete(mailbox_folders).where(mailbox_folders.c.mailbox_id == mailbox_id))
    await conn.execute(delete(mailbox_pop_seen).where(mailbox_pop_seen.c.mailbox_id == mailbox_id))


def _upsert_folder(conn: Connection, mailbox_id: int, folder: str, **values: Any) -> None:
    key = (mailbox_folders.c.mailbox_id == mailbox_id) & (mailbox_folders.c.folder == folder)
    if conn.execute(update(mailbox_folders).where(key).values(**values)).rowcount == 0:
        values.setdefault("uidvalidity", 0)
        values.setdefault("last_uid", 0)
        conn.execute(insert(mailbox_folders).values(mailbox_id=mailbox_id, folder=folder, **values))


def store_checkpoint(
    conn: Connection, mailbox_id: int, folder: str, uidvalidity: int, last_uid: int
) -> None:
    """Store where a folder's poll resumes; never backwards under the same UIDVALIDITY.

    A re-run backfill of older mail walks UIDs from 1 again: it must not drag
    the live poller's checkpoint back with it.
    """
    old = conn.execute(
        select(mailbox_folders.c.uidvalidity, mailbox_folders.c.last_uid).where(
            mailbox_folders.c.mailbox_id == mailbox_id, mailbox_folders.c.folder == folder
        )
    ).first()
    if old is not None and old.uidvalidity == uidvalidity:
        last_uid = max(last_uid, old.last_uid)
    _upsert_folder(conn, mailbox_id, folder, uidvalidity=uidvalidity, last_uid=last_uid)


async def store_modseq(
    conn: AsyncConnection, mailbox_id: int, folder: str, highestmodseq: int | None
) -> None:
    await conn.run_sync(_upsert_folder, mailbox_id, folder, highestmodseq=highestmodseq)


def store_progress(conn: Connection, mailbox_id: int, progress: dict[str, Any], state: str) -> None:
    conn.execute(
        update(mailboxes)
        .where(mailboxes.c.id == mailbox_id)
        .values(progress=progress, state=state, error_kind=None, error_message=None)
    )


# -- POP3: the UIDLs a mailbox has seen ------------------------------------------------


def pop_seen_uidls(conn: Connection, mailbox_id: int) -> set[str]:
    """Every UIDL of the mailbox stored for filing or skipped: what a poll must not fetch."""
    q = select(mailbox_pop_seen.c.uidl).where(mailbox_pop_seen.c.mailbox_id == mailbox_id)
    return set(conn.execute(q).scalars())


def remember_uidls(
    conn: Connection,
    mailbox_id: int,
    rows: Sequence[tuple[str, str | None]],
    at: datetime,
) -> None:
    """Remember ``(uidl, skipped reason or None)``; runs in the spool transaction.

    A UIDL remembered before (an explicit backfill fetches it again, or a
    second node's poller got there first) is left as it is: the insert ignores
    the primary key conflict, so the batch's mail is still stored.
    """
    fresh: dict[str, str | None] = {}
    for uidl, reason in rows:
        fresh.setdefault(uidl, reason)
    if fresh:
        conn.execute(
            insert_ignore(mailbox_pop_seen, conn.dialect.name),
            [
                {"mailbox_id": mailbox_id, "uidl": u, "seen_at": at, "skipped": r}
                for u, r in fresh.items()
            ],
        )


def forget_uidls(conn: Connection, mailbox_id: int, uidls: Sequence[str]) -> None:
    """Drop UIDLs no longer on the server (deleted there by another mail client)."""
    for i in range(0, len(uidls), 500):
        conn.execute(
            delete(mailbox_pop_seen).where(
                mailbox_pop_seen.c.mailbox_id == mailbox_id,
                mailbox_pop_seen.c.uidl.in_(list(uidls[i : i + 500])),
            )
        )


async def pop_summary(conn: AsyncConnection, mailbox_id: int) -> dict[str, Any]:
    """How many UIDLs were stored for filing, and the last skipped ones with their reason."""
    from sqlalchemy import func

    base = mailbox_pop_seen.c.mailbox_id == mailbox_id
    stored = (
        await conn.execute(select(func.count()).where(base, mailbox_pop_seen.c.skipped.is_(None)))
    ).scalar_one()
    skipped_q = (
        select(mailbox_pop_seen.c.uidl, mailbox_pop_seen.c.skipped, mailbox_pop_seen.c.seen_at)
        .where(base, mailbox_pop_seen.c.skipped.is_not(None))
        .order_by(mailbox_pop_seen.c.seen_at.desc(), mailbox_pop_seen.c.uidl)
        .limit(20)
    )
    skipped = [dict(r) for r in (await conn.execute(skipped_q)).mappings()]
    count = (
        await conn.execute(
            select(func.count()).where(base, mailbox_pop_seen.c.skipped.is_not(None))
        )
    ).scalar_one()
    return {"stored": stored, "skipped_count": count, "skipped": skipped}


# -- where each filed message sits on the server ------------------------------------


def message_pks(
    conn: Connection, org_id: int, keys: Sequence[tuple[str | None, str]]
) -> dict[tuple[str | None, str], int]:
    """(Message-ID, content hash) → messages.id for mail filed earlier (dropbox, a resync)."""
    if not keys:
        return {}
    ids = sorted({m for m, _ in keys if m})
    hashes = sorted({h for _, h in keys})
    cond = messages.c.content_hash.in_(hashes)
    if ids:
        cond = or_(cond, messages.c.message_id.in_(ids))
    rows = conn.execute(
        select(messages.c.id, messages.c.message_id, messages.c.content_hash).where(
            messages.c.org_id == org_id, cond
        )
    ).all()
    by_id = {m: pk for pk, m, _ in rows if m}
    by_hash = {h: pk for pk, _, h in rows}
    out: dict[tuple[str | None, str], int] = {}
    for m, h in keys:
        pk = by_hash.get(h) or (by_id.get(m) if m else None)
        if pk is not None:
            out[(m, h)] = pk
    return out


def store_locations(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Remember (mailbox, folder, UIDVALIDITY, UID) → message; a refetch changes nothing."""
    if not rows:
        return
    existing = {
        (r.folder, r.uidvalidity, r.uid)
        for r in conn.execute(
            select(
                mailbox_messages.c.folder, mailbox_messages.c.uidvalidity, mailbox_messages.c.uid
            ).where(
                mailbox_messages.c.mailbox_id == rows[0]["mailbox_id"],
                mailbox_messages.c.uid.in_([r["uid"] for r in rows]),
            )
        )
    }
    fresh = [r for r in rows if (r["folder"], r["uidvalidity"], r["uid"]) not in existing]
    if fresh:
        conn.execute(insert(mailbox_messages), fresh)


def set_seen_sync(conn: Connection, pks: Iterable[int], seen: bool = True) -> int:
    pks = sorted(set(pks))
    if not pks:
        return 0
    return conn.execute(
        update(messages).where(messages.c.id.in_(pks), messages.c.seen != seen).values(seen=seen)
    ).rowcount


def apply_server_flags(
    conn: Connection, mailbox_id: int, folder: str, uidvalidity: int, seen_by_uid: dict[int, bool]
) -> int:
    """Read or unread in the mail client → messages.seen; returns how many changed."""
    if not seen_by_uid:
        return 0
    rows = conn.execute(
        select(mailbox_messages.c.uid, mailbox_messages.c.message_pk).where(
            mailbox_messages.c.mailbox_id == mailbox_id,
            mailbox_messages.c.folder == folder,
            mailbox_messages.c.uidvalidity == uidvalidity,
            mailbox_messages.c.uid.in_(sorted(seen_by_uid)),
            mailbox_messages.c.seen_pending.is_(False),
        )
    ).all()
    read = [pk for uid, pk in rows if seen_by_uid[uid]]
    unread = [pk for uid, pk in rows if not seen_by_uid[uid]]
    return set_seen_sync(conn, read, True) + set_seen_sync(conn, unread, False)


async def locations(conn: AsyncConnection, org_id: int, message_pk: int) -> list[dict[str, Any]]:
    q = (
        select(mailbox_messages, mailboxes.c.user_id)
        .join(mailboxes, mailboxes.c.id == mailbox_messages.c.mailbox_id)
        .where(mailboxes.c.org_id == org_id, mailbox_messages.c.message_pk == message_pk)
    )
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def set_seen_pending(conn: AsyncConnection, location_ids: list[int], pending: bool) -> None:
    if location_ids:
        await conn.execute(
            update(mailbox_messages)
            .where(mailbox_messages.c.id.in_(location_ids))
            .values(seen_pending=pending)
        )


async def pending_seen(conn: AsyncConnection, mailbox_id: int) -> list[dict[str, Any]]:
    q = (
        select(mailbox_messages, messages.c.seen)
        .join(messages, messages.c.id == mailbox_messages.c.message_pk)
        .where(
            mailbox_messages.c.mailbox_id == mailbox_id,
            mailbox_messages.c.seen_pending.is_(True),
        )
    )
    return [dict(r) for r in (await conn.execute(q)).mappings()]


async def get_message(conn: AsyncConnection, org_id: int, message_pk: int) -> dict[str, Any] | None:
    q = select(messages.c.id, messages.c.user_id, messages.c.seen).where(
        messages.c.org_id == org_id, messages.c.id == message_pk
    )
    row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None


async def count_locations(conn: AsyncConnection, mailbox_id: int) -> int:
    from sqlalchemy import func

    q = select(func.count()).where(mailbox_messages.c.mailbox_id == mailbox_id)
    return (await conn.execute(q)).scalar_one()


# -- sharing and excluded domains ---------------------------------------------------


def excluded_by_org(conn: Connection, org_ids: Sequence[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    q = select(excluded_domains.c.org_id, excluded_domains.c.domain).where(
        excluded_domains.c.org_id.in_(list(org_ids))
    )
    for org_id, domain in conn.execute(q).all():
        out.setdefault(org_id, []).append(domain)
    return out


async def list_excluded(conn: AsyncConnection, org_id: int) -> list[str]:
    return (await conn.run_sync(excluded_by_org, [org_id])).get(org_id, [])


async def set_excluded(conn: AsyncConnection, org_id: int, domains: list[str]) -> None:
    await conn.execute(delete(excluded_domains).where(excluded_domains.c.org_id == org_id))
    if domains:
        await conn.execute(
            insert(excluded_domains), [{"org_id": org_id, "domain": d} for d in domains]
        )


async def sharing_modes(conn: AsyncConnection, org_id: int) -> dict[int, dict[str, Any]]:
    q = select(sharing).where(sharing.c.org_id == org_id)
    return {r["user_id"]: dict(r) for r in (await conn.execute(q)).mappings()}


async def shared_records(conn: AsyncConnection, user_id: int) -> list[tuple[str, int]]:
    q = (
        select(sharing_records.c.module, sharing_records.c.record_id)
        .where(sharing_records.c.user_id == user_id)
        .order_by(sharing_records.c.module, sharing_records.c.record_id)
    )
    return [(m, r) for m, r in (await conn.execute(q)).all()]


async def shares_by_user(
    conn: AsyncConnection, user_ids: Iterable[int]
) -> dict[int, set[tuple[str, int]]]:
    """The records each of ``user_ids`` chose to share (custom mode), for reading many mails."""
    user_ids = sorted(set(user_ids))
    if not user_ids:
        return {}
    q = select(
        sharing_records.c.user_id, sharing_records.c.module, sharing_records.c.record_id
    ).where(sharing_records.c.user_id.in_(user_ids))
    out: dict[int, set[tuple[str, int]]] = {uid: set() for uid in user_ids}
    for uid, module, rid in (await conn.execute(q)).all():
        out[uid].add((module, rid))
    return out


async def sharing_rules(
    conn: AsyncConnection, org_id: int
) -> tuple[dict[int, dict[str, Any]], dict[int, set[tuple[str, int]]]]:
    """The org's sharing modes and its custom sharers' records: all a read path needs."""
    modes = await sharing_modes(conn, org_id)
    custom = [uid for uid, row in modes.items() if row["mode"] == "custom"]
    return modes, await shares_by_user(conn, custom)


async def set_sharing(
    conn: AsyncConnection,
    org_id: int,
    user_id: int,
    *,
    mode: str,
    delegated: bool,
    records: list[tuple[str, int]] | None,
) -> None:
    key = sharing.c.user_id == user_id
    values = {"mode": mode, "delegated": delegated}
    if (await conn.execute(update(sharing).where(key).values(**values))).rowcount == 0:
        await conn.execute(insert(sharing).values(user_id=user_id, org_id=org_id, **values))
    if records is not None:
        await conn.execute(delete(sharing_records).where(sharing_records.c.user_id == user_id))
        if records:
            await conn.execute(
                insert(sharing_records),
                [{"user_id": user_id, "module": m, "record_id": r} for m, r in records],
            )


async def pollable_mailboxes(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every mailbox whose owner is active: a deactivated user's mailboxes stop polling.

    The supervisor's question (all orgs: it runs one poller per mailbox);
    reactivating the user starts them again from their checkpoints.
    """
    q = (
        select(mailboxes)
        .join(users, (users.c.id == mailboxes.c.user_id) & (users.c.org_id == mailboxes.c.org_id))
        .where(users.c.active)
        .order_by(mailboxes.c.id)
    )
    return [dict(r) for r in (await conn.execute(q)).mappings()]


# -- poller leases: one poller per mailbox across every ``imap`` process ------------------
#
# ``mailboxes.poller`` names the holder (``host:pid:random``) and ``poll_lease_until``
# when its claim runs out.  Every change is one conditional UPDATE, so two processes
# racing for the same mailbox cannot both win: the row lock (PostgreSQL) or the single
# writer (SQLite) orders them, and the loser's WHERE no longer matches.  Times come from
# the callers' clock, as the relay's ``claimed_until`` does: nodes keep their clocks in
# step (NTP) and a lease of seconds absorbs what skew remains.


def _free_or_mine(holder: str, now: datetime):
    return or_(
        mailboxes.c.poller.is_(None),
        mailboxes.c.poller == holder,
        mailboxes.c.poll_lease_until.is_(None),
        mailboxes.c.poll_lease_until < now,
    )


async def take_poll_leases(
    conn: AsyncConnection, mailbox_ids: Sequence[int], holder: str, now: datetime, until: datetime
) -> set[int]:
    """Take (or keep) the lease of each mailbox that is free, expired or already ours.

    Returns the ids now held by ``holder``; the others are some live process's.
    """
    if not mailbox_ids:
        return set()
    q = (
        update(mailboxes)
        .where(mailboxes.c.id.in_(list(mailbox_ids)), _free_or_mine(holder, now))
        .values(poller=holder, poll_lease_until=until)
        .returning(mailboxes.c.id)
    )
    return set((await conn.execute(q)).scalars())


async def renew_poll_leases(
    conn: AsyncConnection, mailbox_ids: Sequence[int], holder: str, until: datetime
) -> set[int]:
    """Push the leases ``holder`` still holds out to ``until``; returns those it still holds.

    A mailbox missing from the answer was taken over (our lease ran out while we could
    not renew it) or removed: its poller must stop.
    """
    if not mailbox_ids:
        return set()
    q = (
        update(mailboxes)
        .where(mailboxes.c.id.in_(list(mailbox_ids)), mailboxes.c.poller == holder)
        .values(poll_lease_until=until)
        .returning(mailboxes.c.id)
    )
    return set((await conn.execute(q)).scalars())


async def release_poll_leases(
    conn: AsyncConnection, mailbox_ids: Sequence[int], holder: str
) -> None:
    """Give up ``holder``'s leases at once (a clean stop): another poller may start now."""
    if not mailbox_ids:
        return
    await conn.execute(
        update(mailboxes)
        .where(mailboxes.c.id.in_(list(mailbox_ids)), mailboxes.c.poller == holder)
        .values(poller=None, poll_lease_until=None)
    )
