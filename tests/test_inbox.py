"""The SalesInbox end to end: real Dovecot → poller → ingest → ``GET /api/v1/inbox``.

A mailgate with the ``imap`` role runs over a fresh SQLite or PostgreSQL
database; a rep's mail is put in a real Dovecot maildir, polled, filed, and
read back through the API as the rep's columns.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.http.inbox import month_of
from tests.support.dovecot import Dovecot, start_or_skip
from tests.support.server import MailgateServer, wait_until

LOGINS = [f"inbox{i}" for i in range(12)]


@pytest.fixture(scope="module")
def dovecot():
    server = start_or_skip()
    server.add_users({login: "pw" for login in LOGINS})
    server.unused = list(LOGINS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory):
    server = MailgateServer(database_url, tmp_path_factory.mktemp("data")).start(
        {"http", "worker", "imap"}
    )
    yield server
    server.stop()


def mail(frm: str, to: str, subject: str) -> tuple[bytes, str]:
    """A message and its Message-ID."""
    mid = f"{uuid.uuid4().hex}@example.net"
    raw = (
        f"From: {frm}\nTo: {to}\nMessage-ID: <{mid}>\nSubject: {subject}\n"
        f"Date: {format_datetime(datetime.now(UTC))}\n\nHello.\n"
    ).encode()
    return raw, mid


def scalar(gate: MailgateServer, sql: str, **params: Any) -> Any:
    from sqlalchemy import text

    async def go():
        async with gate.db.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    return gate.call(go())


class Rep:
    """An org (domain ``<tag>.example.jp``), an admin rep with a Dovecot login and mailbox."""

    def __init__(self, gate: MailgateServer, dovecot: Dovecot, org: dict | None = None) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.gate, self.dovecot = gate, dovecot
        self.domain = f"{self.tag}.example.jp"
        self.org = org or gate.org(f"Inbox {self.tag}", domains=[self.domain])
        self.address = f"rep-{self.tag}@{self.domain}"
        self.user = gate.user(self.org, self.address, "佐藤 花子", admin=True)
        self.api = gate.api(self.user)
        self.login: str | None = None

    def create(self, module: str, **body: Any) -> dict:
        r = self.api.post(f"/api/v1/{module}", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def connect(self) -> None:
        self.login = self.dovecot.unused.pop()
        r = self.api.post(
            "/api/v1/mailboxes",
            json={
                "host": self.dovecot.host,
                "port": self.dovecot.port,
                "login": self.login,
                "password": "pw",
                "security": "none",
            },
        )
        assert r.status_code == 201, r.text

    def receive(self, frm: str, subject: str) -> str:
        """Deliver one message to the rep's INBOX; its Message-ID."""
        assert self.login is not None
        raw, mid = mail(frm, self.address, subject)
        self.dovecot.append(self.login, "INBOX", raw)
        return mid

    def filed(self, mid: str) -> int | None:
        return scalar(
            self.gate,
            "SELECT id FROM messages WHERE org_id = :o AND message_id = :m",
            o=self.org["id"],
            m=mid,
        )

    def wait_filed(self, mid: str) -> int:
        return wait_until(lambda: self.filed(mid), timeout=30, interval=0.1)

    def inbox(self, **params: Any) -> dict:
        r = self.api.get("/api/v1/inbox", params=params)
        assert r.status_code == 200, r.text
        return r.json()


def subjects(column: dict) -> list[str]:
    return [i["subject"] for i in column["items"]]


