"""Who sees whose mail: pure rules over sharing modes.

Each user's mail (IMAP *and* dropbox: the owner of a filed message is the
user it was filed for) is shared by that user's mode:

* ``public`` (the default, what the dropbox always did): every colleague sees it;
* ``custom``: colleagues see it only on the records the owner chose;
* ``private``: nobody else sees it.

A user always sees their own mail, and mail with no owner (our own sends
without a user) is visible to all.  Admins follow the same rules: privacy
is the point of "private".  The mode is set by an org admin; a user may
change their own only when the admin delegated it.

Two exceptions, both from seed 004:

* mail sent from the CRM itself (the send API, campaigns: ``source`` in
  :data:`CRM_SOURCES`) is public mail (公開メール): everyone who can see the
  record sees it, whatever its sender's mode;
* mail with a counterpart in one of the org's excluded domains is filed but
  not shared (``shared`` false): only its owner sees it, whatever the mode.

Custom sharing is about the *mail*, not the page it is read on: a message is
shared when any record it is filed on is one its owner chose, so it shows on
each of its records and opens by id alike (:func:`sees_mail`, and
:func:`record_scope` for a record's list, where it becomes one query).

The rules hold on every read path that shows mail: a record's emails, one
email (``/api/v1/emails/{id}``, ``/raw``, ``/attachments/{n}``), one send
(``/api/v1/sends/{id}``), the event log and the live stream (``email.*``
events carry the owner's ``user_id`` and the subject, recipient or sender).
An event names its records itself; one that names none (``email.received``)
counts as shared on no record, so a custom sharer's colleagues see it through
``email.filed``.

A send's events (``email.sent`` … ``email.unsubscribed``) do not say whether
the send involves an excluded domain, and the send's CC addresses are not in
them: the reader looks the page's sends up (:func:`unshared_sends`, by the
org's excluded domains as they are now, as ``/api/v1/sends/{id}`` does) and
hands the ids to :func:`sees_event` through :class:`EventRules`.  Every event
naming such a send (its copy's ``email.filed`` and the ``email.replied`` to it
too) is then its sender's only.  Webhooks are the org's integration, not a
user's read path: they carry every event (``docs/webhooks.md``).

The reports (``/api/v1/reports/*``) are not a read path of mail content: they
count sends (CRM-sent, so public) and incoming mail (a number, no sender or
subject), so they cover the whole org for everyone.  The no-response list names
records mailed from the CRM with their address, send count and last send, so a
send involving an excluded domain counts on its sender's list alone
(``tracking_store.SendsSeen``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.addresses import in_domains, normalise
from storage.filing import Visibility

MAIL_EVENT_PREFIX = "email."
#: ``messages.source`` of mail sent from the CRM: public to everyone who sees the record.
CRM_SOURCES = ("api", "campaign")
#: Event types that are only ever about one of our sends (so CRM-sent, so public).
SEND_EVENT_TYPES = frozenset(
    {
        "email.sent",
        "email.deferred",
        "email.failed",
        "email.opened",
        "email.clicked",
        "email.bounced",
        "email.complained",
        "email.unsubscribed",
    }
)
MODES = ("private", "custom", "public")
DEFAULT_MODE = "public"


def mode_of(settings: Mapping[int, Mapping[str, Any]], user_id: int) -> str:
    row = settings.get(user_id)
    return row["mode"] if row else DEFAULT_MODE


def can_see(viewer_id: int, owner_id: int | None, mode: str, shares_record: bool) -> bool:
    """May ``viewer_id`` see mail ``owner_id`` filed against a record?"""
    if owner_id is None or owner_id == viewer_id:
        return True
    if mode == "public":
        return True
    if mode == "custom":
        return shares_record
    return False


def is_crm_sent(source: str | None) -> bool:
    """Was this mail sent from the CRM itself (public, 公開メール)?"""
    return source in CRM_SOURCES


def record_scope(
    viewer_id: int,
    settings: Mapping[int, Mapping[str, Any]],
    shares: Mapping[int, set[tuple[str, int]]],
) -> Visibility:
    """:func:`sees_mail` for every message of a record's list, as plain values for one query.

    Private owners (and custom ones who chose no record) are hidden; a custom
    owner's mail shows when it is filed on one of their chosen records.  The
    query adds the two exceptions: CRM-sent mail is public, unshared mail is its
    owner's only.
    """
    hidden: set[int] = set()
    partial: dict[int, frozenset[tuple[str, int]]] = {}
    for uid, row in settings.items():
        if uid == viewer_id or row["mode"] == "public":
            continue
        chosen = shares.get(uid, set()) if row["mode"] == "custom" else set()
        if chosen:
            partial[uid] = frozenset(chosen)
        else:
            hidden.add(uid)
    return Visibility(viewer_id, frozenset(hidden), partial, CRM_SOURCES)


def involves_excluded(addresses: Iterable[str | None], excluded: Collection[str]) -> bool:
    """Does any of ``addresses`` (a message's or a send's To and CCs) sit in one of the
    org's excluded domains (or a subdomain)?  Then the mail is filed and sent as usual
    but shared with nobody (seed 004 excludes domains from sharing, not from filing)."""
    if not excluded:
        return False
    domains = frozenset(excluded)
    return any(in_domains(n, domains) for a in addresses if (n := normalise(a)))


def send_addresses(send: Mapping[str, Any]) -> list[str]:
    """A ``sends`` row's To and CC addresses: what the excluded-domain rule looks at."""
    return [send["to_email"], *(send.get("cc_emails") or ())]


