"""The SQL of the Campaigns → CRM sync: recipient and member statuses, history, registrations.

Every function takes a synchronous ``Connection`` (the consumer's round, or
``Database.run_read``/``run_write`` for the API) and runs one statement or a
small read.  Callers combine them in one transaction.

Concurrency: the consumer's rounds are serialised by its offset row (see
:mod:`storage.consumers`), so its read-then-write sequences (read a
recipient, compute the stronger status, write it) never interleave with
another round of the same consumer.  The campaign runner writes recipients
only before their send exists (``pending`` → ``queued``), so no event of
ours can race it.  Timestamps are still written with ``COALESCE`` (the first
one wins) and statuses guarded in the ``WHERE``, so even an event applied
twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, insert, literal, select, union_all, update

from storage.inserts import insert_ignore
from storage.schema import accounts, contacts, leads
from storage.schema_campaigns import (
    campaign_crm_settings,
    campaign_recipients,
    campaigns,
    list_members,
    mailing_lists,
    record_campaigns,
)

#: The person-record modules: the ones with an address, ``do_not_mail`` and a history.
PEOPLE = {"leads": leads, "contacts": contacts}

#: The text columns of each module an admin may choose to hold the campaign status (seed
#: 001); the consumer writes nothing else, whatever a stored setting says.
STATUS_FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "leads": ("status", "title"),
    "contacts": ("title",),
}


# -- campaigns and recipients -------------------------------------------------------


def recipient_by_send(
    conn: Connection, org_id: int, send_id: int
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The campaign recipient ``send_id`` was composed for, and its campaign (one query).

    The campaign part has ``id``, ``name``, ``list_ids``, ``register`` and ``user_id``.
    None when no recipient of the org has that send.
    """
    q = (
        select(
            campaign_recipients,
            campaigns.c.name.label("campaign_name"),
            campaigns.c.list_ids.label("campaign_list_ids"),
            campaigns.c.register.label("campaign_register"),
            campaigns.c.user_id.label("campaign_user_id"),
        )
        .select_from(
            campaign_recipients.join(campaigns, campaigns.c.id == campaign_recipients.c.campaign_id)
        )
        .where(
            campaign_recipients.c.send_id == send_id,
            campaign_recipients.c.org_id == org_id,
            campaigns.c.org_id == org_id,
        )
    )
    row = conn.execute(q).mappings().first()
    if row is None:
        return None
    recipient = {c.name: row[c.name] for c in campaign_recipients.c}
    campaign = {
        "id": recipient["campaign_id"],
        "name": row["campaign_name"],
        "list_ids": row["campaign_list_ids"],
        "register": row["campaign_register"],
        "user_id": row["campaign_user_id"],
    }
    return recipient, campaign


def list_registers(conn: Connection, org_id: int, list_id: int | None) -> bool:
    """Whether the list is configured for registration (a missing list is not)."""
    if list_id is None:
        return False
    q = select(mailing_lists.c.register).where(
        mailing_lists.c.id == list_id, mailing_lists.c.org_id == org_id
    )
    return bool(conn.execute(q).scalar())


def set_recipient(conn: Connection, recipient_id: int, values: Mapping[str, Any]) -> None:
    """Write the given columns of one recipient (the consumer computed them)."""
    if values:
        conn.execute(
            update(campaign_recipients)
            .where(campaign_recipients.c.id == recipient_id)
            .values(**values)
        )


# -- list members ---------------------------------------------------------------------


def set_member_status(
    conn: Connection,
    org_id: int,
    list_ids: Iterable[int],
    email_norm: str,
    status: str,
    *,
    replaces: list[str],
    at: datetime,
) -> int:
    """Move the address's member rows in ``list_ids`` to ``status`` where it is stronger.

    ``replaces`` are the weaker statuses (:func:`sync.registration.weaker_members`):
    a member already complained is not turned into ``bounced``.
    """
    ids = [i for i in list_ids if isinstance(i, int) and not isinstance(i, bool)]
    if not ids or not replaces:
        return 0
    res = conn.execute(
        update(list_members)
        .where(
            list_members.c.org_id == org_id,
            list_members.c.list_id.in_(ids),
            list_members.c.email_norm == email_norm,
            list_members.c.status.in_(replaces),
        )
        .values(status=status, status_at=at, updated_at=at)
    )
    return res.rowcount or 0


# -- CRM records ------------------------------------------------------------------------


def people_with_address(conn: Connection, org_id: int, email_norm: str) -> list[tuple[str, int]]:
    """Every contact, then every lead, of the org with that address: (module, id).

    Contacts first: of a converted lead and its contact, the contact is the live record.
    """
    found = union_all(
        *(
            select(literal(module).label("module"), table.c.id).where(
                table.c.org_id == org_id, table.c.email_norm == email_norm
            )
            for module, table in (("contacts", contacts), ("leads", leads))
        )
    )
    rows = conn.execute(select(found.subquery()))
    order = {"contacts": 0, "leads": 1}
    return sorted(((m, rid) for m, rid in rows), key=lambda r: (order[r[0]], r[1]))


