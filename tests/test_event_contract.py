"""The event contract: docs/events.md and the payload builders say the same thing.

Consumers (the syncs, webhooks, API readers) are written against the doc, so
every ``EventType`` must be documented there, and every field a builder in
``storage.payloads`` produces must be listed under its type.  The builders
themselves are pure and are tested here too, without a database.
"""

from __future__ import annotations

import inspect
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from storage import payloads
from storage.events import EventType, NewEvent

DOC = Path(__file__).resolve().parents[1] / "docs" / "events.md"
AT = datetime(2026, 11, 26, 4, 5, 6, tzinfo=UTC)

SEND = {
    "id": 41,
    "org_id": 7,
    "to_email": "taro@client.example.jp",
    "kind": "individual",
    "module": "leads",
    "record_id": 12,
    "user_id": 3,
    "template_id": 5,
    "template_version": 2,
    "message_id": "<abc@mailgate.test>",
}


def sections() -> dict[str, str]:
    """Heading text → the text under it, up to the next heading of any level."""
    out: dict[str, str] = {}
    heading = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            out[heading] = ""
        elif heading is not None:
            out[heading] += line + "\n"
    return out


def table_fields(text: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.M))


def documented() -> dict[str, set[str]]:
    """Event type → the data fields docs/events.md lists for it (send fields included)."""
    found = sections()
    send_fields = table_fields(found["Sends"])
    out = {}
    for heading, text in found.items():
        m = re.fullmatch(r"`([a-z]+\.[a-z]+)`", heading)
        if m:
            extra = send_fields if m.group(1) in payloads.SEND_TYPES else set()
            out[m.group(1)] = table_fields(text) | extra
    return out


def samples() -> dict[str, list[NewEvent]]:
    """Builder name → events it builds, with every optional field given."""
    return {
        "email_filed": [
            payloads.email_filed(
                7,
                message_pk=9,
                header_message_id="<m@x>",
                user_id=3,
                direction="incoming",
                source="imap",
                subject="件名",
                records=[("leads", 12)],
                send_id=41,
            )
        ],
        "email_received": [payloads.email_received(7, message_pk=9, user_id=3, sender="a@b.jp")],
        "email_replied": [
            payloads.email_replied(7, send=SEND, message_pk=9, user_id=3, sender="a@b.jp")
        ],
        "send_event": [payloads.send_event(t, SEND) for t in payloads.SEND_TYPES]
        + [payloads.send_event(EventType.EMAIL_UNSUBSCRIBED, SEND, method="form")],
        "bounce_event": [
            payloads.bounce_event(7, send=SEND, email="taro@client.example.jp", kind=kind)
            for kind in ("hard", "soft", "complaint")
        ]
        + [
            payloads.bounce_event(
                7,
                send=SEND,
                email="taro@client.example.jp",
                kind="hard",
                extra={"stage": "smtp", "reply": "550 5.1.1 no"},
            )
        ],
        "record_event": [
            payloads.record_event(
                t, 7, module="leads", record_id=12, source="api", changed={"x": 1}, user_id=3
            )
            for t in payloads.RECORD_CHANGES
        ],
        "record_created": [
            payloads.record_created(
                7,
                module="leads",
                record_id=12,
                source="dropbox",
                values={"email": "a@b.jp", "email_norm": "a@b.jp", "phone": None},
                user_id=3,
            )
        ],
        "record_converted": [
            payloads.record_converted(
                7, lead_id=1, account_id=2, contact_id=3, deal_id=4, user_id=3
            )
        ],
        "quota_event": [
            payloads.quota_event(
                t, 7, kind="mass", day="2026-11-26", used=200, limit=250, resets_at=AT
            )
            for t in (EventType.QUOTA_WARNING, EventType.QUOTA_EXHAUSTED)
        ],
        "suppression_lifted": [
            payloads.suppression_lifted(7, email="a@b.jp", reason="manual", user_id=3)
        ],
        "campaign_sent": [
            payloads.campaign_sent(
                7,
                campaign_id=5,
                name="秋のご案内",
                list_ids=[2],
                recipients=500,
                skipped=3,
                user_id=3,
            )
        ],
        "sync_run": [
            payloads.sync_run(
                7,
                sync_id=4,
                run_id=9,
                kind="full",
                module="leads",
                list_id=2,
                total=10,
                added=7,
                updated=1,
                removed=0,
                skipped=2,
                skipped_reasons={"role_address": 2},
            )
        ],
        "webhook_disabled": [
            payloads.webhook_disabled(
                7,
                webhook_id=3,
                url="https://crm.example.jp/hook",
                failing_since=AT,
                last_error="HTTP 500",
                pending=12,
            )
        ],
        "relay_refused": [
            payloads.relay_refused(
                7,
                stage="session",
                code=530,
                reply="530 5.7.0 auth",
                send_ids=[41],
                action="deferred",
            )
        ],
    }


# -- docs and code in step -------------------------------------------------------------


def test_every_event_type_is_documented_and_nothing_else_is():
    assert set(documented()) == {t.value for t in EventType}


def test_every_builder_is_checked_against_the_doc():
    builders = {
        name
        for name, fn in inspect.getmembers(payloads, inspect.isfunction)
        if fn.__module__ == payloads.__name__ and not name.startswith("_")
    }
    assert builders - {"send_fields", "created_fields"} == set(samples())  # field helpers