def unshared_sends(sends: Iterable[Mapping[str, Any]], excluded: Collection[str]) -> frozenset[int]:
    """The ids of ``sends`` (rows with ``id``, ``to_email``, ``cc_emails``) whose To or a CC
    sits in an excluded domain: each is its sender's own, with every event about it."""
    if not excluded:
        return frozenset()
    return frozenset(s["id"] for s in sends if involves_excluded(send_addresses(s), excluded))


def may_change(actor: Mapping[str, Any], target_id: int, delegated: bool) -> bool:
    """Admins set anyone's sharing in their org; a user their own, when delegated."""
    return bool(actor["is_admin"]) or (actor["id"] == target_id and delegated)


def event_records(data: Mapping[str, Any]) -> set[tuple[str, int]]:
    """The (module, id) records an event's data names: ``records`` or ``module``/``record_id``."""
    found = {
        (r["module"], r["id"])
        for r in data.get("records") or ()
        if isinstance(r, Mapping) and r.get("module") and r.get("id") is not None
    }
    if data.get("module") and data.get("record_id") is not None:
        found.add((data["module"], data["record_id"]))
    return found


def sees_mail(
    viewer_id: int,
    owner_id: int | None,
    records: set[tuple[str, int]],
    settings: Mapping[int, Mapping[str, Any]],
    shares: Mapping[int, set[tuple[str, int]]],
    *,
    shared: bool = True,
    crm_sent: bool = False,
) -> bool:
    """May the viewer see one piece of mail of ``owner_id`` that concerns ``records``?

    ``shared`` false (an excluded domain): its owner only, even when CRM-sent,
    since the exclusion is the admin's explicit word.  ``crm_sent``: public.
    """
    if owner_id is None or owner_id == viewer_id:
        return True
    if not shared:
        return False
    if crm_sent:
        return True
    mode = mode_of(settings, owner_id)
    return can_see(viewer_id, owner_id, mode, bool(records & shares.get(owner_id, set())))


def sees_event(
    viewer_id: int,
    event_type: str,
    data: Mapping[str, Any],
    settings: Mapping[int, Mapping[str, Any]],
    shares: Mapping[int, set[tuple[str, int]]],
    *,
    unshared_sends: Collection[int] = frozenset(),
) -> bool:
    """Events about mail follow their owner's sharing; every other event is the org's.

    ``unshared_sends``: ids of the org's sends that involve an excluded domain
    (:func:`unshared_sends`); an event naming one (``send_id``) is unshared mail,
    as an event whose own ``shared`` is false is.
    """
    if not event_type.startswith(MAIL_EVENT_PREFIX):
        return True
    owner = data.get("user_id")
    send_id = data.get("send_id")
    crm_sent = event_type in SEND_EVENT_TYPES or (
        event_type == "email.filed" and data.get("source") in CRM_SOURCES
    )
    shared = data.get("shared") is not False and not (
        isinstance(send_id, int) and send_id in unshared_sends
    )
    return sees_mail(
        viewer_id,
        owner if isinstance(owner, int) else None,
        event_records(data),
        settings,
        shares,
        shared=shared,
        crm_sent=crm_sent,
    )


@dataclass(frozen=True, slots=True)
class EventRules:
    """What :func:`sees_event` needs about one org, read once for a page or a poll of the
    log: the sharing modes, the custom sharers' records, and which of the sends the
    events name involve an excluded domain."""

    modes: Mapping[int, Mapping[str, Any]]
    shares: Mapping[int, set[tuple[str, int]]]
    unshared_sends: frozenset[int] = frozenset()

    def sees(self, viewer_id: int, event_type: str, data: Mapping[str, Any]) -> bool:
        return sees_event(
            viewer_id,
            event_type,
            data,
            self.modes,
            self.shares,
            unshared_sends=self.unshared_sends,
        )
