"""The pure guard steps of sending, one case per branch, without sockets or a database.

``check_recipients``, ``render``, ``track_links`` and ``compose_and_sign``
decide from the :class:`Submission` alone; the steps that read or write the
database are covered end to end (test_templates_api, test_quota, test_sending_*).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from typing import Any

import pytest

from gateway.org.plans import PLANS, daily_limit, max_mass_addon, shared_address_limit
from gateway.sending import steps
from gateway.sending.steps import (
    Content,
    Flow,
    Outgoing,
    SendRequest,
    Signer,
    Skipped,
    SkipReason,
    Submission,
    check_recipients,
    compose_and_sign,
    render,
    skip_reason,
    track_links,
)
from gateway.sending.submit import accepted
from tracking.tokens import TokenSigner, keys_from_secrets

NOW = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
SIGNER = Signer(
    mail_domain="mailgate.test",
    public_url="https://mg.example.jp",
    tracker=TokenSigner(keys_from_secrets(["steps-test"])),
)
ORG = {"id": 1, "name": "Acme", "locale": "ja", "timezone": "Asia/Tokyo", "plan": "standard"}
USER = {"id": 7, "name": "山田 太郎", "email": "taro@acme.example.jp"}


def lead(rid: int, email: str | None, **kw: Any) -> dict[str, Any]:
    return {
        "id": rid,
        "email": email,
        "email_norm": email.lower() if email else None,
        "first_name": "花子",
        "last_name": "佐藤",
        **kw,
    }


def submission(
    to: list[tuple[str, int]],
    records: dict[tuple[str, int], dict[str, Any]],
    *,
    content: Content | None = None,
    suppressed: dict[str, str] | None = None,
    kind: str = "individual",
) -> Submission:
    req = SendRequest(
        org=ORG,
        user=USER,
        kind=kind,
        to=to,
        content=content or Content(subject="こんにちは {{ lead.last_name }}", html="<p>hi</p>"),
        from_email=USER["email"],
        from_name=USER["name"],
    )
    return Submission(
        request=req, signer=SIGNER, now=NOW, records=records, suppressed=suppressed or {}
    )


# -- check recipients ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "record", "suppressed", "content_module", "seen", "reason"),
    [
        ("deals", lead(1, "a@x.jp"), {}, None, set(), SkipReason.UNSUPPORTED_MODULE),
        ("leads", None, {}, None, set(), SkipReason.NOT_FOUND),
        ("leads", lead(1, None), {}, None, set(), SkipReason.NO_EMAIL),
        ("leads", lead(1, "a@x.jp"), {"a@x.jp": "bounce"}, None, set(), SkipReason.SUPPRESSED),
        ("leads", lead(1, "a@x.jp"), {}, "contacts", set(), SkipReason.MODULE_MISMATCH),
        ("leads", lead(1, "山田@x.jp"), {}, None, set(), SkipReason.ADDRESS_NOT_DELIVERABLE),
        ("leads", lead(1, "a@x.jp"), {}, None, {"a@x.jp"}, SkipReason.DUPLICATE),
        ("leads", lead(1, "a@x.jp"), {}, "leads", set(), None),
        ("contacts", lead(1, "a@例え.jp"), {}, None, set(), None),  # IDN domains are fine
        ("leads", lead(1, "a@-b.example"), {}, None, set(), SkipReason.INVALID_ADDRESS),
        ("leads", lead(1, "a..b@x.jp"), {}, None, set(), SkipReason.INVALID_ADDRESS),
        (
            "leads",
            lead(1, "a@x.jp", last_name="山田\r\nBcc: x@evil.example"),
            {},
            None,
            set(),
            SkipReason.INVALID_NAME,
        ),
    ],
)
def test_skip_reason_per_branch(module, record, suppressed, content_module, seen, reason):
    got = skip_reason(
        module, record, suppressed=suppressed, content_module=content_module, seen=seen
    )
    assert got is reason


def test_suppression_outranks_a_module_mismatch():
    """The first reason that applies wins: a suppressed address is reported as suppressed."""
    got = skip_reason(
        "leads",
        lead(1, "a@x.jp"),
        suppressed={"a@x.jp": "complaint"},
        content_module="contacts",
        seen=set(),
    )
    assert got is SkipReason.SUPPRESSED


def test_check_recipients_keeps_order_skips_duplicates_and_names_the_suppression():
    records = {
        ("leads", 1): lead(1, "a@x.jp"),
        ("leads", 2): lead(2, "A@X.jp"),  # the same address, another record
        ("leads", 3): lead(3, "s@x.jp"),
        ("contacts", 4): lead(4, "c@x.jp"),
    }
    to = [("leads", 1), ("leads", 2), ("leads", 3), ("contacts", 4), ("leads", 9)]
    sub = submission(to, records, suppressed={"s@x.jp": "unsubscribe"})
    assert check_recipients(None, sub) is Flow.CONTINUE
    assert [(o.module, o.record_id) for o in sub.outgoing] == [("leads", 1), ("contacts", 4)]
    assert [s.as_json() for s in sub.skipped] == [
        {"to": {"module": "leads", "id": 2, "email": "A@X.jp"}, "reason": "duplicate"},
        {"to": {"module": "leads", "id": 3, "email": "s@x.jp"}, "reason": "suppressed:unsubscribe"},
        {"to": {"module": "leads", "id": 9}, "reason": "not_found"},
    ]


def test_check_recipients_is_done_when_nobody_is_left():
    sub = submission([("leads", 1)], {("leads", 1): lead(1, None)})
    assert check_recipients(None, sub) is Flow.DONE
    assert accepted(sub).sends == []
    assert accepted(sub).skipped == [{"to": {"module": "leads", "id": 1}, "reason": "no_email"}]


def test_skip_reasons_are_the_strings_the_api_has_always_shown():
    assert {r.value for r in SkipReason} == {
        "unsupported_module",
        "not_found",
        "no_email",
        "suppressed",
        "module_mismatch",
        "address_not_deliverable",
        "duplicate",
        # issue 10: a record mail cannot carry is skipped, not a refusal of the whole send
        "invalid_address",
        "invalid_name",
    }
    assert Skipped("leads", 1, SkipReason.SUPPRESSED, detail="bounce").as_json()["reason"] == (
        "suppressed:bounce"
    )


# -- render, track links, compose and sign -------------------------------------------


def prepared(kind: str = "individual", html: str = "<p>{{ lead.last_name }} 様</p>") -> Submission:
    content = Content(
        subject="{{ lead.last_name }} 様へ",
        html=html + '<a href="https://shop.example.jp/sale">sale</a>',
    )
    record = lead(1, "hanako@customer.example.jp")
    sub = submission([("leads", 1)], {("leads", 1): record}, content=content, kind=kind)
    out = Outgoing("leads", 1, record)
    out.row = {"id": 42, "message_id": "abc@mailgate.test", "verp_token": "tok", "links": []}
    sub.outgoing.append(out)
    return sub


def test_render_merges_fields_and_a_per_send_unsubscribe_link():
    sub = prepared()
    assert render(None, sub) is Flow.CONTINUE
    out = sub.outgoing[0]
    assert out.rendered.subject == "佐藤 様へ"
    assert "佐藤 様" in out.rendered.html
    assert out.row["subject"] == "佐藤 様へ"
    assert out.to_name == "佐藤 花子"  # ja: 姓 名
    mailto, https = out.unsubscribe
    assert https.startswith("https://mg.example.jp/u/")
    assert mailto.startswith("mailto:") and "mailgate.test" in mailto


def test_track_links_rewrites_only_the_recipients_copy():
    sub = prepared()
    render(None, sub)
    assert track_links(None, sub) is Flow.CONTINUE
    out = sub.outgoing[0]
    assert "https://shop.example.jp/sale" in out.rendered.html  # the filed copy stays clean
    assert "https://mg.example.jp/t/c/" in out.sent_html
    assert out.links[0] == "https://shop.example.jp/sale"
    assert out.row["links"] == out.links


def test_compose_and_sign_builds_mail_with_list_unsubscribe():
    sub = prepared(kind="mass")
    for step in (render, track_links, compose_and_sign):
        step(None, sub)
    msg = message_from_bytes(sub.outgoing[0].raw, policy=policy.default)
    assert msg["Message-ID"] == "<abc@mailgate.test>"
    assert msg["X-Mailgate-Send"] == "42"
    assert "https://mg.example.jp/u/" in msg["List-Unsubscribe"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"  # mass mail only
    assert msg["Subject"] == "佐藤 様へ"


def test_individual_mail_has_no_one_click_header():
    sub = prepared()
    for step in (render, track_links, compose_and_sign):
        step(None, sub)
    msg = message_from_bytes(sub.outgoing[0].raw, policy=policy.default)
    assert msg["List-Unsubscribe-Post"] is None


def test_steps_run_in_the_declared_order():
    assert [s.__name__ for s in steps.STEPS] == [
        "look_up_recipients",
        "check_recipients",
        "reserve_quota",
        "create_sends",
        "render",
        "track_links",
        "compose_and_sign",
        "file_copies",
        "emit",
    ]


# -- the plan catalogue --------------------------------------------------------------


def test_plan_catalogue_matches_the_product_rules():
    assert list(PLANS) == ["free", "standard", "professional", "enterprise"]
    assert daily_limit("individual", "free", 9) == 200
    assert daily_limit("mass", "standard", 1, mass_addon=5000) == 2250
    assert max_mass_addon("professional") == 1750
    assert shared_address_limit(3) == 30
