"""Sharing: who sees whose filed mail (private / custom / public, excluded domains)."""

from __future__ import annotations

import smtplib
import uuid
from email.mime.text import MIMEText

import pytest

from gateway.receive.mailboxes import sharing
from tests.support.server import wait_until

# -- the rules (pure) -------------------------------------------------------------


def test_everyone_sees_their_own_mail_whatever_their_mode():
    for mode in sharing.MODES:
        assert sharing.can_see(1, 1, mode, shares_record=False)


def test_private_mail_is_hidden_custom_only_on_chosen_records_public_everywhere():
    assert not sharing.can_see(2, 1, "private", shares_record=True)
    assert sharing.can_see(2, 1, "custom", shares_record=True)
    assert not sharing.can_see(2, 1, "custom", shares_record=False)
    assert sharing.can_see(2, 1, "public", shares_record=False)


def test_mail_with_no_owner_is_visible_to_all():
    assert sharing.can_see(2, None, "private", shares_record=False)


def test_hidden_owners_lists_only_those_the_viewer_may_not_see():
    modes = {1: {"mode": "private"}, 2: {"mode": "custom"}, 3: {"mode": "public"}}
    assert sharing.hidden_owners(9, modes, custom_sharers={2}) == {1}
    assert sharing.hidden_owners(9, modes, custom_sharers=set()) == {1, 2}
    assert sharing.hidden_owners(1, modes, custom_sharers=set()) == {2}


def test_only_admins_or_delegated_users_change_sharing():
    admin = {"id": 1, "is_admin": True}
    user = {"id": 2, "is_admin": False}
    assert sharing.may_change(admin, 2, delegated=False)
    assert not sharing.may_change(user, 2, delegated=False)
    assert sharing.may_change(user, 2, delegated=True)
    assert not sharing.may_change(user, 3, delegated=True)


# -- over the API, with dropbox-filed mail ----------------------------------------------


@pytest.fixture(scope="module")
def team(mailgate):
    tag = uuid.uuid4().hex[:6]
    domain = f"{tag}.example.jp"
    org = mailgate.org(f"Team {tag}", domains=[domain])
    boss = mailgate.user(org, f"boss@{domain}", "管理 者", admin=True)
    people = {
        name: mailgate.user(org, f"{name}@{domain}", f"{name} san")
        for name in ("private", "custom", "public")
    }
    api = mailgate.api(boss)
    leads = [
        api.post("/api/v1/leads", json={"last_name": n, "email": f"{n}@client.example.com"}).json()
        for n in ("one", "two")
    ]
    # Each user mails both leads through their dropbox.
    for name, user in people.items():
        for lead in leads:
            msg = MIMEText(f"{name} to {lead['email']}")
            msg["From"] = f"{name}@{domain}"
            msg["To"] = lead["email"]
            msg["Subject"] = f"{name}->{lead['last_name']}"
            msg["Message-ID"] = f"<{uuid.uuid4().hex}@{domain}>"
            with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as s:
                s.sendmail(f"{name}@{domain}", [user["dropbox_address"]], msg.as_bytes())
    settings = {
        "private": {"mode": "private"},
        "custom": {"mode": "custom", "records": [{"module": "leads", "id": leads[0]["id"]}]},
        "public": {"mode": "public"},
    }
    for name, body in settings.items():
        r = api.put(f"/api/v1/users/{people[name]['id']}/sharing", json=body)
        assert r.status_code == 200, r.text
    wait_until(lambda: len(subjects(api, leads[1])) >= 1)
    return {"mailgate": mailgate, "boss": boss, "people": people, "leads": leads, "api": api}


def subjects(api, lead) -> set[str]:
    r = api.get(f"/api/v1/leads/{lead['id']}/emails")
    assert r.status_code == 200, r.text
    return {e["subject"] for e in r.json()["items"]}


def test_each_user_sees_their_own_mail_plus_what_others_share(team):
    mg, people, (one, two) = team["mailgate"], team["people"], team["leads"]
    for name, user in people.items():
        api = mg.api(user)
        seen_one, seen_two = subjects(api, one), subjects(api, two)
        own = {f"{name}->one"}, {f"{name}->two"}
        assert own[0] <= seen_one and own[1] <= seen_two
        # others: private never, custom only on lead one, public everywhere
        assert ("private->one" in seen_one) == (name == "private")
        assert ("private->two" in seen_two) == (name == "private")
        assert "custom->one" in seen_one
        assert ("custom->two" in seen_two) == (name == "custom")
        assert "public->one" in seen_one and "public->two" in seen_two
    boss = subjects(team["api"], one) | subjects(team["api"], two)
    assert boss == {"custom->one", "public->one", "public->two"}


