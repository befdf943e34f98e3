"""A record's email list and its filters, end to end (seed 004's related-list filters).

One lead receives mail through every channel: the dropbox (two reps), a real
Dovecot mailbox polled over IMAP (INBOX and Sent), a send from the CRM
(``POST /api/v1/emails``) and POP mail (filed with the storage functions the
ingest uses; the POP poller is built separately).  Each filter is read back
over HTTP from the running server, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import smtplib
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from hashlib import sha256

import pytest

from storage import filing
from tests.support.dovecot import start_or_skip
from tests.support.server import MailgateServer, wait_until

LOGIN = "filters"
SUBJECTS = ("imap in", "imap sent", "dropbox rep", "dropbox colleague", "crm send", "pop in")


@pytest.fixture(scope="module")
def dovecot():
    server = start_or_skip()
    server.add_users({LOGIN: "pw"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory):
    server = MailgateServer(database_url, tmp_path_factory.mktemp("data")).start(
        {"smtp", "http", "worker", "imap"}
    )
    yield server
    server.stop()


def mail(frm: str, to: str, subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = frm, to, subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.jp>"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg.set_content(f"本文: {subject}")
    return msg.as_bytes()


def dropbox(gate: MailgateServer, user: dict, to: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", gate.smtp_port, timeout=30) as s:
        s.sendmail(user["email"], [user["dropbox_address"]], mail(user["email"], to, subject))


def file_directly(
    gate: MailgateServer,
    org_id: int,
    user: dict,
    *,
    frm: str,
    to: str,
    subject: str,
    source: str,
    direction: str,
    records: list[tuple[str, int]],
) -> int:
    """File one message with the ingest's own storage functions (POP mail, a deal's copy)."""
    raw = mail(frm, to, subject)
    row = {
        "org_id": org_id,
        "user_id": user["id"],
        "message_id": f"<{uuid.uuid4().hex}@example.jp>",
        "content_hash": sha256(raw).hexdigest(),
        "subject": subject,
        "from_addr": frm,
        "from_name": "",
        "to_addrs": [{"name": "", "email": to}],
        "cc_addrs": [],
        "date": datetime.now(UTC),
        "direction": direction,
        "source": source,
        "in_reply_to": None,
        "references": [],
        "text_body": subject,
        "html_body": "",
        "defects": [],
        "size": len(raw),
        "raw": raw,
    }

    def write(conn) -> int:
        (pk,) = filing.insert_messages(conn, [row])
        links = [
            {"org_id": org_id, "message_id": pk, "module": m, "record_id": r} for m, r in records
        ]
        filing.insert_links(conn, links)
        return pk

    return gate.call(gate.db.run_write(write))


@pytest.fixture(scope="module")
def world(gate, dovecot):
    tag = uuid.uuid4().hex[:8]
    domain = f"{tag}.example.jp"
    org = gate.org(f"Filters {tag}", domains=[domain])
    rep = gate.user(org, f"rep@{domain}", "佐藤 花子", admin=True)
    colleague = gate.user(org, f"col@{domain}", "鈴木 一郎")
    api = gate.api(rep)
    lead_email = f"lead-{tag}@customer.example.com"
    lead = api.post("/api/v1/leads", json={"last_name": "田中", "email": lead_email}).json()
    contact_email = f"contact-{tag}@customer.example.com"
    contact = api.post("/api/v1/contacts", json={"last_name": "山本", "email": contact_email})
    contact = contact.json()
    deal = api.post("/api/v1/deals", json={"name": "案件", "contact_id": contact["id"]}).json()

    dovecot.seed(LOGIN, "INBOX", [mail(lead_email, rep["email"], "imap in")])
    dovecot.seed(LOGIN, "Sent", [mail(rep["email"], lead_email, "imap sent")])
    body = {"host": dovecot.host, "port": dovecot.port, "login": LOGIN, "password": "pw"}
    r = api.post("/api/v1/mailboxes", json={**body, "security": "none"})
    assert r.status_code == 201, r.text
    dropbox(gate, rep, lead_email, "dropbox rep")
    dropbox(gate, colleague, lead_email, "dropbox colleague")
    dropbox(gate, rep, contact_email, "contact only")
    r = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead["id"]}], "subject": "crm send", "text": "x"},
    )
    assert r.status_code == 202, r.text
    file_directly(
        gate,
        org["id"],
        rep,
        frm=lead_email,
        to=rep["email"],
        subject="pop in",
        source="pop",
        direction="incoming",
        records=[("leads", lead["id"])],
    )
    file_directly(
        gate,
        org["id"],
        rep,
        frm=rep["email"],
        to=contact_email,
        subject="on the deal",
        source="api",
        direction="outgoing",
        records=[("deals", deal["id"]), ("contacts", contact["id"])],
    )
    wait_until(lambda: len(listed(api, "leads", lead["id"])) == len(SUBJECTS), timeout=30)
    wait_until(lambda: len(listed(api, "contacts", contact["id"])) == 2, timeout=30)
    stranger = gate.user(gate.org(f"Other {tag}"), f"x@other-{tag}.example.jp")
    return {
        "gate": gate,
        "api": api,
        "rep": rep,
        "colleague": colleague,
        "col_api": gate.api(colleague),
        "stranger": stranger,
        "lead": lead,
        "contact": contact,
        "deal": deal,
    }


def listed(api, module: str, rid: int, **params) -> list[dict]:
    r = api.get(f"/api/v1/{module}/{rid}/emails", params=params)
    assert r.status_code == 200, (params, r.text)
    return r.json()["items"]


def subjects(api, lead: dict, **params) -> set[str]:
    return {e["subject"] for e in listed(api, "leads", lead["id"], **params)}


def test_each_source_filter_returns_exactly_that_channels_mail(world):
    api, lead = world["api"], world["lead"]
    assert subjects(api, lead) == set(SUBJECTS)
    expected = {
        "crm": {"crm send"},
        "api": {"crm send"},
        "campaign": set(),
        "dropbox": {"dropbox rep", "dropbox colleague"},
        "imap": {"imap in", "imap sent"},
        "pop": {"pop in"},
    }
    for source, wanted in expected.items():
        items = listed(api, "leads", lead["id"], source=source)
        assert {e["subject"] for e in items} == wanted, source
        for item in items:
            assert item["crm_sent"] is (item["source"] in ("api", "campaign"))
            assert item["shared"] is True
    crm = listed(api, "leads", lead["id"], source="crm")[0]
    assert crm["source"] == "api" and crm["send_id"] is not None and crm["crm_sent"] is True


def test_direction_and_user_filters_combine_with_each_other_and_with_source(world):
    api, lead = world["api"], world["lead"]
    rep, colleague = world["rep"], world["colleague"]
    assert subjects(api, lead, direction="incoming") == {"imap in", "pop in"}
    assert subjects(api, lead, direction="outgoing") == {
        "imap sent",
        "dropbox rep",
        "dropbox colleague",
        "crm send",
    }
    assert subjects(api, lead, user=colleague["id"]) == {"dropbox colleague"}
    assert subjects(api, lead, user=rep["id"]) == set(SUBJECTS) - {"dropbox colleague"}
    assert subjects(api, lead, user=rep["id"], source="dropbox") == {"dropbox rep"}
    assert subjects(api, lead, user=rep["id"], source="imap", direction="outgoing") == {"imap sent"}
    assert subjects(api, lead, user=colleague["id"], source="crm") == set()
    empty = {"source": "", "direction": "", "user": ""}  # an empty parameter is no filter
    assert subjects(api, lead, **empty) == set(SUBJECTS)


def test_filters_page_like_the_unfiltered_list(world):
    api, lead = world["api"], world["lead"]
    whole = listed(api, "leads", lead["id"], direction="outgoing")
    seen, cursor = [], None
    while True:
        params = {"direction": "outgoing", "limit": 1}
        if cursor:
            params["cursor"] = cursor
        r = api.get(f"/api/v1/leads/{lead['id']}/emails", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
    assert [e["id"] for e in seen] == [e["id"] for e in whole] and len(seen) == 4


def test_a_private_reps_imap_pop_and_dropbox_mail_is_hidden_but_their_crm_send_shows(world):
    api, col, lead, rep = world["api"], world["col_api"], world["lead"], world["rep"]
    r = api.put(f"/api/v1/users/{rep['id']}/sharing", json={"mode": "private"})
    assert r.status_code == 200, r.text
    try:
        assert subjects(col, lead) == {"dropbox colleague", "crm send"}
        assert subjects(col, lead, user=rep["id"]) == {"crm send"}
        assert subjects(col, lead, source="imap") == set()
        assert subjects(col, lead, direction="incoming") == set()
        assert subjects(api, lead) == set(SUBJECTS)  # the rep still sees everything
        own = {e["subject"]: e["id"] for e in listed(api, "leads", lead["id"])}
        for subject in ("imap in", "imap sent", "pop in", "dropbox rep"):
            assert col.get(f"/api/v1/emails/{own[subject]}").status_code == 404, subject
        assert col.get(f"/api/v1/emails/{own['crm send']}").status_code == 200
        log = col.get("/api/v1/events", params={"limit": 1000}).json()["items"]
        hidden = {own[s] for s in ("imap in", "imap sent", "dropbox rep")}
        assert not [e for e in log if e["data"].get("message_id") in hidden]
        assert any(e["data"].get("message_id") == own["crm send"] for e in log)
    finally:
        api.put(f"/api/v1/users/{rep['id']}/sharing", json={"mode": "public"})
    assert subjects(col, lead) == set(SUBJECTS)


def test_a_deals_list_is_the_mail_filed_on_the_deal_not_its_contacts(world):
    api, contact, deal = world["api"], world["contact"], world["deal"]
    on_deal = listed(api, "deals", deal["id"])
    assert [e["subject"] for e in on_deal] == ["on the deal"]
    assert on_deal[0]["crm_sent"] is True
    assert {e["subject"] for e in listed(api, "contacts", contact["id"])} == {
        "contact only",
        "on the deal",
    }
    # Another deal of the same contact has no mail of its own, so shows none.
    other = api.post("/api/v1/deals", json={"name": "別件", "contact_id": contact["id"]}).json()
    assert listed(api, "deals", other["id"]) == []
    assert listed(world["col_api"], "deals", deal["id"]) == on_deal
    assert listed(api, "deals", deal["id"], source="dropbox") == []


@pytest.mark.parametrize(
    "params",
    [
        {"source": "CRM"},
        {"source": "smtp"},
        {"source": "crm,imap"},
        {"source": "crm\x00"},
        {"direction": "both"},
        {"direction": "in"},
        {"user": "abc"},
        {"user": "-1"},
        {"user": "0"},
        {"user": "1.5"},
        {"user": "１"},  # a full-width digit
        {"user": "9" * 30},
        {"user": str(2**63)},
        {"user": "999999999"},
    ],
)
def test_a_hostile_or_unknown_filter_value_is_a_clear_422(world, params):
    r = world["api"].get(f"/api/v1/leads/{world['lead']['id']}/emails", params=params)
    assert r.status_code == 422, (params, r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == "invalid_filter"
    assert next(iter(params)) in error["message"]


def test_another_orgs_user_is_not_a_filter_and_another_orgs_record_is_404(world):
    api, lead, stranger = world["api"], world["lead"], world["stranger"]
    r = api.get(f"/api/v1/leads/{lead['id']}/emails", params={"user": stranger["id"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_filter"
    theirs = world["gate"].api(stranger)
    for params in ({}, {"source": "crm"}, {"user": world["rep"]["id"]}):
        r = theirs.get(f"/api/v1/leads/{lead['id']}/emails", params=params)
        assert r.status_code == 404, params
