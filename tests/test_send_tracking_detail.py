"""``GET /api/v1/sends/{id}``: per-recipient tracking detail, and sends are public in the org.

A real send goes through the relay; its open pixel and links are fetched
from the bytes the relay got, over the real tracking endpoints, judged by the
verdicts runner, and the send then shows sent at, first/last human open and
click, counts and which links were clicked.  A scanner's hits are not counted.
Mail sent from the CRM is public (seed 004): a private rep's colleagues see it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import NamedTuple

import httpx
import pytest

from gateway.clock import SystemClock
from tests.support import smtp_sink
from tests.support.campaign_sends import LaterClock
from tests.support.scripted_relay import Script, ScriptedRelay
from tests.support.send_peer import delivered, parsed, record, relayed, send_state
from tests.support.sends import flush

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
SCANNER = "python-requests/2.32.3"
CATALOGUE = "https://shop.example.co.jp/catalogue?season=winter&lang=ja"
PRICES = "https://shop.example.co.jp/prices"


@pytest.fixture(scope="module")
def relay():
    port = smtp_sink.free_port()
    with ScriptedRelay(port, Script()) as script:
        script.port = port
        yield script


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay):
    srv = relayed(database_url, tmp_path_factory.mktemp("data"), relay.port).start()
    yield srv
    srv.stop()


@pytest.fixture
def later(server):
    """Readers come back an hour after delivery: a click is then no scanner's instant one."""
    services = server.running.services
    services.clock = LaterClock()
    yield services.clock
    services.clock = SystemClock()


class Office(NamedTuple):
    org: dict
    boss: httpx.Client  # an admin: sets the reps' sharing
    rep: httpx.Client
    peer: httpx.Client
    rep_id: int


def office(server) -> Office:
    """An org with an admin and two reps."""
    org = server.org(f"追跡 {datetime.now().timestamp()}")
    boss = server.user(org, f"boss{org['id']}@sender.example.jp", "部長 一郎", admin=True)
    rep = server.user(org, f"rep{org['id']}@sender.example.jp", "営業 花子")
    peer = server.user(org, f"peer{org['id']}@sender.example.jp", "同僚 次郎")
    return Office(org, server.api(boss), server.api(rep), server.api(peer), rep["id"])


def tracked(raw: bytes) -> tuple[str, dict[str, str]]:
    """The open pixel's URL and each visible link's tracked URL, by its text."""
    html = parsed(raw).get_body(("html",)).get_content()
    pixel = re.search(r'<img[^>]+src="([^"]+/t/o/[^"]+)"', html).group(1)
    links = dict(
        (text, url)
        for url, text in re.findall(r'<a href="([^"]+/t/c/[^"]+)"[^>]*>([^<]+)</a>', html)
    )
    return pixel, links


def test_a_send_shows_when_it_went_out_and_its_human_opens_and_clicks(server, relay, later):
    rep = office(server).rep
    lead = record(rep, "leads", last_name="山田", email="yamada@client.example.jp")
    r = rep.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": lead}],
            "subject": "冬のカタログ",
            "html": f'<p>山田様</p><p><a href="{CATALOGUE}">カタログ</a> <a href="{PRICES}">価格表</a></p>',
        },
    )
    assert r.status_code == 202, r.text
    send = r.json()["sends"][0]
    _, raw = delivered(relay, send)
    sent = send_state(rep, send["id"])
    assert sent["tracking"] == {
        "sent_at": sent["sent_at"],
        "opens": {"first": None, "last": None, "count": 0},
        "clicks": {"first": None, "last": None, "count": 0, "links": []},
    }
    pixel, links = tracked(raw)
    later.ahead = timedelta(hours=1)
    with httpx.Client(headers={"User-Agent": BROWSER}, timeout=10) as reader:
        assert reader.get(pixel).status_code == 200
        for url in (links["カタログ"], links["価格表"], links["カタログ"]):
            later.ahead += timedelta(minutes=3)
            r = reader.get(url, follow_redirects=False)
            assert r.status_code in (302, 303, 307), r.text
        later.ahead += timedelta(minutes=3)
        assert reader.get(pixel).status_code == 200
    with httpx.Client(headers={"User-Agent": SCANNER}, timeout=10) as scanner:
        scanner.get(pixel)
        scanner.get(links["価格表"], follow_redirects=False)
    assert flush(server) == 7

    detail = rep.get(f"/api/v1/sends/{send['id']}").json()["tracking"]
    assert detail["sent_at"] == sent["sent_at"]
    opens, clicks = detail["opens"], detail["clicks"]
    assert opens["count"] == 2  # the scanner's fetch is not a person's open
    assert opens["first"] < opens["last"]
    assert clicks["count"] == 3
    assert clicks["first"] < clicks["last"]
    assert [(x["url"], x["count"]) for x in clicks["links"]] == [(CATALOGUE, 2), (PRICES, 1)]
    catalogue = clicks["links"][0]
    assert catalogue["first"] < catalogue["last"]
    assert opens["first"] < clicks["first"]  # opened first, then clicked
    assert datetime.fromisoformat(opens["first"]) > datetime.fromisoformat(detail["sent_at"])


