"""A send to an excluded domain is its sender's own on every read path of its events.

Seed 004: mail with a counterpart in one of the org's excluded domains is filed
but shared with nobody, and that outranks "mail sent from the CRM is public".
Here a rep sends from the CRM, through a real relay (aiosmtpd on a socket), to
a lead in an excluded domain, to a lead with an excluded CC, and to an
excluded address the relay refuses; the first one is opened, clicked and
unsubscribed from over the real tracking endpoints.  A normal send goes out
beside them.  Then, over HTTP against the running server on both engines:

- ``GET /api/v1/events``: colleagues (an admin included) see none of the
  excluded sends' events and no excluded address in any ``email.*`` event; the
  sender sees every one; the normal send's events stay everyone's;
- ``GET /api/v1/stream``: the colleague who owns the leads (so is told of
  their opens, clicks and bounces) hears only of the normal send; the sender
  hears of all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from gateway.receive.mailboxes import sharing
from storage.schema_sending import sends
from tests.support.scripted_relay import Script
from tests.support.send_peer import delivered, record, relayed, scripted_relay, send_state
from tests.support.sends import flush
from tests.support.server import MailgateServer
from tests.test_sharing import event_log
from tests.test_stream import BROWSER_UA, Rep, Stream

EXCLUDED = "private-bank.example.jp"
REFUSED = f"gone@{EXCLUDED}"
HTML = '<p>ご担当者様</p><p><a href="https://shop.example.co.jp/item/1">商品</a></p>'
#: What a send's life writes to the log, by the sends below.
SEND_TYPES = {"email.sent", "email.opened", "email.clicked", "email.unsubscribed"}


@pytest.fixture(scope="module")
def relay():
    """The relay: it takes every message but refuses :data:`REFUSED` at RCPT (a hard bounce)."""
    refusal = f"550 5.1.1 <{REFUSED}>: Recipient address rejected: User unknown"
    with scripted_relay(Script(rcpt={REFUSED: refusal})) as script:
        yield script


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, relay):
    """mailgate relaying to :func:`relay`, its tracked links pointing at itself."""
    srv = relayed(database_url, tmp_path_factory.mktemp("data"), relay.port).start()
    try:
        yield srv
    finally:
        srv.stop()


@dataclass
class Office:
    boss: Rep  # an org admin, not the sender
    rep: Rep  # sends everything below
    peer: Rep  # owns the leads: told of their opens and bounces
    sends: dict[str, int]  # name → send id
    addresses: set[str]  # the excluded addresses involved


def _rep(server: MailgateServer, org: dict, address: str, name: str, **kw: Any) -> Rep:
    user = server.user(org, address, name, **kw)
    return Rep(user, server.api(user))


def _age(server: MailgateServer, send_id: int) -> None:
    """The send went out an hour ago: a reader's click now is a person's, not a scanner's."""

    async def go() -> None:
        async with server.db.begin() as conn:
            q = update(sends).where(sends.c.id == send_id)
            await conn.execute(q.values(sent_at=datetime.now(UTC) - timedelta(hours=1)))

    server.call(go())


def _read(server: MailgateServer, send_id: int) -> None:
    """A person opens the mail, clicks its link and unsubscribes with one click."""
    signer = server.running.services.tracking.signer
    with httpx.Client(
        base_url=server.http_url, headers={"User-Agent": BROWSER_UA}, timeout=10
    ) as reader:
        assert reader.get(f"/t/o/{signer.open_token(send_id)}").status_code == 200
        r = reader.get(f"/t/c/{signer.click_token(send_id, 0)}", follow_redirects=False)
        assert r.status_code in (302, 303, 307), r.text
        r = reader.post(
            f"/u/{signer.unsubscribe_token(send_id)}", content=b"List-Unsubscribe=One-Click"
        )
        assert r.status_code == 200, r.text
    flush(server)


@pytest.fixture(scope="module")
def office(server, relay) -> Office:
    tag = uuid.uuid4().hex[:6]
    org = server.org(f"除外 {tag}", domains=[f"{tag}.example.jp"])
    boss = _rep(server, org, f"boss@{tag}.example.jp", "部長 一郎", admin=True)
    rep = _rep(server, org, f"rep@{tag}.example.jp", "営業 花子")
    peer = _rep(server, org, f"peer@{tag}.example.jp", "同僚 次郎")
    r = boss.api.put("/api/v1/excluded-domains", json={"domains": [EXCLUDED]})
    assert r.status_code == 200, r.text
    leads = {
        name: record(peer.api, "leads", last_name=name, email=address)
        for name, address in (
            ("secret", f"ceo@{EXCLUDED}"),
            ("open", "buyer@client.example.jp"),
            ("gone", REFUSED),
        )
    }
    plan = {  # name → (lead, CC)
        "excluded_to": ("secret", []),
        "excluded_cc": ("open", [f"cfo@{EXCLUDED}"]),
        "refused": ("gone", []),
        "normal": ("open", []),
    }
    ids = {}
    for name, (lead, cc) in plan.items():
        body = {
            "to": [{"module": "leads", "id": leads[lead]}],
            "subject": f"ご提案 {name}",
            "html": HTML,
            "cc": cc,
        }
        r = rep.api.post("/api/v1/emails", json=body)
        assert r.status_code == 202, r.text
        send = r.json()["sends"][0]
        ids[name] = send["id"]
        if name == "refused":
            send_state(rep.api, send["id"], "failed")
        else:
            delivered(relay, send)
            send_state(rep.api, send["id"])
    for name in ("excluded_to", "normal"):
        _age(server, ids[name])
        _read(server, ids[name])
    return Office(boss, rep, peer, ids, {f"ceo@{EXCLUDED}", f"cfo@{EXCLUDED}", REFUSED})


