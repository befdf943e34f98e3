"""The sync's pure rules (sync/mirror.py): one record, one list, one decision."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from sync.mirror import (
    Decision,
    Member,
    Outcome,
    Rules,
    SkipReason,
    Source,
    Tally,
    crm_field_problem,
    decide,
    matches,
    resolved_map,
)

LEADS = resolved_map("leads", {})


def rules(**kw: Any) -> Rules:
    return Rules(sync_id=7, org_id=1, module="leads", list_id=3, field_map=LEADS, **kw)


def source(**record: Any) -> Source:
    base = {"id": 11, "email": "taro@kokyaku.example.jp", "first_name": "太郎", "last_name": "山田"}
    return Source("leads", 11, {"company": "", **base, **record})


def member(**kw: Any) -> Member:
    base = {"id": 5, "email": "taro@kokyaku.example.jp", "email_norm": "taro@kokyaku.example.jp"}
    return Member(**{**base, **kw})


def test_checks_come_in_order_invalid_before_role_before_do_not_mail_before_converted():
    now = datetime(2026, 11, 26, tzinfo=UTC)
    assert decide(rules(), source(email="x@@y", do_not_mail=True), None, None).reason == (
        SkipReason.INVALID_EMAIL
    )
    assert decide(
        rules(), source(email="info@x.example.jp", do_not_mail=True), None, None
    ).reason == (SkipReason.ROLE_ADDRESS)
    assert decide(rules(), source(do_not_mail=True, converted_at=now), None, None).reason == (
        SkipReason.DO_NOT_MAIL
    )
    assert decide(rules(), source(converted_at=now), None, None).reason == SkipReason.CONVERTED
    assert decide(rules(exclude_converted=False), source(converted_at=now), None, None).outcome == (
        Outcome.ADDED
    )


def test_a_new_member_gets_the_subscription_consent_and_link():
    got = decide(rules(consent="pending", legal_basis="consent"), source(), None, None)
    assert got.outcome == Outcome.ADDED
    assert {k: got.values[k] for k in ("subscription", "consent", "legal_basis", "source")} == {
        "subscription": "marketing",
        "consent": "pending",
        "legal_basis": "consent",
        "source": "sync",
    }
    assert (got.values["module"], got.values["record_id"], got.values["sync_id"]) == (
        "leads",
        11,
        7,
    )


def test_consent_none_leaves_an_existing_members_consent_alone():
    linked = member(
        first_name="太郎",
        last_name="山田",
        consent="confirmed",
        module="leads",
        record_id=11,
        sync_id=7,
    )
    assert decide(rules(), source(), linked, None) == Decision(
        Outcome.UNCHANGED, email="taro@kokyaku.example.jp", member_id=5
    )
    assert decide(rules(consent="pending"), source(), linked, None).values == {"consent": "pending"}


@pytest.mark.parametrize(("update_empty", "company"), [(False, "旧商事"), (True, "")])
def test_an_empty_crm_value_overwrites_only_with_update_empty_values(update_empty, company):
    existing = member(
        company="旧商事",
        first_name="太郎",
        last_name="山田",
        module="leads",
        record_id=11,
        sync_id=7,
    )
    got = decide(rules(update_empty=update_empty), source(company=""), existing, None)
    assert got.values.get("company", "旧商事") == company


def test_a_member_linked_to_another_record_or_removed_is_a_duplicate():
    other = member(module="leads", record_id=99)
    assert decide(rules(), source(), other, None).reason == SkipReason.DUPLICATE
    assert decide(rules(), source(), member(removed=True), None).reason == SkipReason.DUPLICATE


def test_a_new_address_moves_the_linked_member_or_takes_over_a_listed_one():
    linked = member(
        id=5, email="old@x.example.jp", email_norm="old@x.example.jp", module="leads", record_id=11
    )
    moved = decide(rules(), source(), None, linked)
    assert (moved.member_id, moved.values["email_norm"]) == (5, "taro@kokyaku.example.jp")
    listed = member(id=6)
    taken = decide(rules(), source(), listed, linked)
    assert (taken.member_id, taken.detach, taken.values["record_id"]) == (6, 5, 11)


def test_do_not_mail_remove_removes_the_records_member_and_counts_it():
    linked = member(module="leads", record_id=11)
    got = decide(rules(do_not_mail="remove"), source(do_not_mail=True), linked, None)
    assert (got.outcome, got.reason, got.remove) == (Outcome.SKIPPED, SkipReason.DO_NOT_MAIL, (5,))
    tally = Tally()
    tally.count(source(), got)
    assert (tally.total, tally.removed, tally.skipped, tally.skipped_reasons) == (
        1,
        1,
        1,
        {"do_not_mail": 1},
    )


def test_a_deleted_record_removes_its_member_or_is_ignored():
    gone = Source("leads", 11, None)
    linked = member(module="leads", record_id=11)
    assert decide(rules(), gone, None, linked).remove == (5,)
    assert decide(rules(), gone, None, None).outcome == Outcome.IGNORED


def test_the_filter_compares_text_and_numbers_alike():
    assert matches({"status": "qualified"}, {"status": "qualified"})
    assert not matches({"status": "qualified"}, {"status": None})
    assert matches({"amount": "100"}, {"amount": Decimal("100.00")})
    assert matches(None, {})


def test_mappable_fields_per_tab():
    assert crm_field_problem("contacts", "deal.stage") is None
    assert crm_field_problem("contacts", "account.name") is None
    assert crm_field_problem("leads", "account.name")
    assert crm_field_problem("leads", "owner_id")
    assert crm_field_problem("contacts", "deal.secret")
    assert resolved_map("contacts", {"company": None}) == {
        "first_name": "first_name",
        "last_name": "last_name",
    }