def column_of(overview: dict, subject: str) -> str | None:
    found = [name for name, col in overview["columns"].items() if subject in subjects(col)]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_each_sender_lands_in_its_column_and_moves_when_the_crm_changes(gate, dovecot):
    rep = Rep(gate, dovecot)
    buyer = rep.create("contacts", last_name="山本", first_name="浩介", email="buyer@acme.example")
    deal = rep.create(
        "deals", name="ロゴ制作", contact_id=buyer["id"], stage="negotiation", amount=4000
    )
    won = rep.create("contacts", last_name="服部", email="won@acme.example")
    rep.create("deals", name="Done deal", contact_id=won["id"], stage="Closed Won", amount=9)
    lead = rep.create("leads", last_name="沢田", email="Sawada@Prospect.example")
    rep.connect()
    mids = [
        rep.receive("山本 浩介 <buyer@acme.example>", "deal mail"),
        rep.receive("won@acme.example", "closed deal mail"),
        rep.receive("sawada@prospect.example", "lead mail"),
        rep.receive(f"滝沢 健二 <takizawa@{rep.domain}>", "colleague mail"),
        rep.receive("stranger@elsewhere.example", "stranger mail"),
    ]
    for mid in mids:
        rep.wait_filed(mid)

    overview = rep.inbox()
    assert list(overview["columns"]) == ["deals", "records", "not_in_crm", "colleagues"]
    assert {s: column_of(overview, s) for s in ("deal mail", "closed deal mail", "lead mail")} == {
        "deal mail": "deals",
        "closed deal mail": "records",  # a won deal is not open
        "lead mail": "records",
    }
    assert column_of(overview, "colleague mail") == "colleagues"
    assert column_of(overview, "stranger mail") == "not_in_crm"
    assert {k: c["count"] for k, c in overview["columns"].items()} == {
        "deals": 1,
        "records": 2,
        "not_in_crm": 1,
        "colleagues": 1,
    }
    [item] = overview["columns"]["deals"]["items"]
    assert item["from"] == "buyer@acme.example" and item["from_name"] == "山本 浩介"
    assert item["seen"] is False and item["date"]
    assert item["records"] == [{"module": "contacts", "id": buyer["id"], "name": "山本 浩介"}]
    assert item["deals"] == [
        {
            "id": deal["id"],
            "name": "ロゴ制作",
            "amount": 4000,
            "stage": "negotiation",
            "closing_date": None,
        }
    ]
    # The item opens as a filed email.
    assert rep.api.get(f"/api/v1/emails/{item['id']}").json()["subject"] == "deal mail"
    lead_item = next(
        i for i in overview["columns"]["records"]["items"] if i["subject"] == "lead mail"
    )
    assert lead_item["records"] == [{"module": "leads", "id": lead["id"], "name": "沢田"}]

    # The stranger becomes a lead: the next read moves their mail, no re-poll.
    stranger = rep.create("leads", last_name="志村", email="Stranger@Elsewhere.example")
    overview = rep.inbox()
    assert column_of(overview, "stranger mail") == "records"
    assert overview["columns"]["not_in_crm"]["count"] == 0
    # … deleted again: back to not in the CRM.
    assert rep.api.delete(f"/api/v1/leads/{stranger['id']}").status_code == 204
    assert column_of(rep.inbox(), "stranger mail") == "not_in_crm"
    # The deal closes: its contact's mail is an ordinary contact's.
    r = rep.api.patch(f"/api/v1/deals/{deal['id']}", json={"stage": "Closed Lost"})
    assert r.status_code == 200
    assert column_of(rep.inbox(), "deal mail") == "records"
    # A converted lead is the contact it became.
    r = rep.api.post(f"/api/v1/leads/{lead['id']}/convert", json={"deal": {"stage": "提案"}})
    assert r.status_code == 200, r.text
    assert column_of(rep.inbox(), "lead mail") == "deals"


