"""Tracking over real HTTP: a real mailgate (uvicorn) and httpx, on SQLite and PostgreSQL.

Every token here comes from the running server's own signer, as in mail we
sent; the hostile ones are derived from those by flipping, cutting, swapping.
"""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from itertools import count

import httpx
import pytest

from tests.support.sends import (
    events_of,
    flush,
    hits_of,
    make_send,
    send_row,
    suppression_count,
)
from tracking.pixel import PIXEL_GIF
from tracking.tokens import TokenSigner, keys_from_secrets

BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
_names = count()


@pytest.fixture
def org(mailgate):
    org = mailgate.org(f"tracking-{next(_names)}-{secrets.token_hex(3)}")
    user = mailgate.user(org, f"rep{secrets.token_hex(3)}@example.co.jp")
    return org, user


@pytest.fixture
def http(mailgate):
    with httpx.Client(
        base_url=mailgate.http_url, headers={"User-Agent": BROWSER_UA}, timeout=30
    ) as client:
        yield client


def signer(mailgate) -> TokenSigner:
    return mailgate.running.services.tracking.signer


def test_open_pixel_answers_an_uncacheable_gif_and_records_one_human_open(mailgate, org, http):
    send = make_send(mailgate, *org)
    token = re.search(r"/t/o/([A-Za-z0-9_-]+)", send["html"]).group(1)
    r = http.get(f"/t/o/{token}")
    assert r.status_code == 200
    assert r.content == PIXEL_GIF
    assert r.headers["content-type"] == "image/gif"
    assert "no-store" in r.headers["cache-control"]
    assert flush(mailgate) == 1
    [hit] = hits_of(mailgate, send["id"])
    assert (hit["kind"], hit["verdict"]) == ("open", "human")
    row = send_row(mailgate, send["id"])
    assert row["status"] == "opened" and row["opened_at"] is not None
    [event] = events_of(mailgate, org[0]["id"], "email.opened")
    assert event["data"]["verdict"] == "human"
    assert event["data"]["send_id"] == send["id"]


def _bit_flips(token: str) -> list[str]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    out = []
    for i, char in enumerate(token):
        value = alphabet.index(char)
        for bit in (1, 8, 32):
            out.append(token[:i] + alphabet[value ^ bit] + token[i + 1 :])
    return out


def test_tampered_tokens_get_404_and_record_nothing(mailgate, org, http):
    send = make_send(mailgate, *org)
    other = make_send(mailgate, *org, to="hanako@example.co.jp")
    s = signer(mailgate)
    foreign = TokenSigner(keys_from_secrets(["another deployment's secret"]))
    open_t = s.open_token(send["id"])
    click_t = s.click_token(send["id"], 0)
    unsub_t = s.unsubscribe_token(send["id"])
    hostile_opens = [
        *_bit_flips(open_t),
        *(open_t[:n] for n in range(1, len(open_t))),
        open_t + "A",
        foreign.open_token(send["id"]),
        click_t,  # a click token is not an open token
        unsub_t,
        "",
        "%00",
        "A" * 500,
    ]
    hostile_clicks = [
        *_bit_flips(click_t),
        *(click_t[:n] for n in range(1, len(click_t))),
        foreign.click_token(send["id"], 0),
        s.click_token(send["id"], len(send["links"])),  # an index the send does not have
        s.click_token(send["id"], 10**6),
        s.click_token(10**12, 0),  # a send that does not exist
        open_t,
    ]
    # Replaying another send's link token on this send: the token names its own send,
    # so splicing this send's id into it breaks the signature.
    other_click = s.click_token(other["id"], 1)
    spliced = s.click_token(send["id"], 1)[:4] + other_click[4:]
    hostile_clicks.append(spliced)
    hostile_unsubs = [*_bit_flips(unsub_t)[:30], foreign.unsubscribe_token(send["id"]), open_t]

    for token in hostile_opens:
        r = http.get(f"/t/o/{token}")
        assert r.status_code == 404, token
    for token in hostile_clicks:
        r = http.get(f"/t/c/{token}", follow_redirects=False)
        assert r.status_code == 404, token
        assert "location" not in r.headers
    for token in hostile_unsubs:
        assert http.get(f"/u/{token}").status_code == 404
        r = http.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
        assert r.status_code == 404
    flush(mailgate)
    assert hits_of(mailgate, send["id"]) == [] and hits_of(mailgate, other["id"]) == []
    assert events_of(mailgate, org[0]["id"]) == []
    assert suppression_count(mailgate, org[0]["id"]) == 0
    assert send_row(mailgate, send["id"])["status"] == "sent"


