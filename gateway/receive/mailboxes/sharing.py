"""Who sees whose mail: pure rules over sharing modes.

Each user's mail (IMAP *and* dropbox: the owner of a filed message is the
user it was filed for) is shared by that user's mode:

* ``public`` (the default, what the dropbox always did): every colleague sees it;
* ``custom``: colleagues see it only on the records the owner chose;
* ``private``: nobody else sees it.

A user always sees their own mail, and mail with no owner (our own sends
without a user) is visible to all.  Admins follow the same rules: privacy
is the point of "private".  The mode is set by an org admin; a user may
change their own only when the admin delegated it.  Mail with the org's
excluded domains is never filed, so it is never shared either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

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
