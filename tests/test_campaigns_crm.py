"""Campaigns → CRM, end to end: real opens, clicks, unsubscribes, bounces and complaints
on a campaign's mail, read back through the API and the tables (seed 000 and seed 001).

Each campaign is written as the campaign runner leaves it
(:mod:`tests.support.campaign_sends`); every activity after that goes through
the running server: the pixel and links over HTTP (judged by the ``verdicts``
runner), the one-click unsubscribe, DSNs and ARF reports over SMTP to the VERP
address; the ``campaigns_to_crm`` consumer then applies the events.
"""

from __future__ import annotations

import secrets
from itertools import count

import pytest
from sqlalchemy import func, select

from storage.schema import accounts, contacts, events, leads
from storage.schema_campaigns import campaign_recipients, list_members, record_campaigns
from tests.support.campaign_sends import (
    APPLE_MPP_UA,
    SCANNER_UA,
    bounce,
    click,
    complain,
    open_mail,
    person,
    recipients,
    replay,
    send_campaign,
    unsubscribe,
)
from tests.support.campaigns import members
from tests.support.sends import events_of, rows, scalar

_names = count()


@pytest.fixture
def org(mailgate):
    org = mailgate.org(f"campcrm-{next(_names)}-{secrets.token_hex(3)}")
    admin = mailgate.user(org, f"admin{secrets.token_hex(3)}@example.co.jp", admin=True)
    return org, admin


def _api(mailgate, org):
    return mailgate.api(org[1])


def _only(mailgate, org, module: str, email: str) -> dict:
    found = _api(mailgate, org).get(f"/api/v1/{module}", params={"email": email}).json()["items"]
    assert len(found) == 1, found
    return found[0]


def _none(mailgate, org, module: str, email: str) -> None:
    assert _api(mailgate, org).get(f"/api/v1/{module}", params={"email": email}).json() == {
        "items": [],
        "next": None,
    }


def _history(mailgate, org, module: str, rid: int) -> list[dict]:
    r = _api(mailgate, org).get(f"/api/v1/{module}/{rid}/campaigns")
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _created_by_campaigns(mailgate, org) -> list[tuple[str, int]]:
    return [
        (e["data"]["module"], e["data"]["id"])
        for e in events_of(mailgate, org[0]["id"], "record.created")
        if e["data"]["source"] == "campaigns"
    ]


# -- registration (seed 000) ------------------------------------------------------------


def test_a_human_open_registers_a_lead_with_last_first_name_and_email(mailgate, org):
    camp = send_campaign(
        mailgate,
        *org,
        [person("hanako@client.example", "花子", "佐藤")],
        register={"opened": "leads"},
    )
    open_mail(mailgate, camp["sends"]["hanako@client.example"])

    lead = _only(mailgate, org, "leads", "hanako@client.example")
    assert (lead["last_name"], lead["first_name"], lead["source"]) == ("佐藤", "花子", "campaigns")
    row = recipients(mailgate, camp["id"])["hanako@client.example"]
    assert (row["status"], row["registered_module"], row["registered_id"]) == (
        "opened",
        "leads",
        lead["id"],
    )
    assert row["not_registered_reason"] is None
    assert (row["module"], row["record_id"]) == ("leads", lead["id"])
    assert _created_by_campaigns(mailgate, org) == [("leads", lead["id"])]
    [item] = _history(mailgate, org, "leads", lead["id"])
    assert (item["campaign_id"], item["name"], item["status"]) == (
        camp["id"],
        camp["name"],
        "opened",
    )
    _none(mailgate, org, "contacts", "hanako@client.example")


