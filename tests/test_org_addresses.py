"""Organization From addresses (support@ …): managed over the API and the CLI, used by sending.

A real mailgate (HTTP role) over a fresh SQLite or PostgreSQL database; the
CLI runs as a subprocess against the same database.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.server import MailgateServer
from tests.test_cli import Mailgate


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory):
    # No worker: sends stay queued, which is all these tests look at.
    server = MailgateServer(database_url, tmp_path_factory.mktemp("data")).start({"http"})
    yield server
    server.stop()


class Org:
    """An org with an admin and a plain user, each with an API client."""

    def __init__(self, gate: MailgateServer) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.gate = gate
        self.org = gate.org(f"Org {self.tag}")
        self.admin = gate.user(self.org, f"boss@{self.tag}.example.jp", admin=True)
        self.api = gate.api(self.admin)

    def member(self) -> dict:
        return self.gate.user(self.org, f"rep-{uuid.uuid4().hex[:6]}@{self.tag}.example.jp")

    def address(self, local: str = "support") -> str:
        return f"{local}@{self.tag}.example.jp"

    def add(self, email: str, name: str | None = None, api=None):
        body = {"email": email} if name is None else {"email": email, "name": name}
        return (api or self.api).post("/api/v1/org-addresses", json=body)

    def listed(self, api=None) -> list[dict]:
        r = (api or self.api).get("/api/v1/org-addresses")
        assert r.status_code == 200, r.text
        return r.json()["items"]


def test_an_admin_adds_lists_and_removes_addresses_every_user_can_list_them(gate):
    org = Org(gate)
    r = org.add(org.address().upper(), "サポート窓口")
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["email"] == org.address() and created["name"] == "サポート窓口"
    rep = gate.api(org.member())
    assert org.listed(rep) == [created]

    forbidden = org.add(org.address("sales"), api=rep)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"
    assert rep.delete(f"/api/v1/org-addresses/{created['id']}").status_code == 403

    assert org.api.delete(f"/api/v1/org-addresses/{created['id']}").status_code == 204
    assert org.listed() == []
    again = org.api.delete(f"/api/v1/org-addresses/{created['id']}")
    assert again.status_code == 404


def test_the_same_address_twice_is_a_conflict_whatever_its_case(gate):
    org = Org(gate)
    assert org.add(org.address()).status_code == 201
    dup = org.add("  " + org.address().replace("support", "Support") + "  ")
    assert dup.status_code == 409
    assert org.address() in dup.json()["error"]["message"]
    assert len(org.listed()) == 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({}, 422, "email is required"),
        ({"email": "not-an-address"}, 422, "not an email address"),
        ({"email": "x@evil.example\r\nBcc: all@victim.example"}, 422, "not an email address"),
        ({"email": ["a@b.example"]}, 422, "email is required"),
        ({"email": "a" * 400 + "@b.example"}, 422, "not an email address"),
        ({"email": "ok@fine.example", "name": "Support\r\nBcc: x@y.example"}, 422, "control"),
        ({"email": "ok@fine.example", "name": "n" * 201}, 422, "200"),
        ({"email": "ok@fine.example", "name": 7}, 422, "name must be a string"),
        ({"email": "ok@fine.example", "admin": True}, 422, "unknown field"),
    ],
    ids=[
        "missing",
        "not-address",
        "crlf-email",
        "list",
        "too-long",
        "crlf-name",
        "long-name",
        "number-name",
        "unknown-field",
    ],
)
def test_hostile_bodies_are_refused_and_nothing_is_saved(gate, body, status, words):
    org = Org(gate)
    r = org.api.post("/api/v1/org-addresses", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert org.listed() == []


def test_malformed_requests_and_bad_tokens(gate):
    org = Org(gate)
    r = org.api.post(
        "/api/v1/org-addresses", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert org.api.delete("/api/v1/org-addresses/abc").status_code == 404
    assert org.api.delete("/api/v1/org-addresses/99999999999999999999").status_code == 404
    anon = gate.api({"api_token": "forged"})
    assert anon.get("/api/v1/org-addresses").status_code == 401
    assert anon.post("/api/v1/org-addresses", json={"email": "a@b.example"}).status_code == 401


def test_the_limit_is_ten_per_active_user_and_grows_with_the_team(gate):
    org = Org(gate)  # one active user: ten addresses
    for i in range(10):
        assert org.add(org.address(f"desk{i}")).status_code == 201
    over = org.add(org.address("desk10"))
    assert over.status_code == 422
    error = over.json()["error"]
    assert error["code"] == "limit_reached"
    assert "10 of its 10" in error["message"] and "per active user" in error["message"]
    assert len(org.listed()) == 10

    org.member()  # a second license: twenty
    assert org.add(org.address("desk10")).status_code == 201
    assert len(org.listed()) == 11


def test_concurrent_adds_never_pass_the_limit(gate):
    org = Org(gate)
    for i in range(8):
        assert org.add(org.address(f"pre{i}")).status_code == 201

    def add(i: int) -> int:
        with gate.api(org.admin) as api:
            return org.add(org.address(f"race{i}"), api=api).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(add, range(8)))
    assert sorted(codes) == [201, 201] + [422] * 6
    assert len(org.listed()) == 10


def test_organizations_never_see_or_remove_each_others_addresses(gate):
    mine, theirs = Org(gate), Org(gate)
    created = mine.add(mine.address()).json()
    assert theirs.listed() == []
    assert theirs.api.delete(f"/api/v1/org-addresses/{created['id']}").status_code == 404
    assert mine.listed() == [created]
    # The same address may be shared by two orgs (each its own row).
    assert theirs.add(mine.address()).status_code == 201


def lead(api) -> int:
    r = api.post(
        "/api/v1/leads",
        json={"last_name": "鈴木", "email": f"{uuid.uuid4().hex[:8]}@client.example"},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def send(api, lead_id: int, sender) -> object:
    return api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": lead_id}],
            "subject": "ご案内",
            "text": "本文",
            "from": sender,
        },
    )


def test_users_send_from_an_org_address_and_not_from_unregistered_ones(gate):
    org, other = Org(gate), Org(gate)
    org.add(org.address(), "サポート窓口")
    other.add(other.address("help"))
    rep = gate.api(org.member())
    to = lead(rep)

    r = send(rep, to, org.address().upper())
    assert r.status_code == 202, r.text
    sent = rep.get(f"/api/v1/sends/{r.json()['sends'][0]['id']}").json()
    assert sent["from_email"] == org.address()

    named = send(rep, to, {"email": org.address(), "name": "Support"})
    assert named.status_code == 202, named.text

    for refused in (org.address("billing"), other.address("help")):
        r = send(rep, to, refused)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "from_not_allowed"

    [row] = org.listed()
    assert org.api.delete(f"/api/v1/org-addresses/{row['id']}").status_code == 204
    gone = send(rep, to, org.address())
    assert gone.status_code == 422 and gone.json()["error"]["code"] == "from_not_allowed"


# --- the CLI, against the same database -------------------------------------------------


@pytest.fixture(scope="module")
def mg(gate, database_url, tmp_path_factory):
    return Mailgate(database_url, tmp_path_factory.mktemp("cli"))


def test_cli_adds_lists_and_removes_org_addresses(gate, mg):
    org = Org(gate)
    name = org.org["name"]
    shown = mg("org", "addresses", name, "add", org.address(), "--name", "サポート窓口").json()
    assert shown["org_id"] == org.org["id"]
    assert [(a["email"], a["name"]) for a in shown["addresses"]] == [
        (org.address(), "サポート窓口")
    ]
    assert [a["email"] for a in org.listed()] == [org.address()]
    listed = mg("org", "addresses", str(org.org["id"]), "list").json()
    assert listed["addresses"] == shown["addresses"]

    dup = mg("org", "addresses", name, "add", org.address().upper())
    assert "already an organization address" in dup.error_line()

    removed = mg("org", "addresses", name, "remove", org.address()).json()
    assert removed["addresses"] == []
    assert "is not an organization address" in (
        mg("org", "addresses", name, "remove", org.address()).error_line()
    )


def test_cli_refuses_hostile_input_in_one_line(gate, mg):
    org = Org(gate)
    name = org.org["name"]
    cases = [
        (["org", "addresses", "No Such Org", "list"], "no organization"),
        (["org", "addresses", name, "frobnicate"], "add, remove or list"),
        (["org", "addresses", name, "add"], "needs an EMAIL"),
        (["org", "addresses", name, "add", "nope"], "not an email address"),
        (["org", "addresses", name, "add", "a@b.example", "--name", "x\r\nBcc: y"], "control"),
        (["org", "addresses", name, "list", "--name", "x"], "--name only goes with"),
    ]
    for argv, words in cases:
        assert words in mg(*argv).error_line(), argv
    for i in range(10):
        org.add(org.address(f"d{i}"))
    assert "remove one first" in mg("org", "addresses", name, "add", org.address()).error_line()
    assert len(org.listed()) == 10


# --- per-org tracking skip domains ------------------------------------------------------


def test_admins_set_tracking_skip_domains_and_links_there_go_out_untracked(gate):
    from sqlalchemy import select

    from storage.schema_sending import sends

    org = Org(gate)
    assert org.api.get("/api/v1/tracking-skip-domains").json() == {"domains": []}
    r = org.api.put(
        "/api/v1/tracking-skip-domains", json={"domains": ["Partner.Example.JP.", "例え.jp"]}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"domains": ["partner.example.jp", "xn--r8jz45g.jp"]}
    rep = gate.api(org.member())
    assert rep.get("/api/v1/tracking-skip-domains").json() == r.json()
    assert rep.put("/api/v1/tracking-skip-domains", json={"domains": []}).status_code == 403

    html = (
        '<p><a href="https://www.partner.example.jp/portal">portal</a> '
        '<a href="https://shop.example.com/sale">sale</a></p>'
    )
    sent = rep.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead(rep)}], "subject": "ご案内", "html": html},
    )
    assert sent.status_code == 202, sent.text
    sid = sent.json()["sends"][0]["id"]

    async def row():
        async with gate.db.connect() as conn:
            q = select(sends.c.links, sends.c.raw).where(sends.c.id == sid)
            return (await conn.execute(q)).mappings().one()

    stored = gate.call(row())
    assert "https://shop.example.com/sale" in stored["links"]  # tracked
    assert not [u for u in stored["links"] if "partner" in u]  # left alone
    raw = bytes(stored["raw"]).decode("ascii", "replace")
    assert "https://www.partner.example.jp/portal" in raw

    cleared = org.api.put("/api/v1/tracking-skip-domains", json={"domains": []})
    assert cleared.json() == {"domains": []}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"domains": "example.com"},
        {"domains": ["ok.example", "not a domain"]},
        {"domains": ["user@example.com"]},
        {"domains": ["evil.example\r\nX: y"]},
        {"domains": [7]},
        {"domains": ["d.example"] * 101},
        {"domains": [], "extra": 1},
    ],
    ids=["missing", "string", "space", "address", "crlf", "number", "too-many", "unknown"],
)
def test_hostile_tracking_skip_domains_are_refused(gate, body):
    org = Org(gate)
    org.api.put("/api/v1/tracking-skip-domains", json={"domains": ["kept.example"]})
    r = org.api.put("/api/v1/tracking-skip-domains", json=body)
    assert r.status_code == 422, r.text
    assert org.api.get("/api/v1/tracking-skip-domains").json() == {"domains": ["kept.example"]}


def test_tracking_skip_domains_are_per_org_and_set_from_the_cli(gate, mg):
    mine, theirs = Org(gate), Org(gate)
    shown = mg("org", "tracking-skip", mine.org["name"], "set", "Mine.Example", "b.example").json()
    assert shown == {"org_id": mine.org["id"], "domains": ["b.example", "mine.example"]}
    assert mine.api.get("/api/v1/tracking-skip-domains").json()["domains"] == shown["domains"]
    assert theirs.api.get("/api/v1/tracking-skip-domains").json() == {"domains": []}
    assert mg("org", "tracking-skip", str(mine.org["id"]), "list").json() == shown
    assert "not a domain name" in (
        mg("org", "tracking-skip", mine.org["name"], "set", "a b").error_line()
    )
    assert "list or set" in mg("org", "tracking-skip", mine.org["name"], "drop").error_line()
    cleared = mg("org", "tracking-skip", mine.org["name"], "set").json()
    assert cleared["domains"] == []


@pytest.mark.parametrize("command", [["org", "addresses"], ["org", "tracking-skip"]])
def test_org_setting_commands_answer_help(tmp_path, command):
    result = Mailgate(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path)(*command, "--help")
    assert result.code == 0, result.stderr
    assert "Usage: mailgate" in result.stdout
