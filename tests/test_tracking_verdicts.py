"""Verdicts: reports count people, not the machines that fetch mail on their behalf."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tracking.verdicts import Hit, HitKind, Verdict, VerdictRules, verdict

DELIVERED = datetime(2026, 11, 23, 9, 0, 0, tzinfo=UTC)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
IPHONE_MAIL = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
HOME_IP = "203.0.113.7"


def at(seconds: float) -> datetime:
    return DELIVERED + timedelta(seconds=seconds)


def click(seconds: float, link: int, ua: str = CHROME, ip: str = HOME_IP, **kw) -> Hit:
    return Hit(HitKind.CLICK, at(seconds), ua, ip, link, **kw)


def open_(seconds: float, ua: str = CHROME, ip: str = HOME_IP) -> Hit:
    return Hit(HitKind.OPEN, at(seconds), ua, ip)


def judge(hit: Hit, recent: list[Hit] | None = None, delivered=DELIVERED) -> Verdict:
    return verdict(hit, delivered_at=delivered, recent_hits=recent or [])


def test_a_chrome_click_five_minutes_after_delivery_is_a_person():
    v = judge(click(300, 0), [open_(240)])
    assert v == Verdict("human", "no_machine_signal") and v.is_human


def test_a_scanner_following_three_links_within_a_second_of_delivery_is_a_machine():
    # Browser-like agent and an ordinary address: only timing gives it away.
    hits = [click(0.3, 0), click(0.6, 1), click(0.9, 2)]
    for hit in hits:
        assert judge(hit, hits).kind == "machine"


def test_a_burst_late_after_delivery_is_still_a_machine_for_every_hit_of_it():
    hits = [click(3600.0, 0), click(3600.5, 1), click(3601.2, 2), click(3601.4, 3)]
    for hit in hits:
        assert judge(hit, hits + [open_(3500)]) == Verdict("machine", "burst")


def test_a_person_clicking_two_links_and_later_a_third_is_not_a_burst():
    hits = [open_(500), click(600, 0), click(601, 1), click(900, 2)]
    for hit in hits[1:]:
        assert judge(hit, hits).is_human


def test_the_same_link_clicked_repeatedly_is_not_a_burst():
    hits = [open_(500), click(600, 0), click(600.5, 0), click(601, 0), click(601.2, 0)]
    assert all(judge(h, hits).is_human for h in hits[1:])


def test_a_click_on_the_honeypot_is_a_machine_whatever_else_it_looks_like():
    assert judge(click(3600, 9, honeypot=True), [open_(3000)]) == Verdict("machine", "honeypot")


def test_an_apple_mpp_open_is_a_machine():
    hit = open_(45, ua="Mozilla/5.0", ip="17.58.101.4")
    assert judge(hit) == Verdict("machine", "apple_mpp")


def test_an_mpp_open_from_an_unlisted_address_soon_after_delivery_is_still_mpp():
    assert judge(open_(600, ua="Mozilla/5.0", ip="104.28.0.1")) == Verdict("machine", "apple_mpp")


def test_a_bare_mozilla_agent_late_and_outside_apple_is_no_mail_client():
    assert judge(open_(86400, ua="Mozilla/5.0", ip=HOME_IP)) == Verdict("machine", "scanner_ua")


def test_apple_mail_with_mpp_off_on_apples_network_is_a_person():
    # An Apple employee reading mail on the corporate network: full agent.
    assert judge(open_(600, ua=IPHONE_MAIL, ip="17.1.2.3")).is_human


def test_a_gmail_proxy_open_counts_as_a_person_opening_in_gmail():
    assert judge(open_(1800, ua=GMAIL_PROXY, ip="66.249.84.1")) == Verdict("human", "gmail_proxy")


def test_a_gmail_proxy_fetch_right_after_delivery_is_a_prefetch():
    assert judge(open_(2, ua=GMAIL_PROXY)) == Verdict("machine", "gmail_proxy")


def test_the_gmail_image_proxy_fetching_a_link_is_a_scanner():
    assert judge(click(1800, 0, ua=GMAIL_PROXY), [open_(1700)]) == Verdict("machine", "scanner_ua")


@pytest.mark.parametrize(
    "ua",
    [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534+ (KHTML, like Gecko) BingPreview/1.0b",
        "python-requests/2.32.3",
        "curl/8.5.0",
        "Go-http-client/1.1",
        "Barracuda Sentinel (EE)",
        "Mozilla/5.0 (compatible; Proofpoint URL Defense)",
        "Mimecast-URL-Protect",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Mozilla/5.0 (X11; Linux x86_64) Trend Micro Web Reputation",
    ],
)
def test_scanner_and_library_user_agents_are_machines(ua):
    assert judge(click(3600, 0, ua=ua), [open_(3500)]) == Verdict("machine", "scanner_ua")


@pytest.mark.parametrize(
    "ua",
    [
        CHROME,
        IPHONE_MAIL,
        "Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:133.0) Gecko/20100101 Thunderbird/133.0",
    ],
)
def test_ordinary_browsers_and_mail_clients_are_people(ua):
    assert judge(click(3600, 0, ua=ua), [open_(3500, ua=ua)]).is_human
    assert judge(open_(3500, ua=ua)).is_human


def test_a_click_from_a_security_gateway_network_is_a_machine():
    v = judge(click(3600, 0, ip="40.107.12.34"), [open_(3500)])
    assert v == Verdict("machine", "scanner_network")
    v = judge(click(3600, 0, ip="::ffff:40.107.12.34"), [open_(3500)])
    assert v == Verdict("machine", "scanner_network")


def test_a_click_within_ten_seconds_of_delivery_is_too_fast():
    assert judge(click(4, 0), [open_(1)]) == Verdict("machine", "too_fast")


def test_a_click_before_any_open_within_a_minute_of_delivery_is_too_fast():
    assert judge(click(40, 0)) == Verdict("machine", "too_fast")
    assert judge(click(40, 0), [open_(20)]).is_human  # opened first: plausible person


def test_a_click_without_an_open_long_after_delivery_is_a_person_blocking_images():
    assert judge(click(7200, 0)).is_human


def test_opens_are_not_judged_by_speed_alone():
    assert judge(open_(3)).is_human


def test_unknown_delivery_time_skips_the_timing_rules():
    assert judge(click(1, 0), delivered=None).is_human


def test_naive_and_aware_datetimes_can_be_mixed():
    naive = Hit(HitKind.CLICK, datetime(2026, 11, 23, 9, 0, 5), CHROME, HOME_IP, 0)
    assert judge(naive) == Verdict("machine", "too_fast")


@pytest.mark.parametrize("ip", [None, "", "not-an-ip", "999.1.1.1", "17.0.0.0/8", "  "])
@pytest.mark.parametrize("ua", [None, "", "\x00\xff", "日本語"])
def test_odd_user_agents_and_addresses_never_raise(ip, ua):
    result = judge(Hit("click", at(3600), ua, ip, 0), [open_(3500)])
    assert result.kind in ("human", "machine")


def test_rules_can_be_tuned_by_the_operator():
    strict = VerdictRules(too_fast=timedelta(seconds=120))
    assert verdict(
        click(100, 0), delivered_at=DELIVERED, recent_hits=[open_(50)], rules=strict
    ) == Verdict("machine", "too_fast")
