"""Choosing a campaign's recipients (pure): dedupe order, link, and which skip reason wins."""

from __future__ import annotations

from typing import Any

from gateway.campaigns.audience import choose, member_skip


def member(email: str, list_id: int = 1, **kw: Any) -> dict[str, Any]:
    row = {
        "id": hash((email, list_id)) & 0xFFFF,
        "list_id": list_id,
        "email": email,
        "email_norm": email.lower(),
        "first_name": "",
        "last_name": "",
        "company": "",
        "status": "subscribed",
        "subscription": "marketing",
        "consent": "none",
        "module": None,
        "record_id": None,
    }
    return {**row, **kw}


def test_an_address_on_two_lists_goes_once_through_the_first_list_even_if_skipped_there():
    got = choose(
        [
            member("a@example.com", 1, status="unsubscribed"),
            member("b@example.com", 1),
            member("A@example.com", 2),
            member("b@example.com", 2),
        ],
        suppressed={},
        crm={},
        do_not_mail=set(),
    )
    assert [(c.member["email"], c.member["list_id"]) for c in got.chosen] == [("b@example.com", 1)]
    assert got.skipped == [{"email": "a@example.com", "reason": "unsubscribed"}]


def test_a_member_is_linked_to_its_own_record_before_one_found_by_address():
    crm = {"c@example.com": ("leads", 7, False), "d@example.com": ("contacts", 9, False)}
    got = choose(
        [member("c@example.com", module="contacts", record_id=3), member("d@example.com")],
        suppressed={},
        crm=crm,
        do_not_mail=set(),
    )
    assert [(c.module, c.record_id) for c in got.chosen] == [("contacts", 3), ("contacts", 9)]


def test_the_members_own_status_is_reported_before_a_suppression_of_the_same_address():
    m = member("e@example.com", status="bounced", consent="pending")
    reason = member_skip(m, None, suppressed={"e@example.com": "hard_bounce"}, do_not_mail=set())
    assert reason == "bounced"
    m = member("e@example.com", subscription="non_marketing", consent="pending")
    assert member_skip(m, None, suppressed={}, do_not_mail=set()) == "non_marketing"


def test_do_not_mail_applies_only_through_the_linked_record():
    m = member("f@example.com")
    assert member_skip(m, ("leads", 1), suppressed={}, do_not_mail={("leads", 1)}) == "do_not_mail"
    assert member_skip(m, ("leads", 2), suppressed={}, do_not_mail={("leads", 1)}) is None
