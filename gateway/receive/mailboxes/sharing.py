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

The rules hold on every read path that shows mail: a record's emails, one
send (``/api/v1/sends/{id}``) and the event log (``email.*`` events carry the
owner's ``user_id`` and the subject, recipient or sender).  An event names its
records itself; one that names none (``email.received``) counts as shared on
no record, so a custom sharer's colleagues see it through ``email.filed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

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


def hidden_owners(
    viewer_id: int, settings: Mapping[int, Mapping[str, Any]], custom_sharers: Iterable[int]
) -> set[int]:
    """Users whose mail on this record the viewer must not see.

    Only users with a non-public mode can be hidden, so the set is small and
    becomes one ``NOT IN`` in the query.
    """
    sharers = set(custom_sharers)
    return {
        uid
        for uid, row in settings.items()
        if not can_see(viewer_id, uid, row["mode"], uid in sharers)
    }


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

    ``shared`` false (an excluded domain): its owner only.  ``crm_sent``: public.
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
) -> bool:
    """Events about mail follow their owner's sharing; every other event is the org's."""
    if not event_type.startswith(MAIL_EVENT_PREFIX):
        return True
    owner = data.get("user_id")
    crm_sent = event_type in SEND_EVENT_TYPES or (
        event_type == "email.filed" and data.get("source") in CRM_SOURCES
    )
    return sees_mail(
        viewer_id,
        owner if isinstance(owner, int) else None,
        event_records(data),
        settings,
        shares,
        shared=data.get("shared") is not False,
        crm_sent=crm_sent,
    )