def test_a_human_click_registers_a_contact_with_company_and_its_account_made_once(mailgate, org):
    people = [
        person("ichiro@acme.example", "一郎", "鈴木", "株式会社アクメ"),
        person("jiro@acme.example", "次郎", "鈴木", "株式会社アクメ"),
    ]
    camp = send_campaign(mailgate, *org, people, register={"clicked": "contacts"})
    for p in people:
        click(mailgate, camp["sends"][p["email"]], 1)

    first = _only(mailgate, org, "contacts", "ichiro@acme.example")
    second = _only(mailgate, org, "contacts", "jiro@acme.example")
    assert first["account_id"] == second["account_id"] is not None
    account = _api(mailgate, org).get(f"/api/v1/accounts/{first['account_id']}").json()
    assert account["name"] == "株式会社アクメ"
    assert sorted(_created_by_campaigns(mailgate, org)) == sorted(
        [("accounts", first["account_id"]), ("contacts", first["id"]), ("contacts", second["id"])]
    )
    rows_ = recipients(mailgate, camp["id"])
    assert {r["status"] for r in rows_.values()} == {"clicked"}
    assert all(r["opened_at"] is not None for r in rows_.values())  # a click implies an open
    assert _history(mailgate, org, "contacts", first["id"])[0]["status"] == "clicked"
    _none(mailgate, org, "leads", "ichiro@acme.example")


def test_an_account_of_the_same_name_is_reused_for_a_registered_contact(mailgate, org):
    existing = _api(mailgate, org).post("/api/v1/accounts", json={"name": "Globex"}).json()
    camp = send_campaign(
        mailgate,
        *org,
        [person("hank@globex.example", "Hank", "Scorpio", "globex")],
        register={"opened": "contacts"},
    )
    open_mail(mailgate, camp["sends"]["hank@globex.example"])
    assert _only(mailgate, org, "contacts", "hank@globex.example")["account_id"] == existing["id"]


def test_opened_and_clicked_register_into_their_own_targets(mailgate, org):
    people = [
        person("opener@client.example", "開", "田中"),
        person("clicker@client.example", "久", "田中", "田中商事"),
    ]
    camp = send_campaign(
        mailgate, *org, people, register={"opened": "leads", "clicked": "contacts"}
    )
    open_mail(mailgate, camp["sends"]["opener@client.example"])
    click(mailgate, camp["sends"]["clicker@client.example"])

    lead = _only(mailgate, org, "leads", "opener@client.example")
    contact = _only(mailgate, org, "contacts", "clicker@client.example")
    _none(mailgate, org, "contacts", "opener@client.example")
    _none(mailgate, org, "leads", "clicker@client.example")
    rows_ = recipients(mailgate, camp["id"])
    assert rows_["opener@client.example"]["registered_id"] == lead["id"]
    assert rows_["clicker@client.example"]["registered_module"] == "contacts"
    assert rows_["clicker@client.example"]["registered_id"] == contact["id"]


def test_a_click_registers_into_its_target_after_the_open_registered_nothing(mailgate, org):
    # The open wants a contact (company needed); the click wants a lead.
    camp = send_campaign(
        mailgate,
        *org,
        [person("nocompany@client.example", "三郎", "高橋")],
        register={"opened": "contacts", "clicked": "leads"},
    )
    send = camp["sends"]["nocompany@client.example"]
    open_mail(mailgate, send)
    row = recipients(mailgate, camp["id"])["nocompany@client.example"]
    assert (row["registered_id"], row["not_registered_reason"]) == (None, "missing_fields")

    click(mailgate, send, 2)
    lead = _only(mailgate, org, "leads", "nocompany@client.example")
    row = recipients(mailgate, camp["id"])["nocompany@client.example"]
    assert (row["registered_module"], row["registered_id"], row["not_registered_reason"]) == (
        "leads",
        lead["id"],
        None,
    )
    _none(mailgate, org, "contacts", "nocompany@client.example")