def test_click_redirects_only_to_the_link_of_that_index_in_that_send(mailgate, org, http):
    send = make_send(mailgate, *org)
    other = make_send(mailgate, *org, to="hanako@example.co.jp", links=["https://other.example/x"])
    s = signer(mailgate)
    for index, url in enumerate(send["links"][:-1]):
        r = http.get(f"/t/c/{s.click_token(send['id'], index)}", follow_redirects=False)
        assert r.status_code == 302
        assert r.headers["location"] == url
    assert send["links"][0] == "https://shop.example.co.jp/item/1?a=1&b=2"
    r = http.get(f"/t/c/{s.click_token(other['id'], 0)}", follow_redirects=False)
    assert r.headers["location"] == "https://other.example/x"


HOSTILE_TARGETS = [
    "//evil.example/",
    "\\\\evil.example\\",
    "/\\evil.example",
    "https:evil.example",
    "https:/evil.example",
    "https:///evil.example",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "%2F%2Fevil.example",
    "https%3A%2F%2Fevil.example",
    "https://shop.example.co.jp@evil.example/",
    " https://evil.example",
    "https://evil.example\t/",
    "https://\tevil.example",
    "https://evil.example\\@shop.example.co.jp",
    "ftp://evil.example/",
    "https://evil.example:99999/",
    "",
    None,
    42,
]


def test_planted_hostile_links_never_redirect_and_record_nothing(mailgate, org, http):
    # A row edited by hand (or a bug upstream) put hostile targets in the links.
    send = make_send(mailgate, *org, links=HOSTILE_TARGETS)
    s = signer(mailgate)
    for index in range(len(HOSTILE_TARGETS)):
        r = http.get(f"/t/c/{s.click_token(send['id'], index)}", follow_redirects=False)
        assert r.status_code == 404, HOSTILE_TARGETS[index]
        assert "location" not in r.headers
    flush(mailgate)
    assert hits_of(mailgate, send["id"]) == []


def test_hostile_hrefs_in_a_message_are_not_made_into_redirects(mailgate, org, http):
    hrefs = [h for h in HOSTILE_TARGETS if isinstance(h, str) and '"' not in h]
    html = "<html><body>" + "".join(f'<a href="{h}">x</a>' for h in hrefs)
    html += '<a href="https://shop.example.co.jp/ok">ok</a></body></html>'
    send = make_send(mailgate, *org, html=html)
    # Only what a browser would itself have followed is tracked (the whitespace
    # variants are plain links to evil.example once the browser strips the tab or
    # space; tracking them redirects nowhere the mail did not already point).
    assert send["links"][:-1] == [
        "https://evil.example",
        "https://evil.example/",
        "https://evil.example",
        "https://shop.example.co.jp/ok",
    ]
    for href in hrefs:
        if href.startswith(("//", "\\", "/\\", "https:e", "https:/e", "https:///", "%2F", "ftp")):
            assert f'href="{href}"' in send["html"]  # left exactly as it was, untracked
    assert "javascript:" not in send["html"].lower() and "data:text" not in send["html"]
    tokens = re.findall(r"/t/c/([A-Za-z0-9_-]+)", send["html"])
    assert len(tokens) == len(send["links"])
    for token in tokens:
        r = http.get(f"/t/c/{token}", follow_redirects=False)
        assert r.status_code == 302 and r.headers["location"] in send["links"]


