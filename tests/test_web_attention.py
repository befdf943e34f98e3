"""/attention and bounce mail that belongs to no org, through the running server (httpx).

A bounce no send could be found for is held with no org.  The installation's
operators (``MAILGATE_OPERATORS``) see it on /attention and replay it there,
whatever the number of orgs; the admin of the only org of a single-org install
does too (nobody else's mail can be in it); nobody else ever sees it: an org
admin of a multi-org install who is no operator neither lists nor replays it.
"""

from __future__ import annotations

import re

import pytest

from storage import inbound_store
from tests.support.databases import fresh_database
from tests.support.server import MailgateServer
from tests.support.web import csrf_of, login, new_member, with_password
from tests.test_web_dropbox import keep

OPS = "ops@operator.example.jp"  # an operator and the admin of the operators' org
WATCH = "watch@operator.example.jp"  # an operator who administers no org


@pytest.fixture(scope="module")
def install(database_url, tmp_path_factory):
    """A multi-org install with two operators."""
    server = MailgateServer(
        database_url, tmp_path_factory.mktemp("data"), operators=f"{OPS.upper()}, {WATCH}"
    ).start()
    org = server.org("運用チーム", domains=["operator.example.jp"])
    server.ops_org, server.ops = org, {}
    for address, is_admin in ((OPS, True), (WATCH, False)):
        server.ops[address] = server.user(org, address, "運用 太郎", admin=is_admin)
        with_password(server, server.ops[address])
    yield server
    server.stop()


def listed(client) -> tuple[list[int], str]:
    """The row ids /attention lists, and the page."""
    r = client.get("/attention")
    assert r.status_code == 200, r.text
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', r.text)], r.text


def replay(client, inbound_id: int):
    token = csrf_of(client.get("/attention").text)
    return client.post(
        "/attention/replay", data={"csrf": token, "id": str(inbound_id), "confirm": "yes"}
    )


def state_of(server: MailgateServer, inbound_id: int) -> str:
    return server.call(server.db.run_read(inbound_store.get, inbound_id))["state"]


def unowned_bounce(server: MailgateServer) -> int:
    return keep(server, None, None, channel="bounce", state="held", last_error="no send found")


def test_an_operator_sees_bounce_mail_of_no_org_beside_their_orgs_and_replays_it(install):
    customer, customer_admin = new_member(install)
    theirs = keep(install, customer, customer_admin)
    ours = keep(install, install.ops_org, None, channel="bounce", state="held", last_error="x")
    unowned = unowned_bounce(install)
    client = login(install, install.ops[OPS], **{"Accept-Language": "en"})
    ids, page = listed(client)
    assert unowned in ids and ours in ids and theirs not in ids
    assert "Bounce of no organisation" in page and "(MAILGATE_OPERATORS)" not in page
    japanese = login(install, install.ops[OPS], **{"Accept-Language": "ja"}).get("/attention")
    assert "組織不明のバウンス" in japanese.text
    r = replay(client, unowned)
    assert (
        r.status_code == 303 and r.headers["location"] == f"/attention?done=replayed&id={unowned}"
    )
    assert f"Message {unowned} was processed again." in client.get(r.headers["location"]).text
    assert state_of(install, unowned) in ("pending", "held")  # back in the bounce worker's queue
    assert replay(client, theirs).status_code == 404  # another org's mail stays theirs
    assert state_of(install, theirs) == "refused"


def test_an_operator_who_administers_no_org_sees_only_bounce_mail_of_no_org(install):
    ours = keep(install, install.ops_org, None, channel="bounce", state="held", last_error="x")
    unowned = unowned_bounce(install)
    client = login(install, install.ops[WATCH], **{"Accept-Language": "en"})
    ids, _ = listed(client)
    assert unowned in ids and ours not in ids
    assert replay(client, ours).status_code == 404
    assert replay(client, unowned).status_code == 303
    # The menu leads them there although they administer no org.
    assert 'href="/attention"' in client.get("/dropbox").text


def test_an_org_admin_who_is_not_an_operator_never_sees_bounce_mail_of_no_org(install):
    customer, customer_admin = new_member(install)
    _, rep = new_member(install, admin_user=False, org=customer)
    theirs = keep(install, customer, rep)
    unowned = unowned_bounce(install)
    client = login(install, customer_admin, **{"Accept-Language": "en"})
    ids, page = listed(client)
    assert theirs in ids and unowned not in ids
    assert "operators (MAILGATE_OPERATORS) only" in page
    assert replay(client, unowned).status_code == 404
    assert state_of(install, unowned) == "held"
    member = login(install, rep, **{"Accept-Language": "en"})
    assert 'href="/attention"' not in member.get("/dropbox").text  # not in a member's menu
    assert member.get("/attention").status_code == 403
    token = csrf_of(member.get("/dropbox").text)
    r = member.post("/attention/replay", data={"csrf": token, "id": unowned, "confirm": "yes"})
    assert r.status_code == 403


@pytest.fixture(params=["sqlite", "postgresql"])
def single_org_install(request, tmp_path_factory):
    """An install holding one org, with no operators."""
    with fresh_database(request.param, tmp_path_factory.mktemp("db")) as url:
        server = MailgateServer(url, tmp_path_factory.mktemp("data")).start()
        try:
            yield server
        finally:
            server.stop()


def test_the_only_orgs_admin_sees_bounce_mail_of_no_org_in_a_single_org_install(
    single_org_install,
):
    server = single_org_install
    _, admin_user = new_member(server)
    unowned = unowned_bounce(server)
    client = login(server, admin_user, **{"Accept-Language": "en"})
    ids, page = listed(client)
    assert ids == [unowned] and "Bounce of no organisation" in page
    assert replay(client, unowned).status_code == 303
