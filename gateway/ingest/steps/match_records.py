"""Step ``match``: link each message to the leads and contacts its counterparts already are.

One look-up per org for the whole batch, in chunks (a message may name
100,000 addresses; one ``IN`` list that long is refused by both databases).
A message is linked to at most ``max_records`` records, the first found in
header order: past that, its addresses stay on the message unlinked, so one
mass mailing cannot hold the batch (every org's filing) for minutes.

Dropbox mail is matched only against the modules its user searches
(``dropbox_search``: leads, contacts or both) and goes on to ``create``.
Polled (IMAP, POP3) mail with no CRM counterpart is kept for the SalesInbox
when it is incoming and either comes from a colleague (the org's own domains)
or the org keeps unknown senders (``inbox_keep_unknown``, the default);
otherwise it is not ours to keep and is ignored here.
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.addresses import in_domains
from gateway.ingest.context import Batch, Delivery, Flow, Outcome
from storage import filing

NAME = "match"

#: Records one message may be linked to or create (``MAILGATE_MAX_RECORDS_PER_MESSAGE``).
DEFAULT_MAX_RECORDS = 200
#: Addresses per look-up statement: well under both databases' bound-parameter limits.
LOOKUP_CHUNK = 1000


def lookup(conn: Connection, org_id: int, emails: set[str]) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    wanted = sorted(emails)
    for i in range(0, len(wanted), LOOKUP_CHUNK):
        found.update(filing.records_by_email(conn, org_id, wanted[i : i + LOOKUP_CHUNK]))
    return found


#: ``dropbox_search`` → the modules dropbox mail is matched against.
SEARCHED = {"leads": ("leads",), "contacts": ("contacts",), "both": ("leads", "contacts")}


def searched(d: Delivery, user: dict) -> tuple[str, ...]:
    if d.channel != "dropbox":
        return SEARCHED["both"]
    return SEARCHED.get(user.get("dropbox_search") or "both", SEARCHED["both"])


def keeps_unknown(d: Delivery, org: dict) -> bool:
    """Polled incoming mail with no CRM record that the SalesInbox shows.

    A colleague's mail (the org's own domains) is always kept: it is the inbox's
    colleagues column, which ``inbox_keep_unknown`` does not turn off.  Anyone
    else's is kept when the org keeps mail from senders not in the CRM.
    """
    if d.direction != "incoming":
        return False
    if bool(org.get("inbox_keep_unknown", True)):
        return True
    return any(in_domains(a, org.get("domains") or []) for a in d.counterparts)


def run(conn: Connection, batch: Batch, *, max_records: int = DEFAULT_MAX_RECORDS) -> Flow:
    by_org: dict[int, set[str]] = {}
    for d in batch.live():
        by_org.setdefault(d.org_id, set()).update(d.counterparts)
    batch.known = {o: lookup(conn, o, emails) for o, emails in by_org.items()}
    for d in batch.live():
        found = batch.known.get(d.org_id, {})
        own = batch.own_addresses.get(d.user_id, set())
        modules = searched(d, batch.users.get(d.user_id, {}))
        records: dict[tuple[str, int], None] = {}
        for address in d.counterparts:
            if address not in own:
                records.update(dict.fromkeys(r for r in found.get(address, ()) if r[0] in modules))
            if len(records) >= max_records:
                break
        d.records = list(records)[:max_records]
        if d.polled and not d.records and not keeps_unknown(d, batch.orgs.get(d.org_id, {})):
            d.decide(Outcome.IGNORED, NAME, "no CRM record for its counterparts")
    return batch.flow()