def types_by_send(log: list[dict]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for e in log:
        if e["type"].startswith("email.") and isinstance(e["data"].get("send_id"), int):
            out.setdefault(e["data"]["send_id"], set()).add(e["type"])
    return out


def test_the_senders_event_log_shows_every_event_of_their_sends_to_an_excluded_domain(office):
    seen = types_by_send(event_log(office.rep.api))
    s = office.sends
    assert seen[s["excluded_to"]] == SEND_TYPES | {"email.filed"}
    assert seen[s["excluded_cc"]] == {"email.sent", "email.filed"}
    assert {"email.bounced", "email.failed", "email.filed"} <= seen[s["refused"]]
    assert seen[s["normal"]] == SEND_TYPES | {"email.filed"}


def test_colleagues_event_logs_lack_a_send_to_an_excluded_domain_and_keep_a_normal_one(office):
    s = office.sends
    for colleague in (office.boss, office.peer):  # an admin included
        log = event_log(colleague.api)
        seen = types_by_send(log)
        for name in ("excluded_to", "excluded_cc", "refused"):
            assert s[name] not in seen, (colleague.user["email"], name, seen.get(s[name]))
        mail = " ".join(str(e["data"]) for e in log if e["type"].startswith("email."))
        assert not any(a in mail for a in office.addresses)
        # Mail sent from the CRM is still public: the normal send, its opens and clicks.
        assert seen[s["normal"]] == SEND_TYPES | {"email.filed"}
        # The leads themselves are the org's records, whatever their address.
        created = {e["data"]["changed"].get("email") for e in log if e["type"] == "record.created"}
        assert f"ceo@{EXCLUDED}" in created


def test_the_send_itself_is_its_senders_own_as_its_events_are(office):
    """``/api/v1/sends/{id}`` and the event log apply the same rule."""
    for name, sid in office.sends.items():
        assert office.rep.api.get(f"/api/v1/sends/{sid}").status_code == 200
        expected = 200 if name == "normal" else 404
        assert office.peer.api.get(f"/api/v1/sends/{sid}").status_code == expected, name


def signals_of(server: MailgateServer, who: Rep) -> list[dict]:
    """Every signal the stream replays to ``who`` from the start of the log."""
    got = []
    with Stream(server, who, params={"after": "0"}) as stream:
        while not stream.quiet(1.0):
            got.append(stream.signal())
    return got


def test_the_live_stream_tells_the_leads_owner_only_of_the_normal_send(server, office):
    s = office.sends
    theirs = signals_of(server, office.peer)
    assert {(x["kind"], x["send_id"]) for x in theirs} == {
        ("opened", s["normal"]),
        ("clicked", s["normal"]),
    }
    mine = {(x["kind"], x["send_id"]) for x in signals_of(server, office.rep)}
    assert {("opened", s["excluded_to"]), ("clicked", s["excluded_to"])} <= mine
    assert ("bounced", s["refused"]) in mine
    assert {("opened", s["normal"]), ("clicked", s["normal"])} <= mine
    assert signals_of(server, office.boss) == []  # not the sender, owns no lead


# -- the rule, pure ---------------------------------------------------------------------


def test_a_send_involves_an_excluded_domain_by_its_to_or_a_cc_and_subdomains_count():
    rows = [
        {"id": 1, "to_email": f"ceo@{EXCLUDED}", "cc_emails": None},
        {"id": 2, "to_email": "a@client.example.jp", "cc_emails": [f"x@Mail.{EXCLUDED.upper()}"]},
        {"id": 3, "to_email": "a@client.example.jp", "cc_emails": ["b@client.example.jp"]},
        {"id": 4, "to_email": f"a@not{EXCLUDED}", "cc_emails": []},
    ]
    assert sharing.unshared_sends(rows, [EXCLUDED]) == {1, 2}
    assert sharing.unshared_sends(rows, []) == frozenset()
    assert not sharing.involves_excluded(["not an address", None], [EXCLUDED])


def test_every_event_naming_an_unshared_send_is_its_senders_only():
    rules = sharing.EventRules({}, {}, frozenset({7}))
    for kind in (*sharing.SEND_EVENT_TYPES, "email.replied"):
        data = {"user_id": 1, "send_id": 7, "module": "leads", "record_id": 5}
        assert rules.sees(1, kind, data), kind
        assert not rules.sees(2, kind, data), kind
        assert rules.sees(2, kind, {**data, "send_id": 8}), kind
    copy = {"user_id": 1, "send_id": 7, "source": "api", "records": [], "shared": True}
    assert not rules.sees(2, "email.filed", copy)
    assert rules.sees(2, "record.created", {"user_id": 1, "send_id": 7})
    # A bounce no send was found for names none: the org's, as before.
    assert rules.sees(2, "email.bounced", {"user_id": None, "send_id": None})
