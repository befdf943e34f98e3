"""One payload builder per event subject: the only place event data is shaped.

Every writer of an event type calls the same builder, so a consumer (the
sync, webhooks, the API reader) sees the same fields whichever path wrote it:
a lead created by the dropbox, the API or a CSV import is one
``record.created`` with the record's id each time.  ``docs/events.md`` lists
each type's fields; keep the two in step.

Subjects:

- **filed mail** (:func:`email_filed`, :func:`email_received`,
  :func:`email_replied`): a message we stored, by its ``messages`` id;
- **a send** (:func:`send_event`, and :func:`bounce_event` for a recorded
  bounce or complaint): one outbound message to one recipient and what became
  of it (sent, deferred, failed, opened, clicked, bounced, complained,
  unsubscribed), by its ``sends`` id;
- **a record** (:func:`record_event`, :func:`record_converted`): a lead,
  contact, account or deal, by module and id, with the fields that changed;
- **quota** (:func:`quota_event`), **suppression** (:func:`suppression_lifted`);
- **Campaigns** (:func:`campaign_sent`), **syncs** (:func:`sync_run`),
  **webhooks** (:func:`webhook_disabled`).

Builders are pure: they take plain values (or a row as a mapping) and return
a :class:`~storage.events.NewEvent`; nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from storage.events import EventType, NewEvent

#: Subjects are cut to this length in events (the full text stays in ``messages``).
SUBJECT_LIMIT = 200
#: Relay replies and diagnostics are cut to this length in events.
REPLY_LIMIT = 500

SEND_TYPES = frozenset(
    {
        EventType.EMAIL_SENT,
        EventType.EMAIL_DEFERRED,
        EventType.EMAIL_FAILED,
        EventType.EMAIL_OPENED,
        EventType.EMAIL_CLICKED,
        EventType.EMAIL_BOUNCED,
        EventType.EMAIL_COMPLAINED,
        EventType.EMAIL_UNSUBSCRIBED,
    }
)

RECORD_CHANGES = frozenset(
    {EventType.RECORD_CREATED, EventType.RECORD_UPDATED, EventType.RECORD_DELETED}
)


# -- filed mail ----------------------------------------------------------------------


def email_filed(
    org_id: int,
    *,
    message_pk: int,
    header_message_id: str | None,
    user_id: int | None,
    direction: str,
    source: str,
    subject: str,
    records: Iterable[tuple[str, int]],
    send_id: int | None = None,
    shared: bool = True,
    at: datetime | None = None,
) -> NewEvent:
    """A message was stored and linked to ``records`` ((module, id) pairs).

    ``shared`` false: it involves an excluded domain, so only its owner sees it.
    """
    data: dict[str, Any] = {
        "message_id": message_pk,
        "header_message_id": header_message_id,
        "user_id": user_id,
        "direction": direction,
        "source": source,
        "subject": (subject or "")[:SUBJECT_LIMIT],
        "records": [{"module": m, "id": r} for m, r in records],
        "shared": shared,
    }
    if send_id is not None:
        data["send_id"] = send_id
    return NewEvent(org_id, EventType.EMAIL_FILED, data, at=at)


def email_received(
    org_id: int,
    *,
    message_pk: int,
    user_id: int | None,
    sender: str,
    shared: bool = True,
    at: datetime | None = None,
) -> NewEvent:
    """Incoming mail was filed (a polled mailbox's INBOX, or mail from a record)."""
    data = {"message_id": message_pk, "user_id": user_id, "from": sender, "shared": shared}
    return NewEvent(org_id, EventType.EMAIL_RECEIVED, data, at=at)


def email_replied(
    org_id: int,
    *,
    send: Mapping[str, Any],
    message_pk: int | None,
    user_id: int | None,
    sender: str,
    shared: bool = True,
    at: datetime | None = None,
) -> NewEvent:
    """Mail answering one of our sends arrived (``send`` needs id, module, record_id).

    ``shared`` is the reply's own (false: it involves an excluded domain).
    """
    data = {
        "send_id": send["id"],
        "message_id": message_pk,
        "user_id": user_id,
        "from": sender,
        "module": send["module"],
        "record_id": send["record_id"],
        "shared": shared,
    }
    return NewEvent(org_id, EventType.EMAIL_REPLIED, data, at=at)


# -- sends ---------------------------------------------------------------------------


def send_fields(send: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every send event carries, from a ``sends`` row (``to_email`` or ``to``)."""
    return {
        "send_id": send["id"],
        "to": send.get("to_email", send.get("to")),
        "kind": send.get("kind"),
        "module": send.get("module"),
        "record_id": send.get("record_id"),
        "user_id": send.get("user_id"),
        "template_id": send.get("template_id"),
        "template_version": send.get("template_version"),
        "message_id": send.get("message_id"),
        "campaign_id": send.get("campaign_id"),
    }


def send_event(
    type: EventType, send: Mapping[str, Any], /, *, at: datetime | None = None, **extra: Any
) -> NewEvent:
    """What became of one send: the common send fields plus the type's own (``extra``).

    ``type`` and ``send`` are positional-only so that ``extra`` may carry a
    field named ``type`` (``email.bounced``: ``hard`` or ``soft``).

    Type-specific fields (see ``docs/events.md``): ``reply`` (sent, deferred,
    failed), ``attempts`` and ``next_attempt_at`` (deferred), ``code`` (failed),
    ``verdict``/``reason``/``link_index``/``url`` (opened, clicked),
    ``method`` (unsubscribed); bounces and complaints are built by
    :func:`bounce_event`.
    """
    if type not in SEND_TYPES:
        raise ValueError(f"{type} is not a send event")
    data = send_fields(send)
    for key in ("reply", "diagnostic"):
        if isinstance(extra.get(key), str):
            extra[key] = extra[key][:REPLY_LIMIT]
    data.update(extra)
    return NewEvent(send["org_id"], type, data, at=at)


def bounce_event(
    org_id: int,
    *,
    send: Mapping[str, Any] | None,
    email: str,
    kind: str,
    at: datetime | None = None,
    status: str = "",
    reply_code: str = "",
    reason: str = "",
    diagnostic: str = "",
    feedback_type: str = "",
    matched_by: str = "",
    extra: Mapping[str, Any] | None = None,
) -> NewEvent:
    """A recorded bounce: ``email.bounced`` (``kind`` hard or soft) or ``email.complained``.

    ``status`` is the RFC 3463 code (``5.1.1``), ``reply_code`` the SMTP one
    (``550``), ``reason`` our classification of it, ``matched_by`` how the
    bounce was tied to its send (``verp``, ``header``, ``message_id``,
    ``recipient``, ``smtp``).  An address the report names that is not the
    send's own gets no send fields (``send_id`` null, ``to`` the address).
    ``extra`` adds the caller's own fields (a refusal at SMTP time: ``stage``
    and ``reply``).
    """
    subject = send or {"id": None, "org_id": org_id, "to": email}
    fields: dict[str, Any] = {
        "email": email,
        "status": status,
        "reply_code": reply_code,
        "reason": reason,
        "diagnostic": diagnostic,
        "matched_by": matched_by,
    }
    if kind == "complaint":
        event_type = EventType.EMAIL_COMPLAINED
        fields["feedback_type"] = feedback_type
    else:
        event_type = EventType.EMAIL_BOUNCED
        fields["type"] = kind
    fields.update(extra or {})
    return send_event(event_type, subject, at=at, **fields)


# -- records -------------------------------------------------------------------------

#: Bookkeeping no consumer should key on: the normalised email mirrors ``email``.
NOT_REPORTED = frozenset({"id", "org_id", "email_norm", "created_at", "updated_at"})


def created_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a record was created with (``None`` values left out: nothing was set)."""
    return {k: v for k, v in values.items() if k not in NOT_REPORTED and v is not None}


def record_created(
    org_id: int,
    *,
    module: str,
    record_id: int,
    source: str,
    values: Mapping[str, Any],
    user_id: int | None = None,
    at: datetime | None = None,
) -> NewEvent:
    """``record.created`` with the fields the record was created with, for every writer.

    The API, CSV import, lead conversion and ingest all create records; the
    ``changed`` field is :func:`created_fields` of what they inserted whichever
    wrote it, so no writer leaks bookkeeping columns the others leave out.
    """
    return record_event(
        EventType.RECORD_CREATED,
        org_id,
        module=module,
        record_id=record_id,
        source=source,
        changed=created_fields(values),
        user_id=user_id,
        at=at,
    )


def record_event(
    type: EventType,
    org_id: int,
    *,
    module: str,
    record_id: int,
    source: str,
    changed: Mapping[str, Any] | None = None,
    user_id: int | None = None,
    at: datetime | None = None,
) -> NewEvent:
    """A record was created, updated or deleted.

    ``changed`` holds the fields that changed with their new values (for a
    create: the fields it was created with; for a delete: the last email, so a
    consumer that keyed on it can find its copy).  ``source`` says who did it:
    ``api``, ``dropbox``, ``imap``, ``import``, ``conversion``.
    """
    if type not in RECORD_CHANGES:
        raise ValueError(f"{type} is not a record change")
    data = {
        "module": module,
        "id": record_id,
        "source": source,
        "changed": _jsonable(changed or {}),
    }
    if user_id is not None:
        data["user_id"] = user_id
    return NewEvent(org_id, type, data, at=at)


def record_converted(
    org_id: int,
    *,
    lead_id: int,
    account_id: int,
    contact_id: int,
    deal_id: int | None,
    user_id: int | None = None,
    at: datetime | None = None,
) -> NewEvent:
    """A lead became an account, a contact and (optionally) a deal."""
    data = {
        "lead_id": lead_id,
        "account_id": account_id,
        "contact_id": contact_id,
        "deal_id": deal_id,
    }
    if user_id is not None:
        data["user_id"] = user_id
    return NewEvent(org_id, EventType.RECORD_CONVERTED, data, at=at)


# -- quota and suppressions ----------------------------------------------------------


def quota_event(
    type: EventType,
    org_id: int,
    *,
    kind: str,
    day: str,
    used: int,
    limit: int,
    resets_at: datetime,
    at: datetime | None = None,
) -> NewEvent:
    """An org crossed 80 % of (``quota.warning``) or used up (``quota.exhausted``) a quota."""
    if type not in (EventType.QUOTA_WARNING, EventType.QUOTA_EXHAUSTED):
        raise ValueError(f"{type} is not a quota event")
    data = {
        "kind": kind,
        "day": day,
        "used": used,
        "limit": limit,
        "resets_at": resets_at.isoformat(),
    }
    return NewEvent(org_id, type, data, at=at)


def suppression_lifted(
    org_id: int, *, email: str, reason: str, user_id: int | None, at: datetime | None = None
) -> NewEvent:
    """Someone removed an address from the org's suppression list."""
    data = {"email": email, "reason": reason, "user_id": user_id}
    return NewEvent(org_id, EventType.SUPPRESSION_LIFTED, data, at=at)


# -- the relay ------------------------------------------------------------------------


def relay_refused(
    org_id: int,
    *,
    stage: str,
    code: int | None,
    reply: str,
    send_ids: Sequence[int],
    action: str,
    at: datetime | None = None,
) -> NewEvent:
    """The relay refused *us* (our session, sender or message), not a recipient: an alert.

    ``stage`` is where (``session``: greeting, EHLO, AUTH; ``sender``: MAIL
    FROM; ``data``: after the message, without naming the recipient);
    ``action`` what became of the sends (``deferred`` or ``failed``).  Nobody
    is suppressed for it.
    """
    data = {
        "stage": stage,
        "code": code,
        "reply": reply[:REPLY_LIMIT],
        "send_ids": list(send_ids),
        "action": action,
    }
    return NewEvent(org_id, EventType.RELAY_REFUSED, data, at=at)


# -- Campaigns, syncs, webhooks -------------------------------------------------------


def campaign_sent(
    org_id: int,
    *,
    campaign_id: int,
    name: str,
    list_ids: Sequence[int],
    recipients: int,
    skipped: int,
    user_id: int | None,
    at: datetime | None = None,
) -> NewEvent:
    """Every message of a campaign has been handed to the send queue (composed, queued)."""
    data = {
        "campaign_id": campaign_id,
        "name": name[:SUBJECT_LIMIT],
        "list_ids": list(list_ids),
        "recipients": recipients,
        "skipped": skipped,
        "user_id": user_id,
    }
    return NewEvent(org_id, EventType.CAMPAIGN_SENT, data, at=at)


def sync_run(
    org_id: int,
    *,
    sync_id: int,
    run_id: int,
    kind: str,
    module: str,
    list_id: int,
    total: int,
    added: int,
    updated: int,
    removed: int,
    skipped: int,
    skipped_reasons: Mapping[str, int],
    at: datetime | None = None,
) -> NewEvent:
    """One run of a CRM → Campaigns sync finished (``full``, or a round of ``change``s)."""
    data = {
        "sync_id": sync_id,
        "run_id": run_id,
        "kind": kind,
        "module": module,
        "list_id": list_id,
        "total": total,
        "added": added,
        "updated": updated,
        "removed": removed,
        "skipped": skipped,
        "skipped_reasons": dict(skipped_reasons),
    }
    return NewEvent(org_id, EventType.SYNC_RUN, data, at=at)


def webhook_disabled(
    org_id: int,
    *,
    webhook_id: int,
    url: str,
    failing_since: datetime,
    last_error: str,
    pending: int,
    at: datetime | None = None,
) -> NewEvent:
    """An endpoint kept failing for longer than allowed and was disabled."""
    data = {
        "webhook_id": webhook_id,
        "url": url,
        "failing_since": failing_since.isoformat(),
        "last_error": last_error[:REPLY_LIMIT],
        "pending": pending,
    }
    return NewEvent(org_id, EventType.WEBHOOK_DISABLED, data, at=at)


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Field values as JSON can carry them (dates and decimals as text)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or isinstance(value, (str, int, float, bool, list, dict)):
            out[key] = value
        elif hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        else:
            out[key] = str(value)
    return out
