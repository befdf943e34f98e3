"""The CRM → Campaigns sync: a consumer that mirrors leads or contacts into mailing lists.

It reads ``record.created``, ``record.updated``, ``record.deleted`` and
``record.converted`` past its offset; nothing that changes records calls it.
A round gathers the records its events name (a lead or contact; the contacts
of a changed account; the contact of a changed deal), and for every active
sync of that org and tab decides each record from its *current* state
(:func:`sync.mirror.decide`) and writes the answer.  Each sync a round
touched gets one ``change`` run (``sync_runs`` + ``sync_skips`` + a
``sync.run`` event), all in the round's transaction with the moved offset.

Full runs (on creation, ``POST …/run``, resume, and a changed configuration)
are asked for with ``syncs.full_requested_at``; :meth:`CrmToCampaigns.run_once`
also takes those, each claimed by compare-and-set in the run's own
transaction and paged through the tab :data:`PAGE` records at a time with
batched statements.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from gateway.addresses import normalise
from storage import crm, events
from storage import syncs as store
from storage.events import Event, EventType, NewEvent
from storage.payloads import sync_run
from sync.consumer import Consumer
from sync.mirror import Decision, Member, Module, Outcome, Rules, Source, Tally, decide

log = logging.getLogger("mailgate.sync.crm_to_campaigns")

#: Records read per statement in a full run.
PAGE = 1000
#: Events that can change what a list should hold.
WANTED = frozenset(
    {
        EventType.RECORD_CREATED,
        EventType.RECORD_UPDATED,
        EventType.RECORD_DELETED,
        EventType.RECORD_CONVERTED,
    }
)


@dataclass(slots=True)
class Touched:
    """What a round's events name, per org: records of each module, accounts and deals."""

    records: dict[tuple[int, str], set[int]] = field(default_factory=lambda: defaultdict(set))
    accounts: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    deals: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))

    def note(self, event: Event) -> None:
        data = event.data
        if event.type == EventType.RECORD_CONVERTED:
            self.records[(event.org_id, Module.LEADS)].add(data["lead_id"])
            return
        module = data.get("module")
        if module in (Module.LEADS, Module.CONTACTS):
            self.records[(event.org_id, module)].add(data["id"])
        elif module == "accounts":
            self.accounts[event.org_id].add(data["id"])
        elif module == "deals":
            self.deals[event.org_id].add(data["id"])

    def related_orgs(self) -> set[int]:
        """Orgs with a changed account or deal (their contacts may map its fields)."""
        return {o for o, ids in (*self.accounts.items(), *self.deals.items()) if ids}

    def orgs(self) -> list[int]:
        return sorted({o for o, _ in self.records} | set(self.accounts) | set(self.deals))