def test_why_was_this_contact_not_registered_each_reason(mailgate, org):
    api = _api(mailgate, org)
    in_leads = api.post(
        "/api/v1/leads", json={"last_name": "既存", "email": "Lead.Known@client.example"}
    ).json()
    in_contacts = api.post(
        "/api/v1/contacts", json={"last_name": "既存", "email": "contact.known@client.example"}
    ).json()
    people = [
        person("nofirst@client.example", "", "名無"),
        person("lead.known@client.example"),
        person("contact.known@client.example", company="既存商事"),
        person("idle@client.example"),
    ]
    camp = send_campaign(mailgate, *org, people, register={"opened": "contacts"})
    plain = send_campaign(
        mailgate,
        *org,
        [person("unlisted@client.example", company="X")],
        register={"opened": "contacts"},
        list_registers=False,
    )
    unrequested = send_campaign(
        mailgate,
        *org,
        [person("nobody.asked@client.example", company="X")],
        register={"opened": None, "clicked": None},
    )
    for p in people[:3]:
        open_mail(mailgate, camp["sends"][p["email"]])
    open_mail(mailgate, plain["sends"]["unlisted@client.example"])
    open_mail(mailgate, unrequested["sends"]["nobody.asked@client.example"])

    reasons = {e: r["not_registered_reason"] for e, r in recipients(mailgate, camp["id"]).items()}
    assert reasons == {
        "nofirst@client.example": "missing_fields",
        "lead.known@client.example": "already_in_crm",
        "contact.known@client.example": "already_in_crm",
        "idle@client.example": "no_activity",
    }
    [unlisted] = recipients(mailgate, plain["id"]).values()
    assert unlisted["not_registered_reason"] == "list_not_configured"
    [unasked] = recipients(mailgate, unrequested["id"]).values()
    assert (unasked["status"], unasked["not_registered_reason"]) == ("opened", "not_requested")
    assert _created_by_campaigns(mailgate, org) == []
    assert (
        scalar(
            mailgate,
            select(func.count()).select_from(contacts).where(contacts.c.org_id == org[0]["id"]),
        )
        == 1
    )
    # The records already in the CRM are linked: their history shows the campaign.
    rows_ = recipients(mailgate, camp["id"])
    assert (
        rows_["lead.known@client.example"]["module"],
        rows_["lead.known@client.example"]["record_id"],
    ) == ("leads", in_leads["id"])
    assert [i["status"] for i in _history(mailgate, org, "leads", in_leads["id"])] == ["opened"]
    assert [i["status"] for i in _history(mailgate, org, "contacts", in_contacts["id"])] == [
        "opened"
    ]


@pytest.mark.parametrize("ua", [SCANNER_UA, APPLE_MPP_UA])
def test_a_machine_open_registers_nothing_and_moves_no_status(mailgate, org, ua):
    camp = send_campaign(
        mailgate,
        *org,
        [person("scanned@client.example", company="C")],
        register={"opened": "leads", "clicked": "leads"},
    )
    send = camp["sends"]["scanned@client.example"]
    open_mail(mailgate, send, ua=ua)
    if ua == SCANNER_UA:
        click(mailgate, send, ua=ua)
    opened = events_of(mailgate, org[0]["id"], "email.opened")
    assert opened and {e["data"]["verdict"] for e in opened} == {"machine"}
    row = recipients(mailgate, camp["id"])["scanned@client.example"]
    assert (row["status"], row["opened_at"], row["clicked_at"]) == ("sent", None, None)
    assert (row["registered_id"], row["not_registered_reason"]) == (None, "no_activity")
    _none(mailgate, org, "leads", "scanned@client.example")


# -- statuses -------------------------------------------------------------------------


def test_recipient_status_is_the_strongest_activity_with_first_timestamps(mailgate, org):
    people = [person(f"{n}@client.example") for n in ("sent", "opened", "clicked", "soft", "hard")]
    camp = send_campaign(mailgate, *org, people)
    s = camp["sends"]
    open_mail(mailgate, s["opened@client.example"])
    click(mailgate, s["clicked@client.example"])
    first_click = recipients(mailgate, camp["id"])["clicked@client.example"]["clicked_at"]
    open_mail(mailgate, s["clicked@client.example"])  # an open after a click: still clicked
    click(mailgate, s["clicked@client.example"], 2)
    bounce(mailgate, s["soft@client.example"], hard=False)
    open_mail(mailgate, s["hard@client.example"])
    bounce(mailgate, s["hard@client.example"])

    got = {
        e: (r["status"], r["sent_at"] is not None)
        for e, r in recipients(mailgate, camp["id"]).items()
    }
    assert got == {
        "sent@client.example": ("sent", True),
        "opened@client.example": ("opened", True),
        "clicked@client.example": ("clicked", True),
        "soft@client.example": ("bounced", True),
        "hard@client.example": ("bounced", True),
    }
    rows_ = recipients(mailgate, camp["id"])
    assert rows_["clicked@client.example"]["clicked_at"] == first_click
    assert rows_["hard@client.example"]["opened_at"] is not None
    assert rows_["hard@client.example"]["bounced_at"] is not None
    # Member status: only the hard bounce ends the subscription.
    status = {m["email"]: m["status"] for m in members(mailgate, camp["list_id"])}
    assert status["soft@client.example"] == "subscribed"
    assert status["hard@client.example"] == "bounced"
    assert status["clicked@client.example"] == "subscribed"