@pytest.mark.parametrize("builder", sorted(samples()))
def test_every_field_a_builder_writes_is_documented_for_its_type(builder):
    doc = documented()
    for event in samples()[builder]:
        missing = set(event.data) - doc[event.type]
        assert not missing, f"{event.type}: {sorted(missing)} not in docs/events.md"


def test_the_documented_send_fields_are_exactly_what_every_send_event_carries():
    assert table_fields(sections()["Sends"]) == set(payloads.send_fields(SEND))


def test_no_documented_field_is_one_no_builder_writes():
    """Stale docs are caught too (send events' own fields come from their writers)."""
    written: dict[str, set[str]] = {}
    for events in samples().values():
        for event in events:
            written.setdefault(event.type, set()).update(event.data)
    for type_, fields in documented().items():
        if type_ in written and type_ not in payloads.SEND_TYPES:
            assert fields == written[type_], type_


# -- the builders (pure) --------------------------------------------------------------


def test_send_events_carry_the_send_and_their_own_fields():
    event = payloads.send_event(EventType.EMAIL_DEFERRED, SEND, at=AT, reply="421 busy", attempts=2)
    assert event.org_id == 7 and event.type == EventType.EMAIL_DEFERRED and event.at == AT
    assert event.data["send_id"] == 41 and event.data["to"] == "taro@client.example.jp"
    assert event.data["template_version"] == 2
    assert (event.data["reply"], event.data["attempts"]) == ("421 busy", 2)


def test_relay_replies_and_diagnostics_are_cut_and_subjects_too():
    long = "x" * 2000
    sent = payloads.send_event(EventType.EMAIL_SENT, SEND, reply=long)
    bounced = payloads.bounce_event(7, send=SEND, email="a@b.jp", kind="soft", diagnostic=long)
    filed = payloads.email_filed(
        7,
        message_pk=1,
        header_message_id=None,
        user_id=None,
        direction="outgoing",
        source="dropbox",
        subject=long,
        records=[],
    )
    assert len(sent.data["reply"]) == payloads.REPLY_LIMIT
    assert len(bounced.data["diagnostic"]) == payloads.REPLY_LIMIT
    assert len(filed.data["subject"]) == payloads.SUBJECT_LIMIT
    assert "send_id" not in filed.data  # only our own sends' copies carry it


def test_a_bounce_says_hard_or_soft_and_a_complaint_its_feedback_type():
    hard = payloads.bounce_event(
        7, send=SEND, email="taro@client.example.jp", kind="hard", status="5.1.1", at=AT
    )
    complaint = payloads.bounce_event(
        7, send=SEND, email="taro@client.example.jp", kind="complaint", feedback_type="abuse"
    )
    assert (hard.type, hard.data["type"], hard.data["status"], hard.at) == (
        EventType.EMAIL_BOUNCED,
        "hard",
        "5.1.1",
        AT,
    )
    assert complaint.type == EventType.EMAIL_COMPLAINED
    assert complaint.data["feedback_type"] == "abuse" and "type" not in complaint.data


def test_a_bounce_for_an_address_the_send_was_not_for_has_no_send():
    event = payloads.bounce_event(7, send=None, email="other@client.example.jp", kind="hard")
    assert event.org_id == 7
    assert event.data["send_id"] is None and event.data["to"] == "other@client.example.jp"
    assert event.data["email"] == "other@client.example.jp"


def test_builders_refuse_a_type_of_another_subject():
    with pytest.raises(ValueError):
        payloads.send_event(EventType.RECORD_CREATED, SEND)
    with pytest.raises(ValueError):
        payloads.record_event(EventType.EMAIL_SENT, 7, module="leads", record_id=1, source="api")
    with pytest.raises(ValueError):
        payloads.quota_event(
            EventType.EMAIL_SENT, 7, kind="mass", day="d", used=1, limit=2, resets_at=AT
        )


def test_record_changes_carry_json_values_and_the_user_only_when_there_is_one():
    changed: dict[str, Any] = {"amount": Decimal("1200.50"), "close_on": date(2026, 12, 1)}
    event = payloads.record_event(
        EventType.RECORD_UPDATED, 7, module="deals", record_id=4, source="api", changed=changed
    )
    assert event.data == {
        "module": "deals",
        "id": 4,
        "source": "api",
        "changed": {"amount": "1200.50", "close_on": "2026-12-01"},
    }


def test_filed_mail_lists_its_records_and_quota_events_their_reset_time():
    filed = payloads.email_filed(
        7,
        message_pk=9,
        header_message_id="<m@x>",
        user_id=3,
        direction="outgoing",
        source="dropbox",
        subject="見積",
        records=[("leads", 1), ("contacts", 2)],
    )
    quota = payloads.quota_event(
        EventType.QUOTA_EXHAUSTED, 7, kind="individual", day="2026-11-26", used=50, limit=50,
        resets_at=AT,
    )  # fmt: skip
    assert filed.data["records"] == [{"module": "leads", "id": 1}, {"module": "contacts", "id": 2}]
    assert quota.data["resets_at"] == "2026-11-26T04:05:06+00:00"