class CrmToCampaigns(Consumer):
    """Mirrors each active sync's CRM tab into its list, as records change and on request."""

    name = "crm_to_campaigns"
    types = WANTED
    # "Immediately on change" (seed 002): a record reaches its list within a second or so.
    poll_interval = 0.5

    # -- rounds of changes --------------------------------------------------------------

    async def run_once(self) -> int:
        """A round of record changes, then any full runs that were asked for."""
        handled = await super().run_once()
        for sync_id, requested_at in await self.db.run_read(store.due_full_runs):
            if self.stopping:
                break
            handled += await self.db.run_write(self._full_run, sync_id, requested_at)
        return handled

    def apply_batch(self, conn: Connection, batch: Sequence[Event]) -> list[NewEvent]:
        """Note what the batch touched, then sync each touched org once: one run per sync."""
        touched = Touched()
        for event in batch:
            touched.note(event)
        now = self.clock.now()
        runs = [run for org_id in touched.orgs() for run in self._apply_org(conn, org_id, touched)]
        return [run_event(r, now) for r in runs]

    def _apply_org(self, conn: Connection, org_id: int, touched: Touched) -> list[Finished]:
        lead_ids = touched.records.get((org_id, Module.LEADS), set())
        contact_ids = set(touched.records.get((org_id, Module.CONTACTS), set()))
        modules = {Module.CONTACTS} if contact_ids or org_id in touched.related_orgs() else set()
        if lead_ids:
            modules.add(Module.LEADS)
        rows = store.lock_syncs(conn, org_id, modules) if modules else []
        if not rows:
            return []
        if any(r["module"] == Module.CONTACTS for r in rows):
            if touched.accounts.get(org_id):
                contact_ids |= store.contacts_of_accounts(conn, org_id, touched.accounts[org_id])
            if touched.deals.get(org_id):
                contact_ids |= store.contacts_of_deals(conn, org_id, touched.deals[org_id])
        wanted = {Module.LEADS: lead_ids, Module.CONTACTS: contact_ids}
        finished = []
        for row in rows:
            ids = wanted[Module(row["module"])]
            if not ids:
                continue
            rules = Rules.from_row(row)
            now = self.clock.now()
            sources = load_sources(conn, rules, ids)
            tally = Tally()
            apply_isolated(conn, rules, sources, tally, now)
            if tally.total:
                finished.append(record_run(conn, rules, "change", tally, now, self.clock.now()))
        return finished

    # -- full runs -------------------------------------------------------------------------

    def _full_run(self, conn: Connection, sync_id: int, requested_at: datetime) -> int:
        """One full resync of the sync's tab, if this process claims the request."""
        row = store.claim_full(conn, sync_id, requested_at)
        if row is None:
            return 0
        # The claim's UPDATE holds this sync's row until commit: a change round of another
        # process waits for it (locking more syncs here could deadlock with that round).
        rules = Rules.from_row(row)
        started = self.clock.now()
        tally = Tally()
        after = 0
        while page := store.records_page(conn, rules.module, rules.org_id, after=after, limit=PAGE):
            after = page[-1]["id"]
            records = {r["id"]: r for r in page}
            sources = with_related(conn, rules, records, [r["id"] for r in page])
            apply_isolated(conn, rules, sources, tally, self.clock.now())
        orphans = store.orphaned_members(conn, rules.org_id, rules.list_id, rules.module)
        gone = [Source(rules.module, m["record_id"], None) for m in orphans]
        apply_isolated(conn, rules, gone, tally, self.clock.now())
        done = record_run(conn, rules, "full", tally, started, self.clock.now())
        events.append_sync(conn, [run_event(done, self.clock.now())])
        return max(1, tally.total)


@dataclass(frozen=True, slots=True)
class Finished:
    """A run written to ``sync_runs``, for its ``sync.run`` event."""

    run_id: int
    rules: Rules
    kind: str
    tally: Tally


def load_sources(conn: Connection, rules: Rules, ids: Iterable[int]) -> list[Source]:
    """The records ``ids`` of the sync's tab as they are now (deleted ones with no record)."""
    ids = sorted(set(ids))
    records = crm.records_by_ids(conn, rules.module, rules.org_id, ids)
    return with_related(conn, rules, records, ids)


def with_related(
    conn: Connection, rules: Rules, records: Mapping[int, Mapping[str, Any]], ids: Iterable[int]
) -> list[Source]:
    """Sources for ``ids``, each contact with the account and latest deal its mapping reads."""
    accounts: dict[int, dict[str, Any]] = {}
    latest: dict[int, dict[str, Any]] = {}
    if rules.module == Module.CONTACTS:
        reads = {v.partition(".")[0] for v in rules.field_map.values() if "." in v}
        if "account" in reads:
            account_ids = [r["account_id"] for r in records.values() if r.get("account_id")]
            if account_ids:
                accounts = crm.records_by_ids(conn, "accounts", rules.org_id, account_ids)
        if "deal" in reads:
            latest = store.latest_deals(conn, rules.org_id, records)
    out = []
    for rid in ids:
        record = records.get(rid)
        account = accounts.get(record.get("account_id")) if record else None
        out.append(Source(rules.module, rid, record, account, latest.get(rid)))
    return out


def apply_isolated(
    conn: Connection, rules: Rules, sources: list[Source], tally: Tally, now: datetime
) -> None:
    """:func:`apply_decisions` in a savepoint; one record at a time if the batch breaks.

    A record the database refuses (a constraint, a trigger, a concurrent hand-added
    member) is logged and left out of the run; its neighbours, the other syncs and
    the other orgs of the round go on, and the consumer does not stall on it.
    """
    try:
        with conn.begin_nested():
            batch = Tally()
            apply_decisions(conn, rules, sources, batch, now)
        tally.merge(batch)
        return
    except SQLAlchemyError as exc:
        log.warning(
            "sync %d: a batch of %d broke (%s); one by one", rules.sync_id, len(sources), exc
        )
    for source in sources:
        try:
            with conn.begin_nested():
                one = Tally()
                apply_decisions(conn, rules, [source], one, now)
            tally.merge(one)
        except SQLAlchemyError as exc:
            log.error("sync %d: %s %d not synced: %s", rules.sync_id, source.module, source.id, exc)