def test_unsubscribe_and_complaint_end_membership_and_set_do_not_mail_on_the_record(mailgate, org):
    api = _api(mailgate, org)
    lead = api.post(
        "/api/v1/leads", json={"last_name": "配信", "email": "leaver@client.example"}
    ).json()
    contact = api.post(
        "/api/v1/contacts", json={"last_name": "苦情", "email": "angry@client.example"}
    ).json()
    camp = send_campaign(
        mailgate,
        *org,
        [
            person("leaver@client.example", module="leads", record_id=lead["id"]),
            person("angry@client.example"),
        ],
    )
    unsubscribe(mailgate, camp["sends"]["leaver@client.example"])
    complain(mailgate, camp["sends"]["angry@client.example"])

    assert api.get(f"/api/v1/leads/{lead['id']}").json()["do_not_mail"] is True
    assert api.get(f"/api/v1/contacts/{contact['id']}").json()["do_not_mail"] is True
    updated = [
        (e["data"]["module"], e["data"]["id"], e["data"]["changed"], e["data"]["source"])
        for e in events_of(mailgate, org[0]["id"], "record.updated")
    ]
    assert sorted(updated) == sorted(
        [
            ("leads", lead["id"], {"do_not_mail": True}, "campaigns"),
            ("contacts", contact["id"], {"do_not_mail": True}, "campaigns"),
        ]
    )
    rows_ = recipients(mailgate, camp["id"])
    assert rows_["leaver@client.example"]["status"] == "unsubscribed"
    assert rows_["angry@client.example"]["status"] == "complained"
    status = {
        m["email"]: (m["status"], m["status_at"] is not None)
        for m in members(mailgate, camp["list_id"])
    }
    assert status == {
        "leaver@client.example": ("unsubscribed", True),
        "angry@client.example": ("complained", True),
    }
    assert _history(mailgate, org, "leads", lead["id"])[0]["status"] == "unsubscribed"
    assert _history(mailgate, org, "contacts", contact["id"])[0]["status"] == "complained"


def test_a_record_already_do_not_mail_gets_no_second_update(mailgate, org):
    api = _api(mailgate, org)
    lead = api.post(
        "/api/v1/leads",
        json={"last_name": "既", "email": "already@client.example", "do_not_mail": True},
    ).json()
    camp = send_campaign(mailgate, *org, [person("already@client.example")])
    unsubscribe(mailgate, camp["sends"]["already@client.example"])
    assert events_of(mailgate, org[0]["id"], "record.updated") == []
    assert _history(mailgate, org, "leads", lead["id"])[0]["status"] == "unsubscribed"


# -- the record's campaign history ------------------------------------------------------------


