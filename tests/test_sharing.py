"""Sharing: who sees whose filed mail, by seed 004's rules.

Private / custom / public per user; mail sent from the CRM is public whatever its
sender's mode (公開メール); mail with an excluded domain is filed but only its
owner sees it.  Every read path is checked: a record's emails, one email by id
(with ``/raw``) and the event log.
"""

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


def test_a_record_list_hides_private_owners_and_scopes_custom_ones_to_their_records():
    modes = {1: {"mode": "private"}, 2: {"mode": "custom"}, 3: {"mode": "public"}}
    modes[4] = {"mode": "custom"}  # chose no record: nothing of theirs is shared
    scope = sharing.record_scope(9, modes, {2: {("leads", 5)}, 4: set()})
    assert scope.viewer_id == 9
    assert scope.hidden == {1, 4}
    assert scope.partial == {2: frozenset({("leads", 5)})}
    assert set(scope.public_sources) == {"api", "campaign"}
    own = sharing.record_scope(1, modes, {2: {("leads", 5)}})
    assert 1 not in own.hidden and 1 not in own.partial


def test_crm_sent_mail_is_public_and_unshared_mail_is_its_owners_only():
    modes = {1: {"mode": "private"}, 2: {"mode": "custom"}}
    shares = {2: {("leads", 5)}}
    lead = {("leads", 5)}
    assert not sharing.sees_mail(9, 1, lead, modes, shares)
    assert sharing.sees_mail(9, 1, lead, modes, shares, crm_sent=True)
    assert sharing.sees_mail(9, 2, {("leads", 6), ("leads", 5)}, modes, shares)
    assert not sharing.sees_mail(9, 2, {("leads", 6)}, modes, shares)
    assert sharing.sees_mail(9, 2, {("leads", 6)}, modes, shares, crm_sent=True)
    # An excluded domain wins over every mode, the public default included.
    for owner in (1, 2, 3):
        assert not sharing.sees_mail(9, owner, lead, modes, shares, shared=False)
        assert sharing.sees_mail(owner, owner, lead, modes, shares, shared=False)
    assert sharing.is_crm_sent("api") and sharing.is_crm_sent("campaign")
    assert not any(sharing.is_crm_sent(s) for s in ("dropbox", "imap", "pop", None))


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


def dropbox(mg, user: dict, to: list[str], subject: str) -> None:
    """``user`` BCCs their dropbox on mail to ``to`` (From: their own address)."""
    msg = MIMEText(f"本文: {subject}")
    msg["From"] = mg.call(_email_of(mg, user["id"]))
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.jp>"
    with smtplib.SMTP("127.0.0.1", mg.smtp_port, timeout=30) as s:
        s.sendmail(msg["From"], [user["dropbox_address"]], msg.as_bytes())