def apply_decisions(
    conn: Connection, rules: Rules, sources: list[Source], tally: Tally, now: datetime
) -> None:
    """Decide every source against the list's members and write the answers in batches.

    Decisions see the effects of earlier ones of the same batch (two records with one
    address: the second is a duplicate), through the in-memory view of the members.
    """
    if not sources:
        return
    emails = [
        n for s in sources if s.record and (n := normalise((s.record.get("email") or "").strip()))
    ]
    rows = store.members_for(
        conn, rules.list_id, emails=emails, module=rules.module, record_ids=[s.id for s in sources]
    )
    by_email = {r["email_norm"]: Member.from_row(r) for r in rows}
    by_record = {
        r["record_id"]: Member.from_row(r)
        for r in rows
        if r["module"] == rules.module and r["record_id"] is not None
    }
    inserts: list[dict[str, Any]] = []
    updates: list[tuple[int, Mapping[str, Any]]] = []
    removals: list[int] = []
    detached: list[int] = []
    placeholder = 0
    for source in sources:
        norm = None
        if source.record is not None:
            norm = normalise((source.record.get("email") or "").strip())
        at_address = by_email.get(norm) if norm else None
        linked = by_record.get(source.id)
        if linked is not None and at_address is not None and linked.id == at_address.id:
            linked = None
        decision = decide(rules, source, at_address, linked)
        tally.count(source, decision)
        placeholder = _plan(decision, source, by_email, by_record, placeholder)
        if decision.outcome == Outcome.ADDED:
            inserts.append(dict(decision.values))
        elif decision.member_id is not None and decision.values:
            updates.append((decision.member_id, decision.values))
        removals.extend(decision.remove)
        if decision.detach is not None:
            detached.append(decision.detach)
    # Detach before the updates, which may link the same record to another member.
    store.detach_members(conn, detached, now)
    store.change_members(conn, updates, now)
    store.remove_members(conn, removals, now)
    store.add_members(conn, rules.org_id, rules.list_id, inserts, now)


def _plan(
    decision: Decision,
    source: Source,
    by_email: dict[str, Member],
    by_record: dict[int, Member],
    placeholder: int,
) -> int:
    """Reflect ``decision`` in the in-memory view; the next placeholder id for new members."""
    for member_id in decision.remove:
        for view in (by_email, by_record):
            for key, member in list(view.items()):
                if member.id == member_id:
                    view[key] = member.with_values({"removed": True})
    if decision.outcome == Outcome.ADDED:
        placeholder -= 1
        member = Member(
            id=placeholder,
            email=decision.values["email"],
            email_norm=decision.values["email_norm"],
            module=source.module,
            record_id=source.id,
        )
        by_email[member.email_norm] = by_record[source.id] = member
    elif decision.member_id is not None and decision.values:
        old = next(
            m for m in (*by_email.values(), *by_record.values()) if m.id == decision.member_id
        )
        member = old.with_values(decision.values)
        if old.email_norm != member.email_norm:
            by_email.pop(old.email_norm, None)
        by_email[member.email_norm] = by_record[source.id] = member
    return placeholder


def record_run(
    conn: Connection, rules: Rules, kind: str, tally: Tally, started: datetime, finished: datetime
) -> Finished:
    """Write the run's history row and its skipped records."""
    run_id = store.add_run(
        conn,
        {
            "org_id": rules.org_id,
            "sync_id": rules.sync_id,
            "kind": kind,
            "started_at": started,
            "finished_at": finished,
            "total": tally.total,
            "added": tally.added,
            "updated": tally.updated,
            "removed": tally.removed,
            "skipped": tally.skipped,
            "skipped_reasons": dict(tally.skipped_reasons),
        },
    )
    store.add_skips(conn, rules.org_id, run_id, tally.skips)
    return Finished(run_id, rules, kind, tally)


def run_event(done: Finished, at: datetime) -> NewEvent:
    t = done.tally
    return sync_run(
        done.rules.org_id,
        sync_id=done.rules.sync_id,
        run_id=done.run_id,
        kind=done.kind,
        module=done.rules.module,
        list_id=done.rules.list_id,
        total=t.total,
        added=t.added,
        updated=t.updated,
        removed=t.removed,
        skipped=t.skipped,
        skipped_reasons=t.skipped_reasons,
        at=at,
    )
