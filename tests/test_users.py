"""Users deactivated and reactivated by an org admin, over the running server.

What a deactivated user notices (their token gets 401, their dropbox 550) and
what the org notices (the seat is free again: quotas, shared addresses, the
free plan's four users), each through HTTP or SMTP as a user meets it.
"""

from __future__ import annotations

import smtplib
import uuid
from email.mime.text import MIMEText

import pytest

from gateway.receive.mailboxes.service import MailboxService, MailboxSupervisor
from tests.support.server import MAIL_DOMAIN


def _name() -> str:
    return f"Org {uuid.uuid4().hex[:8]}"


def _mail(frm: str, to: str, subject: str = "ご提案の件") -> bytes:
    msg = MIMEText("本文です", "plain", "utf-8")
    msg["From"], msg["To"], msg["Subject"] = frm, to, subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.jp>"
    return msg.as_bytes()


def rcpt(mailgate, mail_from: str, address: str) -> int:
    """The RCPT TO reply code for ``address`` (no DATA: nothing is stored)."""
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as s:
        s.ehlo()
        s.mail(mail_from)
        code, _ = s.rcpt(address)
        s.rset()
    return code


@pytest.fixture
def team(mailgate):
    """An org with an admin and a rep (each with a token), on the professional plan."""
    org = mailgate.org(_name(), domains=["acme.co.jp"])
    boss = mailgate.user(org, "boss@acme.co.jp", "社長 一郎", admin=True)
    rep = mailgate.user(org, "rep@acme.co.jp", "営業 花子")
    return {"org": org, "boss": boss, "rep": rep, "admin": mailgate.api(boss)}


def deactivate(api, user_id: int, expect: int = 200) -> dict:
    r = api.post(f"/api/v1/users/{user_id}/deactivate")
    assert r.status_code == expect, r.text
    return r.json()


def activate(api, user_id: int, expect: int = 200) -> dict:
    r = api.post(f"/api/v1/users/{user_id}/activate")
    assert r.status_code == expect, r.text
    return r.json()


def test_an_admin_lists_the_orgs_users_with_when_they_were_deactivated(mailgate, team):
    api, rep = team["admin"], team["rep"]
    before = api.get("/api/v1/users").json()["items"]
    assert [(u["email"], u["active"], u["deactivated_at"]) for u in before] == [
        ("boss@acme.co.jp", True, None),
        ("rep@acme.co.jp", True, None),
    ]
    assert "api_token" not in before[0] and "dropbox_token" not in before[0]

    gone = deactivate(api, rep["id"])
    assert gone["active"] is False and gone["deactivated_at"]
    listed = {u["id"]: u for u in api.get("/api/v1/users").json()["items"]}
    assert listed[rep["id"]]["active"] is False
    assert listed[rep["id"]]["deactivated_at"] == gone["deactivated_at"]

    back = activate(api, rep["id"])
    assert back["active"] is True and back["deactivated_at"] is None


def test_a_rep_who_is_not_admin_cannot_list_or_deactivate_users(mailgate, team):
    rep_api = mailgate.api(team["rep"])
    assert rep_api.get("/api/v1/users").status_code == 403
    r = rep_api.post(f"/api/v1/users/{team['boss']['id']}/deactivate")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_another_orgs_user_is_not_found(mailgate, team):
    other = mailgate.org(_name())
    stranger = mailgate.user(other, "someone@other.jp", "他社 太郎", admin=True)
    for path in ("deactivate", "activate"):
        r = team["admin"].post(f"/api/v1/users/{stranger['id']}/{path}")
        assert r.status_code == 404, r.text
    r = team["admin"].patch(f"/api/v1/users/{stranger['id']}/dropbox", json={"setting": "none"})
    assert r.status_code == 404
    assert team["admin"].post("/api/v1/users/abc/deactivate").status_code == 404
    # The stranger is untouched.
    assert mailgate.api(stranger).get("/api/v1/users").status_code == 200


def test_a_deactivated_users_token_gets_401_at_once_and_works_again_after_reactivation(
    mailgate, team
):
    rep_api = mailgate.api(team["rep"])
    assert rep_api.get("/api/v1/quota").status_code == 200
    deactivate(team["admin"], team["rep"]["id"])
    r = rep_api.get("/api/v1/quota")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    activate(team["admin"], team["rep"]["id"])
    assert rep_api.get("/api/v1/quota").status_code == 200


def test_a_deactivated_users_dropbox_is_refused_over_smtp_at_once(mailgate, team):
    rep = team["rep"]
    # Accepted once: the receiver now holds the owner in its cache.
    assert rcpt(mailgate, "rep@acme.co.jp", rep["dropbox_address"]) == 250
    deactivate(team["admin"], rep["id"])
    assert rcpt(mailgate, "rep@acme.co.jp", rep["dropbox_address"]) == 550
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            s.sendmail(
                "rep@acme.co.jp",
                [rep["dropbox_address"]],
                _mail("rep@acme.co.jp", "x@customer.jp"),
            )
    assert refused.value.recipients[rep["dropbox_address"]][0] == 550
    activate(team["admin"], rep["id"])
    assert rcpt(mailgate, "rep@acme.co.jp", rep["dropbox_address"]) == 250