def person(conn: Connection, org_id: int, module: str, rid: int) -> dict[str, Any] | None:
    """One lead or contact of the org (None if it is gone or another org's)."""
    table = PEOPLE.get(module)
    if table is None:
        return None
    q = select(table).where(table.c.org_id == org_id, table.c.id == rid)
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def set_person_fields(
    conn: Connection, org_id: int, module: str, rid: int, values: Mapping[str, Any], at: datetime
) -> None:
    """Write fields of one lead or contact (``do_not_mail``, the chosen status field)."""
    table = PEOPLE[module]
    conn.execute(
        update(table)
        .where(table.c.org_id == org_id, table.c.id == rid)
        .values(**values, updated_at=at)
    )


def create_person(
    conn: Connection, org_id: int, module: str, values: Mapping[str, Any], at: datetime
) -> int:
    """A new lead or contact; its id."""
    table = PEOPLE[module]
    res = conn.execute(
        insert(table)
        .values(org_id=org_id, created_at=at, updated_at=at, **values)
        .returning(table.c.id)
    )
    return res.scalar_one()


def account_named(conn: Connection, org_id: int, name: str) -> int | None:
    """The org's oldest account with that name (compared without case), if any."""
    q = (
        select(accounts.c.id)
        .where(accounts.c.org_id == org_id, func.lower(accounts.c.name) == name.lower())
        .order_by(accounts.c.id)
        .limit(1)
    )
    return conn.execute(q).scalar()


def create_account(conn: Connection, org_id: int, values: Mapping[str, Any], at: datetime) -> int:
    res = conn.execute(
        insert(accounts)
        .values(org_id=org_id, created_at=at, updated_at=at, **values)
        .returning(accounts.c.id)
    )
    return res.scalar_one()


# -- a record's campaign history --------------------------------------------------------


def history_entry(
    conn: Connection, module: str, rid: int, campaign_id: int
) -> dict[str, Any] | None:
    q = select(record_campaigns).where(
        record_campaigns.c.module == module,
        record_campaigns.c.record_id == rid,
        record_campaigns.c.campaign_id == campaign_id,
    )
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def add_history(
    conn: Connection,
    org_id: int,
    module: str,
    rid: int,
    campaign_id: int,
    status: str,
    at: datetime,
) -> None:
    """The record's first row for this campaign (a concurrent one wins quietly)."""
    conn.execute(
        insert_ignore(record_campaigns, conn.dialect.name).values(
            org_id=org_id,
            module=module,
            record_id=rid,
            campaign_id=campaign_id,
            status=status,
            at=at,
        )
    )


def set_history(conn: Connection, entry_id: int, status: str, at: datetime) -> None:
    conn.execute(
        update(record_campaigns)
        .where(record_campaigns.c.id == entry_id)
        .values(status=status, at=at)
    )


def history(
    conn: Connection, org_id: int, module: str, rid: int, *, offset: int, limit: int
) -> list[dict[str, Any]]:
    """The record's campaigns, newest status first: campaign_id, name, status, at."""
    q = (
        select(
            record_campaigns.c.campaign_id,
            campaigns.c.name,
            record_campaigns.c.status,
            record_campaigns.c.at,
        )
        .select_from(
            record_campaigns.join(
                campaigns,
                and_(
                    campaigns.c.id == record_campaigns.c.campaign_id,
                    campaigns.c.org_id == record_campaigns.c.org_id,
                ),
            )
        )
        .where(
            record_campaigns.c.org_id == org_id,
            record_campaigns.c.module == module,
            record_campaigns.c.record_id == rid,
        )
        .order_by(record_campaigns.c.at.desc(), record_campaigns.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(q).mappings()]


# -- settings ---------------------------------------------------------------------------


def status_field(conn: Connection, org_id: int) -> dict[str, str | None]:
    """The org's chosen CRM field per module for the campaign status ({} when unset)."""
    q = select(campaign_crm_settings.c.status_field).where(campaign_crm_settings.c.org_id == org_id)
    found = conn.execute(q).scalar()
    if not isinstance(found, Mapping):
        return {}
    return {m: f for m, f in found.items() if f in STATUS_FIELD_CHOICES.get(m, ())}


def set_status_field(
    conn: Connection,
    org_id: int,
    value: Mapping[str, str | None],
    *,
    user_id: int | None,
    at: datetime,
) -> None:
    """Replace the org's status-field setting (one row per org)."""
    row = {"status_field": dict(value), "updated_by": user_id, "updated_at": at}
    conn.execute(
        insert_ignore(campaign_crm_settings, conn.dialect.name).values(org_id=org_id, **row)
    )
    conn.execute(
        update(campaign_crm_settings).where(campaign_crm_settings.c.org_id == org_id).values(**row)
    )
