"""API tokens: listed without being shown, issued, revoked at once (API and CLI), and demo."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.test_cli import Mailgate


@pytest.fixture(scope="module")
def org(mailgate):
    tag = uuid.uuid4().hex[:6]
    org = mailgate.org(f"Tokens {tag}")
    boss = mailgate.user(org, f"boss@{tag}.example.jp", admin=True)
    rep = mailgate.user(org, f"rep@{tag}.example.jp")
    return {"org": org, "boss": boss, "rep": rep, "tag": tag}


@pytest.fixture(scope="module")
def cli(mailgate, tmp_path_factory):
    """The ``mailgate`` command line against the running server's database."""
    return Mailgate(mailgate.settings.database_url, tmp_path_factory.mktemp("cli"))


def status(mailgate, token: str) -> int:
    r = httpx.get(f"{mailgate.http_url}/api/v1/quota", headers={"Authorization": f"Bearer {token}"})
    return r.status_code


def test_a_user_lists_their_tokens_by_hint_never_the_token(mailgate, org):
    rep = org["rep"]
    r = mailgate.api(rep).get("/api/v1/tokens")
    assert r.status_code == 200, r.text
    (item,) = r.json()["items"]
    assert item["user_id"] == rep["id"] and item["current"] is True
    assert item["hint"] == rep["api_token"][:7] + "…"
    assert rep["api_token"] not in r.text


def test_an_issued_token_works_until_revoked_over_the_api(mailgate, org):
    api = mailgate.api(org["rep"])
    r = api.post("/api/v1/tokens", json={"label": "nightly export"})
    assert r.status_code == 201, r.text
    issued = r.json()
    assert status(mailgate, issued["api_token"]) == 200
    listed = {t["id"]: t for t in api.get("/api/v1/tokens").json()["items"]}
    assert listed[issued["id"]]["label"] == "nightly export"
    assert listed[issued["id"]]["current"] is False
    assert api.delete(f"/api/v1/tokens/{issued['id']}").status_code == 204
    assert status(mailgate, issued["api_token"]) == 401
    assert status(mailgate, org["rep"]["api_token"]) == 200
    assert api.delete(f"/api/v1/tokens/{issued['id']}").status_code == 404


def test_only_an_admin_revokes_a_colleagues_token_and_never_another_orgs(mailgate, org):
    boss, rep = mailgate.api(org["boss"]), mailgate.api(org["rep"])
    extra = rep.post("/api/v1/tokens", json={}).json()
    boss_token = boss.get("/api/v1/tokens").json()["items"]
    boss_own = next(t for t in boss_token if t["current"])
    assert rep.delete(f"/api/v1/tokens/{boss_own['id']}").status_code == 404
    assert rep.get("/api/v1/tokens?user_id=" + str(org["boss"]["id"])).json()["items"] == [
        t for t in rep.get("/api/v1/tokens").json()["items"]
    ]
    other = mailgate.user(mailgate.org(f"Other {uuid.uuid4().hex[:6]}"), "x@other.example.jp")
    outsider = mailgate.api(other)
    assert outsider.delete(f"/api/v1/tokens/{extra['id']}").status_code == 404
    assert status(mailgate, extra["api_token"]) == 200
    assert extra["id"] in {t["id"] for t in boss.get("/api/v1/tokens").json()["items"]}
    assert boss.delete(f"/api/v1/tokens/{extra['id']}").status_code == 204
    assert status(mailgate, extra["api_token"]) == 401


@pytest.mark.parametrize("label", [7, "x" * 101, "tab\there"])
def test_a_bad_token_label_is_422(mailgate, org, label):
    r = mailgate.api(org["rep"]).post("/api/v1/tokens", json={"label": label})
    assert r.status_code == 422, r.text


def test_the_cli_lists_and_revokes_tokens(mailgate, org, cli):
    user = mailgate.user(org["org"], f"cli@{org['tag']}.example.jp")
    issued = cli("token", "create", str(user["id"]), "--label", "crm import").json()
    assert status(mailgate, issued["api_token"]) == 200
    listed = cli("token", "list", "--user", str(user["id"])).json()
    assert [t["label"] for t in listed] == ["user create", "crm import"]
    assert all(user["api_token"] not in str(t) for t in listed)
    by_org = cli("token", "list", "--org", str(org["org"]["id"])).json()
    assert {t["id"] for t in listed} <= {t["id"] for t in by_org}
    assert cli("token", "revoke", str(listed[1]["id"])).json()["revoked"] == 1
    assert status(mailgate, issued["api_token"]) == 401
    assert status(mailgate, user["api_token"]) == 200
    assert cli("token", "revoke", "--user", str(user["id"]), "--all").json()["revoked"] == 1
    assert status(mailgate, user["api_token"]) == 401
    assert "no API token" in cli("token", "revoke", "999999999").error_line()
    assert cli("token", "revoke").error_line()
    assert cli("token", "revoke", "--user", str(user["id"])).error_line()


def test_demo_leaves_only_its_newest_token_valid(mailgate, cli):
    first = cli("demo").json()["api_token"]
    assert status(mailgate, first) == 200
    second = cli("demo").json()["api_token"]
    assert status(mailgate, first) == 401
    assert status(mailgate, second) == 200