def items(api, module: str, rid: int, **params) -> list[dict]:
    r = api.get(f"/api/v1/{module}/{rid}/emails", params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_mail_with_an_excluded_domain_is_filed_for_its_owner_and_shared_with_nobody(team):
    mg, api, people = team["mailgate"], team["api"], team["people"]
    r = api.put("/api/v1/excluded-domains", json={"domains": ["Secret.example.org"]})
    assert r.status_code == 200 and r.json()["domains"] == ["secret.example.org"]
    tag = uuid.uuid4().hex[:6]
    secret = api.post(
        "/api/v1/leads", json={"last_name": "x", "email": f"x{tag}@secret.example.org"}
    )
    other = api.post(
        "/api/v1/leads", json={"last_name": "y", "email": f"y{tag}@client.example.com"}
    )
    secret, other = secret.json(), other.json()
    owner = people["public"]  # public mode: only the exclusion can hide this mail
    dropbox(mg, owner, [secret["email"], other["email"]], f"excluded {tag}")
    mine = mg.api(owner)
    filed = wait_until(lambda: items(mine, "leads", secret["id"]))
    assert [e["subject"] for e in filed] == [f"excluded {tag}"]
    assert filed[0]["shared"] is False and filed[0]["source"] == "dropbox"
    eid = filed[0]["id"]
    # The whole message is unshared: on its other record too.
    assert [e["id"] for e in items(mine, "leads", other["id"])] == [eid]
    body = mine.get(f"/api/v1/emails/{eid}").json()
    assert body["shared"] is False and "本文" in body["text"]
    assert mine.get(f"/api/v1/emails/{eid}/raw").status_code == 200
    assert any(
        e["type"] == "email.filed" and e["data"]["message_id"] == eid for e in event_log(mine)
    )
    for colleague in (api, mg.api(people["custom"])):  # an admin included
        assert items(colleague, "leads", secret["id"]) == []
        assert items(colleague, "leads", other["id"]) == []
        for path in ("", "/raw", "/attachments/0"):
            r = colleague.get(f"/api/v1/emails/{eid}{path}")
            assert r.status_code == 404 and tag not in r.text, path
        log = event_log(colleague)
        assert all(e["data"].get("message_id") != eid for e in log if e["type"] == "email.filed")
        assert all(tag not in str(e["data"]) for e in log if e["type"].startswith("email."))
    r = mg.api(people["private"]).put("/api/v1/excluded-domains", json={"domains": []})
    assert r.status_code == 403
    assert api.put("/api/v1/excluded-domains", json={"domains": []}).status_code == 200


def test_custom_mail_is_shared_on_every_record_it_is_filed_on(team):
    """A message to a chosen record and another one is shared mail: it shows on both,
    as it opens by id (the list and the email agree)."""
    mg, api, people = team["mailgate"], team["api"], team["people"]
    tag = uuid.uuid4().hex[:6]
    chosen, other = (
        api.post(
            "/api/v1/leads", json={"last_name": n, "email": f"{n}{tag}@client.example.com"}
        ).json()
        for n in ("chosen", "other")
    )
    custom = people["custom"]
    dropbox(mg, custom, [chosen["email"], other["email"]], f"both {tag}")
    dropbox(mg, custom, [other["email"]], f"other only {tag}")
    wait_until(lambda: len(items(mg.api(custom), "leads", other["id"])) == 2)
    body = {"mode": "custom", "records": [{"module": "leads", "id": chosen["id"]}]}
    assert api.put(f"/api/v1/users/{custom['id']}/sharing", json=body).status_code == 200
    try:
        seen = {e["subject"]: e["id"] for e in items(api, "leads", other["id"])}
        assert set(seen) == {f"both {tag}"}
        assert api.get(f"/api/v1/emails/{seen[f'both {tag}']}").status_code == 200
        assert [e["subject"] for e in items(api, "leads", chosen["id"])] == [f"both {tag}"]
    finally:
        body = {"mode": "custom", "records": [{"module": "leads", "id": team["leads"][0]["id"]}]}
        api.put(f"/api/v1/users/{custom['id']}/sharing", json=body)


async def _email_of(mg, user_id: int) -> str:
    from storage import orgs

    async with mg.db.connect() as conn:
        return (await orgs.get_user(conn, user_id))["email"]


# -- every read path: the event log ------------------------------------------------------


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


def test_a_private_reps_send_from_the_crm_is_public_and_their_other_mail_stays_hidden(team):
    mg, people, api = team["mailgate"], team["people"], team["api"]
    rep_user = people["private"]
    r = api.put(f"/api/v1/users/{rep_user['id']}/sharing", json={"mode": "private"})
    assert r.status_code == 200, r.text
    rep = mg.api(rep_user)
    lead = team["leads"][0]
    r = rep.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead["id"]}], "subject": "公開の提案", "text": "x"},
    )
    assert r.status_code == 202, r.text
    sid = r.json()["sends"][0]["id"]
    own = {e["subject"]: e for e in items(rep, "leads", lead["id"])}
    dropbox_id = own["private->one"]["id"]
    for colleague in (api, mg.api(people["public"])):
        seen = {e["subject"]: e for e in items(colleague, "leads", lead["id"])}
        copy = seen["公開の提案"]
        assert copy["send_id"] == sid and copy["user_id"] == rep_user["id"]
        assert copy["source"] == "api" and copy["crm_sent"] is True and copy["shared"] is True
        assert colleague.get(f"/api/v1/emails/{copy['id']}").json()["subject"] == "公開の提案"
        log = event_log(colleague)
        assert any(e["type"] == "email.filed" and e["data"].get("send_id") == sid for e in log)
        # The same rep's dropbox mail on the same record is still theirs alone.
        assert "private->one" not in seen
        assert colleague.get(f"/api/v1/emails/{dropbox_id}").status_code == 404
        assert all(e["data"].get("message_id") != dropbox_id for e in log)
        assert [e["subject"] for e in items(colleague, "leads", lead["id"], source="crm")] == [
            "公開の提案"
        ]


def test_event_visibility_rules_are_pure():
    modes = {1: {"mode": "private"}, 2: {"mode": "custom"}}
    shares = {2: {("leads", 5)}}
    filed = {"user_id": 2, "records": [{"module": "leads", "id": 5}], "subject": "s"}
    assert sharing.sees_event(9, "email.filed", filed, modes, shares)
    assert not sharing.sees_event(9, "email.filed", {**filed, "records": []}, modes, shares)
    # Mail sent from the CRM is public: a private rep's send and its filed copy.
    assert sharing.sees_event(9, "email.sent", {"user_id": 1, "module": "leads"}, modes, {})
    assert sharing.sees_event(9, "email.opened", {"user_id": 1}, modes, {})
    crm_copy = {"user_id": 1, "source": "api", "records": [], "shared": True}
    assert sharing.sees_event(9, "email.filed", crm_copy, modes, {})
    # A private rep's own mail (dropbox, IMAP) and the replies to it are not.
    assert not sharing.sees_event(9, "email.filed", {**crm_copy, "source": "imap"}, modes, {})
    assert not sharing.sees_event(9, "email.received", {"user_id": 1}, modes, {})
    assert not sharing.sees_event(9, "email.replied", {"user_id": 1, "module": "leads"}, modes, {})
    # An excluded domain: its owner only, whatever the mode or source.
    public_owner = {"user_id": 3, "records": [], "source": "dropbox", "shared": False}
    assert not sharing.sees_event(9, "email.filed", public_owner, modes, {})
    assert not sharing.sees_event(9, "email.received", public_owner, modes, {})
    assert sharing.sees_event(3, "email.filed", public_owner, modes, {})
    # Events written before 0013 carry no ``shared``: shared, as all mail then was.
    assert sharing.sees_event(9, "email.received", {"user_id": 3}, modes, {})
    assert sharing.sees_event(1, "email.sent", {"user_id": 1}, modes, {})
    assert sharing.sees_event(9, "record.created", {"user_id": 1}, modes, {})
    assert sharing.sees_event(9, "email.sent", {"user_id": None}, modes, {})
