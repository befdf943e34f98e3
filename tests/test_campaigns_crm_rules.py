"""The pure Campaigns → CRM rules (sync.registration): precedence, verdicts, seed 000's order."""

from __future__ import annotations

import pytest

from gateway.http.record_campaigns import status_field_problem
from sync.registration import (
    Activity,
    Candidate,
    Keep,
    MemberStatus,
    NotRegistered,
    Person,
    RecipientStatus,
    Register,
    Skip,
    activity_of,
    decide_registration,
    member_status_for,
    missing_fields,
    register_target,
    status_after,
    weaker_members,
)

FULL = Person(first_name="太郎", last_name="山田", email="taro@client.example", company="山田商事")


def candidate(**kw) -> Candidate:
    values = {
        "activity": Activity.OPENED,
        "target": "leads",
        "registered": False,
        "reason": "no_activity",
        "list_configured": True,
        "existing": None,
        "person": FULL,
    }
    return Candidate(**{**values, **kw})


def test_status_is_the_strongest_activity_in_any_order():
    order = [
        Activity.SENT,
        Activity.OPENED,
        Activity.CLICKED,
        Activity.BOUNCED,
        Activity.UNSUBSCRIBED,
        Activity.COMPLAINED,
    ]
    for forwards in (order, list(reversed(order))):
        status = "queued"
        for activity in forwards:
            status = status_after(status, activity).value
        assert status == "complained"
    assert status_after("clicked", Activity.OPENED) == RecipientStatus.CLICKED
    assert status_after("sent", Activity.FAILED) == RecipientStatus.SENT
    assert status_after("queued", Activity.FAILED) == RecipientStatus.FAILED
    assert status_after("some-future-status", Activity.SENT) == RecipientStatus.SENT


@pytest.mark.parametrize("verdict", ["machine", None, "HUMAN", ""])
def test_only_human_opens_and_clicks_count(verdict):
    data = {} if verdict is None else {"verdict": verdict}
    assert activity_of("email.opened", data) is None
    assert activity_of("email.clicked", data) is None
    assert activity_of("email.opened", {"verdict": "human"}) == Activity.OPENED
    assert activity_of("email.clicked", {"verdict": "human"}) == Activity.CLICKED
    assert activity_of("email.deferred", {}) is None
    assert activity_of("email.bounced", {"type": "soft"}) == Activity.BOUNCED


def test_member_status_moves_on_unsubscribe_complaint_and_hard_bounce_only():
    assert member_status_for(Activity.BOUNCED, "hard") == MemberStatus.BOUNCED
    assert member_status_for(Activity.BOUNCED, "soft") is None
    assert member_status_for(Activity.UNSUBSCRIBED, None) == MemberStatus.UNSUBSCRIBED
    assert member_status_for(Activity.COMPLAINED, None) == MemberStatus.COMPLAINED
    assert member_status_for(Activity.CLICKED, None) is None
    assert weaker_members(MemberStatus.BOUNCED) == ["subscribed"]
    assert "complained" not in weaker_members(MemberStatus.UNSUBSCRIBED)


def test_required_fields_per_module():
    assert missing_fields("leads", FULL) == []
    no_company = Person(first_name="太郎", last_name="山田", email="t@x.example", company=" ")
    assert missing_fields("leads", no_company) == []
    assert missing_fields("contacts", no_company) == ["company"]
    nameless = Person(first_name="", last_name="", email="", company="")
    assert missing_fields("leads", nameless) == ["last_name", "first_name", "email"]


def test_registration_rules_apply_in_seed_000_order():
    assert decide_registration(candidate()) == Register("leads")
    assert decide_registration(candidate(target="contacts")) == Register("contacts")
    # Each rule wins over the ones after it.
    everything_wrong = candidate(
        target=None,
        list_configured=False,
        existing=("leads", 3),
        person=Person("", "", "", ""),
    )
    assert decide_registration(everything_wrong) == Skip(NotRegistered.NOT_REQUESTED)
    assert decide_registration(
        candidate(list_configured=False, existing=("leads", 3), person=Person("", "", "", ""))
    ) == Skip(NotRegistered.LIST_NOT_CONFIGURED)
    assert decide_registration(
        candidate(existing=("contacts", 4), person=Person("", "", "", ""))
    ) == Skip(NotRegistered.ALREADY_IN_CRM, ("contacts", 4))
    assert decide_registration(candidate(person=Person("", "山田", "t@x.example", ""))) == Skip(
        NotRegistered.MISSING_FIELDS
    )


def test_registered_recipients_and_non_registering_activities_keep_their_state():
    assert decide_registration(candidate(registered=True)) == Keep()
    assert decide_registration(candidate(activity=Activity.SENT)) == Keep()
    assert decide_registration(candidate(activity=Activity.UNSUBSCRIBED)) == Keep()
    # A better reason already stored is not replaced by "not requested".
    assert decide_registration(candidate(target=None, reason="missing_fields")) == Keep()
    assert decide_registration(candidate(target=None, reason=None)) == Skip(
        NotRegistered.NOT_REQUESTED
    )


def test_register_target_reads_only_known_modules():
    assert register_target({"opened": "leads"}, Activity.OPENED) == "leads"
    assert register_target({"opened": "leads"}, Activity.CLICKED) is None
    assert register_target({"clicked": "deals"}, Activity.CLICKED) is None
    assert register_target(None, Activity.OPENED) is None
    assert register_target(["leads"], Activity.OPENED) is None


def test_status_field_choices():
    assert status_field_problem({"leads": "status", "contacts": "title"}) is None
    assert status_field_problem({"leads": None}) is None
    assert status_field_problem({}) is None
    assert status_field_problem({"leads": "email"})
    assert status_field_problem({"contacts": "status"})
    assert status_field_problem({"accounts": "name"})
    assert status_field_problem("title")
    assert status_field_problem({"leads": ["status"]})