def test_campaign_history_lists_newest_first_and_only_the_callers_records(mailgate, org):
    api = _api(mailgate, org)
    lead = api.post("/api/v1/leads", json={"last_name": "履歴", "email": "h@client.example"})
    lead = lead.json()
    older = send_campaign(mailgate, *org, [person("h@client.example")], name="秋のご案内")
    newer = send_campaign(mailgate, *org, [person("h@client.example")], name="冬のご案内")
    open_mail(mailgate, newer["sends"]["h@client.example"])
    items = _history(mailgate, org, "leads", lead["id"])
    assert [(i["campaign_id"], i["name"], i["status"]) for i in items] == [
        (newer["id"], "冬のご案内", "opened"),
        (older["id"], "秋のご案内", "sent"),
    ]
    assert set(items[0]) == {"campaign_id", "name", "status", "at"}

    other = mailgate.org(f"other-{secrets.token_hex(3)}")
    stranger = mailgate.api(mailgate.user(other, f"s{secrets.token_hex(3)}@other.example"))
    assert stranger.get(f"/api/v1/leads/{lead['id']}/campaigns").status_code == 404
    assert api.get("/api/v1/leads/999999999/campaigns").status_code == 404
    assert api.get("/api/v1/leads/abc/campaigns").status_code == 404
    assert api.get("/api/v1/accounts/1/campaigns").status_code == 404
    assert api.get(f"/api/v1/leads/{lead['id']}/campaigns?limit=0").status_code == 400
    for query in ("limit=x", "cursor=-1", "cursor=1e3", "limit=100000"):
        r = api.get(f"/api/v1/leads/{lead['id']}/campaigns?{query}")
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_parameter", query
    far = api.get(f"/api/v1/leads/{lead['id']}/campaigns?cursor={10**18}")
    assert far.status_code == 200 and far.json() == {"items": [], "next": None}
    page = api.get(f"/api/v1/leads/{lead['id']}/campaigns?limit=1").json()
    assert [i["campaign_id"] for i in page["items"]] == [newer["id"]] and page["next"] == "1"
    rest = api.get(f"/api/v1/leads/{lead['id']}/campaigns?limit=1&cursor=1").json()
    assert [i["campaign_id"] for i in rest["items"]] == [older["id"]] and rest["next"] is None
    assert stranger.get(f"/api/v1/leads/{lead['id']}").status_code == 404
    # The records API still answers its own routes beside these.
    assert api.get(f"/api/v1/leads/{lead['id']}/emails").status_code == 200


# -- the status field (seed 001) -------------------------------------------------------------


def test_status_field_setting_is_admin_only_and_validated(mailgate, org):
    api = _api(mailgate, org)
    assert api.get("/api/v1/campaign-crm-settings").json() == {
        "status_field": {"leads": None, "contacts": None}
    }
    rep = mailgate.api(mailgate.user(org[0], f"rep{secrets.token_hex(3)}@example.co.jp"))
    body = {"status_field": {"leads": "status", "contacts": "title"}}
    assert rep.put("/api/v1/campaign-crm-settings", json=body).status_code == 403
    for bad in (
        {"status_field": {"leads": "email"}},
        {"status_field": {"contacts": "status"}},
        {"status_field": {"deals": "stage"}},
        {"status_field": "title"},
        {"status_field": {"leads": 3}},
        {"other": 1},
    ):
        r = api.put("/api/v1/campaign-crm-settings", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] in ("invalid_field", "unknown_field")
    assert api.put("/api/v1/campaign-crm-settings", content=b"{nope").status_code == 400
    r = api.put("/api/v1/campaign-crm-settings", json=body)
    assert r.status_code == 200 and r.json() == body
    assert rep.get("/api/v1/campaign-crm-settings").json() == body


def test_the_chosen_field_follows_the_campaign_status(mailgate, org):
    api = _api(mailgate, org)
    api.put(
        "/api/v1/campaign-crm-settings",
        json={"status_field": {"leads": "status", "contacts": "title"}},
    )
    lead = api.post("/api/v1/leads", json={"last_name": "項目", "email": "f@client.example"})
    lead = lead.json()
    contact = api.post("/api/v1/contacts", json={"last_name": "項目", "email": "g@client.example"})
    contact = contact.json()
    camp = send_campaign(mailgate, *org, [person("f@client.example"), person("g@client.example")])
    assert api.get(f"/api/v1/leads/{lead['id']}").json()["status"] == "sent"
    click(mailgate, camp["sends"]["f@client.example"])
    open_mail(mailgate, camp["sends"]["g@client.example"])
    assert api.get(f"/api/v1/leads/{lead['id']}").json()["status"] == "clicked"
    assert api.get(f"/api/v1/contacts/{contact['id']}").json()["title"] == "opened"
    changes = [
        (e["data"]["module"], e["data"]["changed"])
        for e in events_of(mailgate, org[0]["id"], "record.updated")
    ]
    assert ("leads", {"status": "clicked"}) in changes
    assert ("contacts", {"title": "opened"}) in changes
    assert {e["data"]["source"] for e in events_of(mailgate, org[0]["id"], "record.updated")} == {
        "campaigns"
    }


