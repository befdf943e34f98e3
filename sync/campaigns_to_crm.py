"""Campaigns → CRM: campaign results written back to the CRM, as a consumer of the event log.

The campaign runner composes each ``campaign_recipients`` row into a send
(``send_id`` set, status ``queued``).  From then on everything that happens
to that send arrives here as a send event carrying ``campaign_id``, and this
consumer (issue #11, seeds 000 and 001) makes it visible on both sides:

- the **recipient**'s status and first timestamps (``sent_at``, ``opened_at``
  …): the strongest activity so far, human opens and clicks only;
- the **list member**'s status in the campaign's lists: ``unsubscribed``,
  ``complained``, ``bounced`` (hard bounces only);
- the **CRM record**(s) of the address: the campaign history
  (``record_campaigns``, ``GET /api/v1/{module}/{id}/campaigns``),
  ``do_not_mail`` on an unsubscribe or complaint, and the status in the
  field an admin chose (``campaign_crm_settings``), each change with its
  ``record.updated`` (source ``campaigns``) so the CRM → Campaigns sync and
  webhooks see it;
- **registration** (seed 000): the first human open or click may create a
  lead or contact (:func:`sync.registration.decide_registration`), or
  record why not.

Which records: the one the recipient was sent for or registered as
(``module``/``record_id``), and every lead and contact of the org with the
recipient's address: an unsubscribe is a statement about an address, and a
duplicate record must not keep mailing it.

The rules are pure (:mod:`sync.registration`); this module gathers their
inputs and writes their answers with :mod:`storage.campaign_results`.  Every
write is guarded by the state it moves (first timestamp wins, stronger
statuses only, ``do_not_mail`` only when false, registration only when not
registered), so applying an event again changes nothing.  New events are
appended once, at the end of the round (the PostgreSQL event-log lock is
taken last, as :func:`storage.events.append_sync` asks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection

from gateway.records.validation import address_problem, name_problem
from storage import campaign_results as store
from storage.events import Event, EventType, NewEvent
from storage.payloads import SEND_TYPES, record_created, record_event
from sync.consumer import Consumer
from sync.registration import (
    DO_NOT_MAIL,
    TIMESTAMP_OF,
    Activity,
    Candidate,
    Person,
    RecipientStatus,
    Register,
    Skip,
    activity_of,
    decide_registration,
    member_status_for,
    register_target,
    status_after,
    stronger_status,
    weaker_members,
)

#: ``source`` of the records this consumer creates and the changes it makes.
SOURCE = "campaigns"


class _History(StrEnum):
    """What an event did to a record's history row for the campaign."""

    ADDED = "added"  # the record joins the campaign's history now
    MOVED = "moved"  # its status moved up
    KEPT = "kept"


@dataclass(slots=True)
class _Changes:
    """Field changes per CRM record within one event: one ``record.updated`` each."""

    fields: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    def add(self, module: str, rid: int, name: str, value: Any) -> None:
        self.fields.setdefault((module, rid), {})[name] = value