def test_a_user_cannot_change_their_sharing_unless_delegated(team):
    mg, people = team["mailgate"], team["people"]
    user = people["private"]
    api = mg.api(user)
    r = api.put(f"/api/v1/users/{user['id']}/sharing", json={"mode": "public"})
    assert r.status_code == 403
    r = team["api"].put(
        f"/api/v1/users/{user['id']}/sharing", json={"mode": "private", "delegated": True}
    )
    assert r.status_code == 200 and r.json()["delegated"] is True
    r = api.put(f"/api/v1/users/{user['id']}/sharing", json={"mode": "private"})
    assert r.status_code == 200
    r = api.put(f"/api/v1/users/{people['public']['id']}/sharing", json={"mode": "private"})
    assert r.status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {"mode": "everyone"},
        {},
        {"mode": "custom", "records": "all"},
        {"mode": "custom", "records": [{"module": "deals", "id": 1}]},
        {"mode": "custom", "records": [{"module": "leads", "id": 10**30}]},
        {"mode": "custom", "records": [{"module": "leads", "id": 999999999}]},
        {"mode": "public", "extra": 1},
    ],
)
def test_bad_sharing_settings_get_422(team, body):
    target = team["people"]["public"]["id"]
    r = team["api"].put(f"/api/v1/users/{target}/sharing", json=body)
    assert r.status_code == 422, r.text


def test_mail_with_an_excluded_domain_is_never_filed(team):
    mg, api = team["mailgate"], team["api"]
    r = api.put("/api/v1/excluded-domains", json={"domains": ["Secret.example.org"]})
    assert r.status_code == 200 and r.json()["domains"] == ["secret.example.org"]
    lead = api.post("/api/v1/leads", json={"last_name": "x", "email": "x@secret.example.org"})
    lead = lead.json()
    user = team["people"]["public"]
    msg = MIMEText("confidential")
    msg["From"] = mg.call(_email_of(mg, user["id"]))
    msg["To"] = "x@secret.example.org"
    msg["Subject"] = "excluded"
    with smtplib.SMTP("127.0.0.1", mg.smtp_port, timeout=30) as s:
        s.sendmail(msg["From"], [user["dropbox_address"]], msg.as_bytes())
    assert subjects(api, lead) == set()
    r = mg.api(team["people"]["private"]).put("/api/v1/excluded-domains", json={"domains": []})
    assert r.status_code == 403


async def _email_of(mg, user_id: int) -> str:
    from storage import orgs

    async with mg.db.connect() as conn:
        return (await orgs.get_user(conn, user_id))["email"]


# -- every read path: the event log and single sends -------------------------------------


def event_log(api) -> list[dict]:
    """The whole log as this caller may read it, paged by ``next`` the way a script does."""
    items, after = [], 0
    while True:
        r = api.get("/api/v1/events", params={"after": after, "limit": 7})
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        if page["next"] is None:
            return items
        after = page["next"]


def filed_subjects(api) -> set[str]:
    return {e["data"]["subject"] for e in event_log(api) if e["type"] == "email.filed"}


def test_the_event_log_hides_a_private_colleagues_mail(team):
    mg, people, api = team["mailgate"], team["people"], team["api"]
    r = api.put(f"/api/v1/users/{people['private']['id']}/sharing", json={"mode": "private"})
    assert r.status_code == 200, r.text
    boss = filed_subjects(api)
    assert not {s for s in boss if s.startswith("private->")}
    # Custom sharing holds in the log as on the record: lead one only.
    assert {"custom->one", "public->one", "public->two"} <= boss
    assert "custom->two" not in boss
    own = filed_subjects(mg.api(people["private"]))
    assert {"private->one", "private->two"} <= own


def test_a_private_colleagues_send_is_not_found_nor_in_the_log(team):
    mg, people, api = team["mailgate"], team["people"], team["api"]
    r = api.put(f"/api/v1/users/{people['private']['id']}/sharing", json={"mode": "private"})
    assert r.status_code == 200, r.text
    rep = mg.api(people["private"])
    lead = team["leads"][0]
    r = rep.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead["id"]}], "subject": "内密の提案", "text": "x"},
    )
    assert r.status_code == 202, r.text
    sid = r.json()["sends"][0]["id"]
    assert rep.get(f"/api/v1/sends/{sid}").json()["subject"] == "内密の提案"
    for colleague in (api, mg.api(people["public"])):
        r = colleague.get(f"/api/v1/sends/{sid}")
        assert r.status_code == 404, r.text
        assert "内密" not in r.text
        assert all("内密" not in str(e["data"]) for e in event_log(colleague))
        assert all(e["data"].get("send_id") != sid for e in event_log(colleague))
    assert any(e["data"].get("send_id") == sid for e in event_log(rep))
    # Made public again, the same send is readable by all.
    r = api.put(f"/api/v1/users/{people['private']['id']}/sharing", json={"mode": "public"})
    assert api.get(f"/api/v1/sends/{sid}").status_code == 200
    api.put(f"/api/v1/users/{people['private']['id']}/sharing", json={"mode": "private"})


def test_event_visibility_rules_are_pure():
    modes = {1: {"mode": "private"}, 2: {"mode": "custom"}}
    shares = {2: {("leads", 5)}}
    filed = {"user_id": 2, "records": [{"module": "leads", "id": 5}], "subject": "s"}
    assert sharing.sees_event(9, "email.filed", filed, modes, shares)
    assert not sharing.sees_event(9, "email.filed", {**filed, "records": []}, modes, shares)
    assert not sharing.sees_event(9, "email.sent", {"user_id": 1, "module": "leads"}, modes, {})
    assert sharing.sees_event(1, "email.sent", {"user_id": 1}, modes, {})
    assert sharing.sees_event(9, "record.created", {"user_id": 1}, modes, {})
    assert sharing.sees_event(9, "email.sent", {"user_id": None}, modes, {})