# -- isolation and replay -------------------------------------------------------------------


def test_another_orgs_record_with_the_address_is_neither_linked_nor_changed(mailgate, org):
    other = mailgate.org(f"other-{secrets.token_hex(3)}")
    other_admin = mailgate.user(other, f"a{secrets.token_hex(3)}@other.example", admin=True)
    theirs = (
        mailgate.api(other_admin)
        .post("/api/v1/leads", json={"last_name": "他社", "email": "shared@client.example"})
        .json()
    )
    mailgate.api(other_admin).put(
        "/api/v1/campaign-crm-settings", json={"status_field": {"leads": "title"}}
    )
    camp = send_campaign(
        mailgate, *org, [person("shared@client.example")], register={"opened": "leads"}
    )
    open_mail(mailgate, camp["sends"]["shared@client.example"])
    unsubscribe(mailgate, camp["sends"]["shared@client.example"])

    ours = _only(mailgate, org, "leads", "shared@client.example")  # registered in our org
    assert ours["id"] != theirs["id"] and ours["do_not_mail"] is True
    assert ours["title"] == ""  # the other org's setting is not ours
    theirs_now = mailgate.api(other_admin).get(f"/api/v1/leads/{theirs['id']}").json()
    assert theirs_now["do_not_mail"] is False and theirs_now["title"] == ""
    assert _history(mailgate, (other, other_admin), "leads", theirs["id"]) == []
    assert events_of(mailgate, other["id"], "record.updated") == []


def _snapshot(mailgate, org_id: int) -> dict:
    def table(t, order):
        return rows(mailgate, select(t).where(t.c.org_id == org_id).order_by(order))

    return {
        "recipients": table(campaign_recipients, campaign_recipients.c.id),
        "members": table(list_members, list_members.c.id),
        "history": table(record_campaigns, record_campaigns.c.id),
        "leads": table(leads, leads.c.id),
        "contacts": table(contacts, contacts.c.id),
        "accounts": table(accounts, accounts.c.id),
        "events": scalar(
            mailgate, select(func.count()).select_from(events).where(events.c.org_id == org_id)
        ),
    }


def test_replaying_the_consumer_from_offset_zero_changes_nothing(mailgate, org):
    api = _api(mailgate, org)
    api.put("/api/v1/campaign-crm-settings", json={"status_field": {"leads": "title"}})
    api.post("/api/v1/contacts", json={"last_name": "既存", "email": "known@client.example"})
    camp = send_campaign(
        mailgate,
        *org,
        [
            person("lead@client.example"),
            person("contact@client.example", company="再生商事"),
            person("known@client.example"),
            person("gone@client.example"),
            person("angry@client.example"),
        ],
        register={"opened": "leads", "clicked": "contacts"},
    )
    s = camp["sends"]
    open_mail(mailgate, s["lead@client.example"])
    click(mailgate, s["contact@client.example"])
    open_mail(mailgate, s["known@client.example"])
    unsubscribe(mailgate, s["lead@client.example"])
    bounce(mailgate, s["gone@client.example"])
    complain(mailgate, s["angry@client.example"])
    before = _snapshot(mailgate, org[0]["id"])
    assert len(before["leads"]) == 1 and len(before["contacts"]) == 2

    assert replay(mailgate) > 0
    assert _snapshot(mailgate, org[0]["id"]) == before