class CampaignsToCrm(Consumer):
    """Applies campaign send events to recipients, list members and CRM records."""

    name = "campaigns_to_crm"
    types = SEND_TYPES

    def apply_batch(self, conn: Connection, batch: Sequence[Event]) -> list[NewEvent]:
        """Each event in turn; the record events they cause, for the round to append last."""
        new: list[NewEvent] = []
        for event in batch:
            self._apply(conn, event, new)
        return new

    def _apply(self, conn: Connection, event: Event, new: list[NewEvent]) -> None:
        """One send event of a campaign: recipient, registration, CRM records, members.

        Events of no campaign, machine hits, and events no recipient of the org answers
        to are passed over (never raised on: a raise would stall the consumer).
        """
        data = event.data
        campaign_id, send_id = data.get("campaign_id"), data.get("send_id")
        if not isinstance(campaign_id, int) or not isinstance(send_id, int):
            return
        activity = activity_of(event.type, data)
        if activity is None:
            return
        found = store.recipient_by_send(conn, event.org_id, send_id)
        if found is None or found[0]["campaign_id"] != campaign_id:
            return
        recipient, campaign = found
        now = self.clock.now()
        before = dict(recipient)
        status = self._move_recipient(conn, recipient, activity, event.at)
        news = recipient != before  # False: the event was applied already (a replay)
        self._register(conn, recipient, campaign, activity, now, new)
        changes = _Changes()
        targets = self._records_of(conn, recipient, others=news)
        settings = store.status_field(conn, event.org_id) if targets else {}
        stopped = recipient["unsubscribed_at"] is not None or recipient["complained_at"] is not None
        for module, rid, record in targets:
            moved = self._history(conn, recipient, module, rid, status, event.at)
            chosen = settings.get(module)
            if moved != _History.KEPT and chosen and record.get(chosen) != status.value:
                changes.add(module, rid, chosen, status.value)
            # The unsubscribe itself (as it moves the record's history: read again, it must
            # not undo a person clearing do_not_mail since), or a record that joins this
            # campaign's picture only now (registered by an open applied after the
            # unsubscribe, or linked later).
            says_stop = activity in DO_NOT_MAIL and moved != _History.KEPT
            if (says_stop or (moved == _History.ADDED and stopped)) and not record["do_not_mail"]:
                changes.add(module, rid, "do_not_mail", True)
        self._write_changes(conn, event.org_id, changes, now, new)
        member = member_status_for(activity, data.get("type"))
        if member is not None:
            store.set_member_status(
                conn,
                event.org_id,
                lists if isinstance(lists := campaign["list_ids"], list) else [],
                recipient["email_norm"],
                member.value,
                replaces=weaker_members(member),
                at=event.at,
            )

    # -- the recipient ----------------------------------------------------------------

    def _move_recipient(
        self, conn: Connection, recipient: dict[str, Any], activity: Activity, at: datetime
    ) -> RecipientStatus:
        """Set the activity's first timestamp and the stronger status; the status after."""
        values: dict[str, Any] = {}
        stamps = [TIMESTAMP_OF.get(activity)]
        if activity == Activity.CLICKED:
            stamps.append("opened_at")  # a click implies an open
        for column in stamps:
            if column and recipient[column] is None:
                values[column] = at
        status = status_after(recipient["status"], activity)
        if status.value != recipient["status"]:
            values["status"] = status.value
        store.set_recipient(conn, recipient["id"], values)
        recipient.update(values)
        return status

    # -- registration (seed 000) ---------------------------------------------------------

    def _register(
        self,
        conn: Connection,
        recipient: dict[str, Any],
        campaign: dict[str, Any],
        activity: Activity,
        now: datetime,
        new: list[NewEvent],
    ) -> None:
        org_id = recipient["org_id"]
        target = register_target(campaign["register"], activity)
        registered = recipient["registered_id"] is not None
        existing = None
        if not registered and target is not None:
            existing = self._existing_record(conn, recipient)
        candidate = Candidate(
            activity=activity,
            target=target,
            registered=registered,
            reason=recipient["not_registered_reason"],
            list_configured=target is not None
            and store.list_registers(conn, org_id, recipient["list_id"]),
            existing=existing,
            person=_person(recipient),
        )
        values: dict[str, Any] = {}
        match decide_registration(candidate):
            case Register(module=module):
                rid = self._create(conn, recipient, campaign, module, now, new)
                values = {
                    "registered_module": module,
                    "registered_id": rid,
                    "not_registered_reason": None,
                    "module": module,
                    "record_id": rid,
                }
            case Skip(reason=reason, existing=found):
                values = {"not_registered_reason": reason.value}
                if found is not None and recipient["record_id"] is None:
                    values.update(module=found[0], record_id=found[1])
        values = {k: v for k, v in values.items() if recipient[k] != v}
        store.set_recipient(conn, recipient["id"], values)
        recipient.update(values)

    def _existing_record(
        self, conn: Connection, recipient: dict[str, Any]
    ) -> tuple[str, int] | None:
        """A lead or contact of the org that already is this person (any module)."""
        org_id = recipient["org_id"]
        module, rid = recipient["module"], recipient["record_id"]
        if module and rid and store.person(conn, org_id, module, rid) is not None:
            return module, rid
        found = store.people_with_address(conn, org_id, recipient["email_norm"])
        return found[0] if found else None

    def _create(
        self,
        conn: Connection,
        recipient: dict[str, Any],
        campaign: dict[str, Any],
        module: str,
        now: datetime,
        new: list[NewEvent],
    ) -> int:
        """The lead or contact (with its account, found by name or made) for the recipient."""
        org_id = recipient["org_id"]
        owner = campaign["user_id"]
        values: dict[str, Any] = {
            "first_name": recipient["first_name"].strip(),
            "last_name": recipient["last_name"].strip(),
            "email": recipient["email"].strip(),
            "email_norm": recipient["email_norm"],
            "source": SOURCE,
            "owner_id": owner,
        }
        if module == "leads":
            values["company"] = recipient["company"].strip()
        else:
            company = recipient["company"].strip()
            account_id = store.account_named(conn, org_id, company)
            if account_id is None:
                account = {"name": company, "owner_id": owner}
                account_id = store.create_account(conn, org_id, account, now)
                new.append(_created(org_id, "accounts", account_id, account, now))
            values["account_id"] = account_id
        rid = store.create_person(conn, org_id, module, values, now)
        new.append(_created(org_id, module, rid, values, now))
        return rid

    # -- the CRM side --------------------------------------------------------------------

    def _records_of(
        self, conn: Connection, recipient: dict[str, Any], *, others: bool
    ) -> list[tuple[str, int, dict[str, Any]]]:
        """The recipient's record and every lead/contact with its address: (module, id, row).

        With ``others`` False (an event that moved nothing on the recipient: one applied
        already, read again by a replay from offset 0) only the recipient's own record: a
        record with the address made since (a converted lead's contact, a duplicate entered
        by hand) joins on the recipient's next news, not on a replay, which must change
        nothing. (Records that joined earlier already hold the recipient's status.)
        """
        org_id = recipient["org_id"]
        keys: list[tuple[str, int]] = []
        if recipient["module"] in store.PEOPLE and recipient["record_id"] is not None:
            keys.append((recipient["module"], recipient["record_id"]))
        if others:
            for key in store.people_with_address(conn, org_id, recipient["email_norm"]):
                if key not in keys:
                    keys.append(key)
        out = []
        for module, rid in keys:
            row = store.person(conn, org_id, module, rid)
            if row is not None:
                out.append((module, rid, row))
        return out

    def _history(
        self,
        conn: Connection,
        recipient: dict[str, Any],
        module: str,
        rid: int,
        status: RecipientStatus,
        at: datetime,
    ) -> _History:
        """Upsert the record's history row for the campaign; what became of it."""
        campaign_id = recipient["campaign_id"]
        entry = store.history_entry(conn, module, rid, campaign_id)
        if entry is None:
            store.add_history(conn, recipient["org_id"], module, rid, campaign_id, status.value, at)
            return _History.ADDED
        stronger = stronger_status(entry["status"], status)
        if stronger.value == entry["status"]:
            return _History.KEPT
        store.set_history(conn, entry["id"], stronger.value, at)
        return _History.MOVED

    def _write_changes(
        self,
        conn: Connection,
        org_id: int,
        changes: _Changes,
        now: datetime,
        new: list[NewEvent],
    ) -> None:
        for (module, rid), values in changes.fields.items():
            store.set_person_fields(conn, org_id, module, rid, values, now)
            new.append(
                record_event(
                    EventType.RECORD_UPDATED,
                    org_id,
                    module=module,
                    record_id=rid,
                    source=SOURCE,
                    changed=values,
                    at=now,
                )
            )


def _created(org_id: int, module: str, rid: int, values: dict[str, Any], now: datetime) -> NewEvent:
    return record_created(
        org_id, module=module, record_id=rid, source=SOURCE, values=values, at=now
    )


def _person(recipient: dict[str, Any]) -> Person:
    """The recipient's fields, an unusable value counted as empty (it cannot be stored)."""
    names = {
        key: "" if name_problem(recipient[key] or "") else (recipient[key] or "")
        for key in ("first_name", "last_name", "company")
    }
    email = recipient["email"] or ""
    if email and address_problem(email):
        email = ""
    return Person(email=email, **names)