def test_a_private_reps_send_is_public_to_colleagues_and_absent_for_another_org(server, relay):
    org, boss, rep, peer, rep_id = office(server)
    lead = record(rep, "leads", last_name="鈴木", email="suzuki@client.example.jp")
    r = rep.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead}], "subject": "内々のご提案", "text": "x"},
    )
    assert r.status_code == 202, r.text
    send = r.json()["sends"][0]
    r = boss.put(f"/api/v1/users/{rep_id}/sharing", json={"mode": "private"})
    assert r.status_code == 200, r.text
    for colleague in (boss, peer):
        r = colleague.get(f"/api/v1/sends/{send['id']}")
        assert r.status_code == 200, r.text
        assert r.json()["subject"] == "内々のご提案"
    stranger = office(server).rep
    r = stranger.get(f"/api/v1/sends/{send['id']}")
    assert r.status_code == 404, r.text
    assert "内々" not in r.text


def test_a_send_to_an_excluded_domain_stays_its_senders_own(server, relay):
    from sqlalchemy import select

    from storage.schema import messages

    org, boss, rep, peer, rep_id = office(server)
    r = boss.put("/api/v1/excluded-domains", json={"domains": ["private-bank.example.jp"]})
    assert r.status_code == 200, r.text
    lead = record(rep, "leads", last_name="秘密", email="ceo@private-bank.example.jp")
    other = record(rep, "leads", last_name="普通", email="open@client.example.jp")
    sent = {}
    for name, rid, cc in (("excluded", lead, []), ("cc", other, ["cfo@private-bank.example.jp"])):
        body = {
            "to": [{"module": "leads", "id": rid}],
            "subject": "融資の件",
            "text": "x",
            "cc": cc,
        }
        r = rep.post("/api/v1/emails", json=body)
        assert r.status_code == 202, r.text
        sent[name] = r.json()["sends"][0]["id"]
    r = rep.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": other}], "subject": "ご案内", "text": "x"},
    )
    sent["open"] = r.json()["sends"][0]["id"]
    for name, sid in sent.items():
        assert rep.get(f"/api/v1/sends/{sid}").status_code == 200
        expected = 200 if name == "open" else 404
        assert peer.get(f"/api/v1/sends/{sid}").status_code == expected, name

    async def shared_flags():
        async with server.db.connect() as conn:
            q = select(messages.c.send_id, messages.c.shared).where(
                messages.c.send_id.in_(list(sent.values()))
            )
            return dict((await conn.execute(q)).all())

    flags = server.call(shared_flags())
    assert flags == {sent["excluded"]: False, sent["cc"]: False, sent["open"]: True}


def test_clicks_on_one_url_linked_twice_are_one_entry_and_unknown_links_stay_visible():
    from gateway.http.sending import tracking_detail

    t = [datetime(2026, 11, 26, 10, m) for m in range(6)]
    send = {"links": [CATALOGUE, PRICES, CATALOGUE], "sent_at": t[0]}
    hits = [
        {"kind": "click", "link_index": 0, "count": 1, "first": t[2], "last": t[2]},
        {"kind": "click", "link_index": 1, "count": 2, "first": t[3], "last": t[5]},
        {"kind": "click", "link_index": 2, "count": 1, "first": t[1], "last": t[4]},
        {"kind": "click", "link_index": 9, "count": 1, "first": t[4], "last": t[4]},
        {"kind": "open", "link_index": None, "count": 3, "first": t[1], "last": t[5]},
    ]
    detail = tracking_detail(send, hits)
    assert detail["opens"] == {"first": t[1], "last": t[5], "count": 3}
    clicks = detail["clicks"]
    assert (clicks["count"], clicks["first"], clicks["last"]) == (5, t[1], t[5])
    assert clicks["links"] == [
        {"url": CATALOGUE, "count": 2, "first": t[1], "last": t[4]},
        {"url": PRICES, "count": 2, "first": t[3], "last": t[5]},
        {"url": None, "count": 1, "first": t[4], "last": t[4]},
    ]