def test_a_deactivated_seat_no_longer_counts_toward_the_individual_quota(mailgate, team):
    api = team["admin"]
    assert api.get("/api/v1/quota").json()["individual"]["limit"] == 600  # 2 × 300
    deactivate(api, team["rep"]["id"])
    assert api.get("/api/v1/quota").json()["individual"]["limit"] == 300
    activate(api, team["rep"]["id"])
    assert api.get("/api/v1/quota").json()["individual"]["limit"] == 600


def test_a_deactivated_seat_no_longer_counts_toward_shared_addresses(mailgate, team):
    api = team["admin"]
    for i in range(11):  # 2 active users: 20 allowed
        r = api.post("/api/v1/org-addresses", json={"email": f"desk{i}@acme.co.jp"})
        assert r.status_code == 201, r.text
    deactivate(api, team["rep"]["id"])  # 1 active user: 10 allowed, 11 held
    r = api.post("/api/v1/org-addresses", json={"email": "desk11@acme.co.jp"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "limit_reached"
    assert "1 active" in r.json()["error"]["message"]


def test_a_free_org_at_its_cap_can_replace_a_deactivated_user_but_not_bring_them_back(
    mailgate,
):
    org = mailgate.org(_name(), plan="free")
    boss = mailgate.user(org, "boss@tiny.jp", "B", admin=True)
    staff = [mailgate.user(org, f"u{i}@tiny.jp", "U") for i in range(3)]
    api = mailgate.api(boss)
    with pytest.raises(Exception, match="at most 4 active users"):
        mailgate.user(org, "fifth@tiny.jp", "F")

    deactivate(api, staff[0]["id"])
    replacement = mailgate.user(org, "fifth@tiny.jp", "F")
    assert replacement["dropbox_address"].endswith("@" + MAIL_DOMAIN)

    r = api.post(f"/api/v1/users/{staff[0]['id']}/activate")
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "user_cap_reached"
    assert "4 active users" in r.json()["error"]["message"]
    listed = {u["id"]: u["active"] for u in api.get("/api/v1/users").json()["items"]}
    assert listed[staff[0]["id"]] is False


def test_the_last_active_admin_cannot_deactivate_themselves(mailgate, team):
    api, boss = team["admin"], team["boss"]
    r = api.post(f"/api/v1/users/{boss['id']}/deactivate")
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin"
    assert api.get("/api/v1/quota").status_code == 200  # still in

    second = mailgate.user(team["org"], "vice@acme.co.jp", "副 社長", admin=True)
    deactivate(api, boss["id"])  # another admin remains: allowed
    assert api.get("/api/v1/users").status_code == 401
    assert mailgate.api(second).get("/api/v1/users").status_code == 200


def test_a_deactivated_users_filed_mail_stays_theirs(mailgate, team):
    api, rep = team["admin"], team["rep"]
    lead = api.post(
        "/api/v1/leads", json={"last_name": "顧客", "email": "kokyaku@customer.example.jp"}
    ).json()
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as s:
        s.sendmail(
            "rep@acme.co.jp",
            [rep["dropbox_address"]],
            _mail("rep@acme.co.jp", "kokyaku@customer.example.jp", "見積もり"),
        )
    mailgate.settle()
    deactivate(api, rep["id"])
    items = api.get(f"/api/v1/leads/{lead['id']}/emails").json()["items"]
    assert [(m["subject"], m["user_id"]) for m in items] == [("見積もり", rep["id"])]
    r = api.get(f"/api/v1/emails/{items[0]['id']}")
    assert r.status_code == 200 and r.json()["subject"] == "見積もり"


def test_a_deactivated_users_mailboxes_stop_polling(mailgate, team):
    """The supervisor runs a poller for an active user's mailbox, none for a deactivated one's."""
    rep = team["rep"]
    services = mailgate.running.services
    service = MailboxService(
        services.db, services.spool, services.settings, clock=services.follow_clock
    )

    async def add_mailbox() -> int:
        added = await service.add(
            team["org"]["id"],
            rep["id"],
            # Port 9 (discard): nothing answers; the poller just records an error and retries.
            {"host": "127.0.0.1", "port": 9, "login": "rep", "password": "pw", "security": "none"},
        )
        return added["id"]

    async def round_(supervisor: MailboxSupervisor) -> set[int]:
        await supervisor.run_once()
        return set(supervisor.tasks)

    async def stop(supervisor: MailboxSupervisor) -> None:
        await supervisor.stop(1.0)  # stops, hands back and closes (every poller)

    mailbox_id = mailgate.call(add_mailbox())
    supervisor = MailboxSupervisor(service)
    try:
        assert mailbox_id in mailgate.call(round_(supervisor))
        deactivate(team["admin"], rep["id"])
        assert mailbox_id not in mailgate.call(round_(supervisor))
        activate(team["admin"], rep["id"])
        assert mailbox_id in mailgate.call(round_(supervisor))
    finally:
        mailgate.call(stop(supervisor))