def test_a_scanner_burst_is_kept_as_machine_hits_and_counts_nowhere(mailgate, org, http):
    user = org[1]
    # Delivered an hour ago (timing rules quiet): three links within a second.
    send = make_send(mailgate, *org, template_id=None)
    s = signer(mailgate)
    for index in range(3):
        http.get(f"/t/c/{s.click_token(send['id'], index)}", follow_redirects=False)
    # Just delivered: a gateway follows a link within seconds.
    fresh = make_send(mailgate, *org, to="jiro@example.co.jp", sent_ago=timedelta(seconds=2))
    http.get(f"/t/c/{s.click_token(fresh['id'], 0)}", follow_redirects=False)
    # A scanner library follows the hidden honeypot link.
    honey = make_send(mailgate, *org, to="saburo@example.co.jp")
    http.get(f"/t/c/{s.click_token(honey['id'], honey['honeypot'])}", follow_redirects=False)
    flush(mailgate)
    assert {h["reason"] for h in hits_of(mailgate, send["id"])} == {"burst"}
    assert [h["reason"] for h in hits_of(mailgate, fresh["id"])] == ["too_fast"]
    assert [h["reason"] for h in hits_of(mailgate, honey["id"])] == ["honeypot"]
    for sid in (send["id"], fresh["id"], honey["id"]):
        row = send_row(mailgate, sid)
        assert (row["status"], row["opened_at"], row["clicked_at"]) == ("sent", None, None)
    clicks = events_of(mailgate, org[0]["id"], "email.clicked")
    assert len(clicks) == 5 and {e["data"]["verdict"] for e in clicks} == {"machine"}
    report = mailgate.api(user).get("/api/v1/reports/emails").json()
    # One bucket per local day: the sends straddle the org's midnight when the test runs
    # just after it (Tokyo midnight is 15:00 UTC), so add the buckets up.
    totals = report["totals"]
    assert sum(t["sent"] for t in totals) == 3
    assert all(t["opened"]["n"] == 0 and t["clicked"]["n"] == 0 for t in totals)


def test_an_apple_mpp_open_is_machine_and_does_not_open_the_send(mailgate, org):
    send = make_send(mailgate, *org, sent_ago=timedelta(minutes=3))
    token = signer(mailgate).open_token(send["id"])
    with httpx.Client(base_url=mailgate.http_url, headers={"User-Agent": "Mozilla/5.0"}) as mpp:
        assert mpp.get(f"/t/o/{token}").status_code == 200
    flush(mailgate)
    [hit] = hits_of(mailgate, send["id"])
    assert (hit["verdict"], hit["reason"]) == ("machine", "apple_mpp")
    assert send_row(mailgate, send["id"])["opened_at"] is None
    [event] = events_of(mailgate, org[0]["id"], "email.opened")
    assert (event["data"]["verdict"], event["data"]["reason"]) == ("machine", "apple_mpp")


def test_a_human_click_without_a_loaded_pixel_implies_an_open(mailgate, org, http):
    send = make_send(mailgate, *org)
    r = http.get(f"/t/c/{signer(mailgate).click_token(send['id'], 1)}", follow_redirects=False)
    assert r.status_code == 302
    flush(mailgate)
    row = send_row(mailgate, send["id"])
    assert row["status"] == "clicked"
    assert row["opened_at"] == row["clicked_at"] is not None
    kinds = [(e["type"], e["data"]["reason"]) for e in events_of(mailgate, org[0]["id"])]
    assert kinds == [("email.clicked", "no_machine_signal"), ("email.opened", "implied_by_click")]


def test_unsubscribe_get_only_asks_and_post_suppresses_once(mailgate, org, http):
    org_row, user = org
    send = make_send(mailgate, *org, to="unsub@example.co.jp")
    path = f"/u/{signer(mailgate).unsubscribe_token(send['id'])}"
    for lang, word in (("ja", "配信を停止する"), ("en-US,en;q=0.9", "Unsubscribe")):
        page = http.get(path, headers={"Accept-Language": lang})
        assert page.status_code == 200 and word in page.text
        assert 'method="post"' in page.text.lower()
    assert suppression_count(mailgate, org_row["id"]) == 0
    assert send_row(mailgate, send["id"])["unsubscribed_at"] is None

    one_click = http.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    again = http.post(path, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    suppressed = mailgate.api(user).get("/api/v1/suppressions")
    if suppressed.status_code == 200:  # the suppressions API lands with the sending branch
        emails = {i["email"]: i["reason"] for i in suppressed.json()["items"]}
        assert emails == {"unsub@example.co.jp": "unsubscribe"}
    assert suppression_count(mailgate, org_row["id"]) == 1
    row = send_row(mailgate, send["id"])
    assert row["status"] == "unsubscribed" and row["unsubscribed_at"] is not None
    [event] = events_of(mailgate, org_row["id"], "email.unsubscribed")
    assert event["data"]["send_id"] == send["id"] and event["data"]["method"] == "one_click"