def test_malformed_campaign_events_and_settings_are_passed_over_not_stalled_on(mailgate, org):
    """Events no recipient answers to, another org's send, a garbled ``register`` and
    ``list_ids``: each is passed over, and the good event after them still applies."""
    from sqlalchemy import update

    from storage import events as log
    from storage import payloads
    from storage.events import EventType
    from storage.schema_campaigns import campaigns

    camp = send_campaign(
        mailgate, *org, [person("garbled@client.example")], register={"opened": "leads"}
    )
    send = camp["sends"]["garbled@client.example"]
    other = mailgate.org(f"other-{secrets.token_hex(3)}")

    def garble(conn) -> None:
        conn.execute(
            update(campaigns)
            .where(campaigns.c.id == camp["id"])
            .values(register="leads", list_ids=["x", None, True, {"id": 1}])
        )
        human = {"verdict": "human", "reason": "no_machine_signal", "link_index": None}
        log.append_sync(
            conn,
            [
                # No recipient has this send; a campaign that does not exist; a foreign org.
                payloads.send_event(EventType.EMAIL_OPENED, {**send, "id": 10**12}, **human),
                payloads.send_event(
                    EventType.EMAIL_OPENED, {**send, "campaign_id": 10**12}, **human
                ),
                payloads.send_event(
                    EventType.EMAIL_OPENED, {**send, "org_id": other["id"]}, **human
                ),
                payloads.send_event(EventType.EMAIL_OPENED, {**send, "campaign_id": "1"}, **human),
                payloads.bounce_event(org[0]["id"], send=send, email=send["to_email"], kind="hard"),
            ],
        )

    mailgate.call(mailgate.db.run_write(garble))
    mailgate.drain_consumers()
    row = recipients(mailgate, camp["id"])["garbled@client.example"]
    assert (row["status"], row["opened_at"]) == ("bounced", None)
    # The garbled lists named no list: the member keeps its status; the consumer moved on.
    assert [m["status"] for m in members(mailgate, camp["list_id"])] == ["subscribed"]
    open_mail(mailgate, send)
    row = recipients(mailgate, camp["id"])["garbled@client.example"]
    # A register setting that is not an object names no target.
    assert (row["opened_at"] is not None, row["not_registered_reason"]) == (True, "not_requested")
    _none(mailgate, org, "leads", "garbled@client.example")

    def scalar_lists(conn) -> None:
        conn.execute(update(campaigns).where(campaigns.c.id == camp["id"]).values(list_ids=7))
        log.append_sync(
            conn,
            [payloads.bounce_event(org[0]["id"], send=send, email=send["to_email"], kind="hard")],
        )

    mailgate.call(mailgate.db.run_write(scalar_lists))
    mailgate.drain_consumers()
    unsubscribe(mailgate, send)  # the consumer is not stalled: the next event applies
    assert recipients(mailgate, camp["id"])["garbled@client.example"]["status"] == "unsubscribed"


def test_an_open_applied_after_the_unsubscribe_registers_a_do_not_mail_lead(mailgate, org):
    """The verdicts runner judges opens after a burst window, so a reader's open can reach
    the log after their unsubscribe: the lead it registers must not be mailable."""
    from storage import events as log
    from storage import payloads
    from storage.events import EventType

    camp = send_campaign(
        mailgate, *org, [person("late@client.example")], register={"opened": "leads"}
    )
    send = camp["sends"]["late@client.example"]

    def unsubscribe_then_open(conn) -> None:
        human = {"verdict": "human", "reason": "no_machine_signal", "link_index": None}
        log.append_sync(
            conn,
            [
                payloads.send_event(EventType.EMAIL_UNSUBSCRIBED, send, method="one_click"),
                payloads.send_event(EventType.EMAIL_OPENED, send, **human),
            ],
        )

    mailgate.call(mailgate.db.run_write(unsubscribe_then_open))
    mailgate.drain_consumers()
    lead = _only(mailgate, org, "leads", "late@client.example")
    assert lead["do_not_mail"] is True
    row = recipients(mailgate, camp["id"])["late@client.example"]
    assert (row["status"], row["registered_id"]) == ("unsubscribed", lead["id"])
    updated = [e["data"] for e in events_of(mailgate, org[0]["id"], "record.updated")]
    assert [(d["id"], d["changed"]) for d in updated] == [(lead["id"], {"do_not_mail": True})]
    assert replay(mailgate) > 0
    assert len(events_of(mailgate, org[0]["id"], "record.updated")) == 1