def test_deals_closing_this_month_come_first_then_newest_first(gate, dovecot):
    rep = Rep(gate, dovecot)
    today = datetime.now(ZoneInfo("Asia/Tokyo")).date()
    next_month = (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    last_month = today.replace(day=1) - timedelta(days=1)
    closing = {
        "soon": today.isoformat(),
        "later": next_month.isoformat(),
        "past": last_month.isoformat(),
        "undated": None,
    }
    for who, when in closing.items():
        c = rep.create("contacts", last_name=who, email=f"{who}@client.example")
        body = {"name": f"deal {who}", "contact_id": c["id"], "stage": "proposal"}
        if when:
            body["closing_date"] = when
        d = rep.create("deals", **body)
        assert d["closing_date"] == when
    rep.connect()
    # The deal closing this month writes first (the oldest mail), the others after.
    order = ["soon", "later", "past", "undated"]
    mids = [rep.receive(f"{who}@client.example", f"from {who}") for who in order]
    for mid in mids:
        rep.wait_filed(mid)

    deals = rep.inbox(column="deals")
    assert deals["column"] == "deals" and deals["count"] == 4
    assert subjects(deals) == ["from soon", "from undated", "from past", "from later"]
    assert [i["closing_this_month"] for i in deals["items"]] == [True, False, False, False]
    assert deals["items"][0]["deals"][0]["closing_date"] == today.isoformat()

    # Paging one at a time walks the same order, each page counting the whole column.
    seen, before = [], None
    while True:
        params: dict[str, Any] = {"column": "deals", "limit": 1}
        if before:
            params["before"] = before
        page = rep.inbox(**params)
        assert page["count"] == 4
        seen += subjects(page)
        before = page["next"]
        if before is None:
            break
    assert seen == subjects(deals)

    # A closing date is a date.
    some = deals["items"][0]["deals"][0]["id"]
    for bad in ("2026-13-01", "tomorrow", 20261201, "2026-1-1"):
        r = rep.api.patch(f"/api/v1/deals/{some}", json={"closing_date": bad})
        assert r.status_code == 422, (bad, r.text)
    r = rep.api.patch(f"/api/v1/deals/{some}", json={"closing_date": None})
    assert r.status_code == 200 and r.json()["closing_date"] is None


def test_org_setting_off_stops_keeping_strangers_mail_and_hides_the_column(gate, dovecot):
    rep = Rep(gate, dovecot)
    rep.create("leads", last_name="鈴木", email="known@client.example")
    colleague = gate.user(rep.org, f"member-{rep.tag}@{rep.domain}", "岩崎 辰徳")
    member = gate.api(colleague)
    assert member.get("/api/v1/inbox-settings").json() == {"keep_unknown": True}
    r = member.put("/api/v1/inbox-settings", json={"keep_unknown": False})
    assert r.status_code == 403

    rep.connect()
    before_mid = rep.receive("early@stranger.example", "kept before")
    rep.wait_filed(before_mid)

    r = rep.api.put("/api/v1/inbox-settings", json={"keep_unknown": False})
    assert r.status_code == 200 and r.json() == {"keep_unknown": False}
    assert member.get("/api/v1/inbox-settings").json() == {"keep_unknown": False}
    dropped = rep.receive("late@stranger.example", "sent while off")
    colleague_mid = rep.receive(f"member-{rep.tag}@{rep.domain}", "colleague while off")
    sentinel = rep.receive("known@client.example", "lead while off")
    rep.wait_filed(sentinel)  # polled and filed after the stranger's mail
    gate.settle()
    assert rep.filed(dropped) is None  # never stored: there is no id to open
    overview = rep.inbox()
    assert "not_in_crm" not in overview["columns"] and overview["keep_unknown"] is False
    assert column_of(overview, "lead mail") is None
    assert column_of(overview, "lead while off") == "records"
    # The setting is about senders outside the org: a colleague's mail is still kept.
    assert rep.filed(colleague_mid) is not None
    assert column_of(overview, "colleague while off") == "colleagues"
    r = rep.api.get("/api/v1/inbox", params={"column": "not_in_crm"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "column_off"
    # What was kept before stays filed: its sender, added to the CRM, brings it back.
    early_id = rep.filed(before_mid)
    assert rep.api.get(f"/api/v1/emails/{early_id}").status_code == 200

    r = rep.api.put("/api/v1/inbox-settings", json={"keep_unknown": True})
    assert r.status_code == 200
    again = rep.receive("later@stranger.example", "kept again")
    rep.wait_filed(again)
    strangers = rep.inbox(column="not_in_crm")
    assert subjects(strangers) == ["kept again", "kept before"]


def test_my_inbox_is_mine_alone_not_my_admins_nor_another_orgs(gate, dovecot):
    rep = Rep(gate, dovecot)
    rep.create("leads", last_name="関口", email="kaori@client.example")
    rep.connect()
    mids = [
        rep.receive("kaori@client.example", "private question"),
        rep.receive("anyone@stranger.example", "private stranger"),
    ]
    for mid in mids:
        rep.wait_filed(mid)
    assert sum(c["count"] for c in rep.inbox()["columns"].values()) == 2

    admin = Rep(gate, dovecot, org=rep.org)  # an admin of the same org
    other = Rep(gate, dovecot)  # another org
    for viewer in (admin, other):
        overview = viewer.inbox()
        assert all(c["count"] == 0 and c["items"] == [] for c in overview["columns"].values())
        for column in ("deals", "records", "not_in_crm", "colleagues"):
            assert viewer.inbox(column=column)["items"] == []
    # Another org cannot open the mail either.
    for item in rep.inbox(column="records")["items"]:
        assert other.api.get(f"/api/v1/emails/{item['id']}").status_code == 404
    assert rep.api.get("/api/v1/inbox", headers={"Authorization": "Bearer nope"}).status_code == 401


@pytest.mark.parametrize(
    "params",
    [
        {"column": "garbage"},
        {"column": "contacts"},
        {"column": ""},
        {"limit": str(10**9)},
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "1e3"},
        {"column": "deals", "before": "abc"},
        {"column": "deals", "before": "0"},
        {"column": "deals", "before": "-5"},
        {"column": "deals", "before": "9" * 30},
        {"column": "deals", "before": "m"},
        {"before": "12"},
    ],
)
def test_hostile_inbox_parameters_get_a_clear_422(gate, dovecot, params):
    rep = getattr(test_hostile_inbox_parameters_get_a_clear_422, "rep", None)
    if rep is None or rep.gate is not gate:
        rep = Rep(gate, dovecot)
        test_hostile_inbox_parameters_get_a_clear_422.rep = rep
    r = rep.api.get("/api/v1/inbox", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_parameter" and r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body, status",
    [
        ({}, 422),
        ({"keep_unknown": "no"}, 422),
        ({"keep_unknown": 0}, 422),
        ({"keep_unknown": None}, 422),
        ({"keep_unknown": True, "evil": 1}, 422),
        ([True], 400),
    ],
)
def test_hostile_inbox_settings_get_a_clear_4xx(gate, dovecot, body, status):
    rep = Rep(gate, dovecot)
    r = rep.api.put("/api/v1/inbox-settings", json=body)
    assert r.status_code == status, r.text
    assert rep.api.get("/api/v1/inbox-settings").json() == {"keep_unknown": True}


def test_ten_thousand_messages_are_sorted_into_columns_quickly(gate, dovecot, capsys):
    """Columns over 10,000 polled messages: the counts add up; the time is printed, not asserted."""
    from sqlalchemy import insert

    from storage.schema import contacts, deals, leads, messages

    rep = Rep(gate, dovecot)
    org_id, user_id = rep.org["id"], rep.user["id"]
    kinds = ("deal", "contact", "lead", "colleague", "stranger")

    def sender(kind: str, i: int) -> str:
        if kind == "colleague":
            return f"c{i % 50}@{rep.domain}"
        return f"{kind}{i % 200}@{kind}.example"

    def seed(conn) -> None:
        people = [
            {"org_id": org_id, "last_name": f"{k}{i}", "email": f"{k}{i}@{k}.example"}
            for k in ("deal", "contact")
            for i in range(200)
        ]
        for p in people:
            p["email_norm"] = p["email"]
        ids = conn.execute(insert(contacts).returning(contacts.c.id), people).scalars().all()
        deal_contacts = ids[:200]
        conn.execute(
            insert(deals),
            [{"org_id": org_id, "name": f"d{c}", "contact_id": c} for c in deal_contacts],
        )
        conn.execute(
            insert(leads),
            [
                {
                    "org_id": org_id,
                    "last_name": f"l{i}",
                    "email": f"lead{i}@lead.example",
                    "email_norm": f"lead{i}@lead.example",
                }
                for i in range(200)
            ],
        )
        rows = []
        for i in range(10_000):
            kind = kinds[i % len(kinds)]
            h = uuid.uuid4().hex
            rows.append(
                {
                    "org_id": org_id,
                    "user_id": user_id,
                    "message_id": f"{h}@bench",
                    "content_hash": h,
                    "subject": f"{kind} {i}",
                    "from_addr": sender(kind, i),
                    "date": datetime.now(UTC),
                    "direction": "incoming",
                    "source": "imap" if i % 2 else "pop",
                    "size": 10,
                    "raw": b"x",
                }
            )
        conn.execute(insert(messages), rows)

    gate.call(gate.db.run_write(seed), timeout=120)
    timings = {}
    started = time.perf_counter()
    overview = rep.inbox(limit=50)
    timings["overview"] = time.perf_counter() - started
    for column in ("deals", "records", "not_in_crm", "colleagues"):
        started = time.perf_counter()
        page = rep.inbox(column=column, limit=50, before=overview["columns"][column]["next"])
        timings[column] = time.perf_counter() - started
        assert len(page["items"]) == 50
    counts = {k: c["count"] for k, c in overview["columns"].items()}
    assert counts == {"deals": 2000, "records": 4000, "not_in_crm": 2000, "colleagues": 2000}
    with capsys.disabled():
        engine = gate.db.dialect
        print(
            f"\nSalesInbox over 10,000 messages ({engine}): "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items())
        )


@pytest.mark.parametrize(
    "now, month",
    [
        (datetime(2026, 11, 30, 14, 59, tzinfo=UTC), (date(2026, 11, 1), date(2026, 12, 1))),
        # 01:00 on 1 December in Tokyo: December's deals are "this month".
        (datetime(2026, 11, 30, 16, 0, tzinfo=UTC), (date(2026, 12, 1), date(2027, 1, 1))),
        (datetime(2027, 1, 1, 0, 0, tzinfo=UTC), (date(2027, 1, 1), date(2027, 2, 1))),
    ],
)
def test_this_month_is_the_orgs_month(now, month):
    assert month_of(now, "Asia/Tokyo") == month
