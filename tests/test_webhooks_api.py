"""``/api/v1/webhooks`` over HTTP (both engines): who may manage endpoints, what is refused.

Endpoints carry the whole org's events, so only org admins manage them; an
other org's endpoint is not there (404); the secret is shown once; bad input
is a clear 422, never a 500; private targets are refused unless allowed.
"""

from __future__ import annotations

import socket
import uuid

import pytest

from tests.support.server import MailgateServer


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory):
    srv = MailgateServer(database_url, tmp_path_factory.mktemp("data")).start({"http"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def strict(database_url, tmp_path_factory):
    """A mailgate as shipped: private targets not allowed."""
    srv = MailgateServer(
        database_url, tmp_path_factory.mktemp("strict"), allow_private_targets=False
    ).start({"http"})
    yield srv
    srv.stop()


def org_with(server: MailgateServer):
    tag = uuid.uuid4().hex[:8]
    org = server.org(f"API hooks {tag}")
    admin = server.api(server.user(org, f"admin@{tag}.example.jp", admin=True))
    rep = server.api(server.user(org, f"rep@{tag}.example.jp"))
    return admin, rep


URL = "http://127.0.0.1:9/hook"


def test_the_secret_is_shown_once_and_listings_never_carry_it(server):
    admin, _ = org_with(server)
    r = admin.post(
        "/api/v1/webhooks",
        json={"url": URL, "events": ["record.created", "email.sent", "record.created"]},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_") and created["state"] == "active"
    assert created["events"] == ["record.created", "email.sent"]  # deduplicated, in order
    one = admin.get(f"/api/v1/webhooks/{created['id']}")
    listing = admin.get("/api/v1/webhooks")
    assert one.status_code == 200 and listing.status_code == 200
    assert "secret" not in one.json() and created["secret"] not in one.text
    assert [h["id"] for h in listing.json()["items"]] == [created["id"]]
    assert created["secret"] not in listing.text


def test_patch_changes_url_and_events_and_delete_removes(server):
    admin, _ = org_with(server)
    hook = admin.post("/api/v1/webhooks", json={"url": URL, "events": ["record.created"]}).json()
    r = admin.patch(
        f"/api/v1/webhooks/{hook['id']}",
        json={"url": "https://127.0.0.1:8443/x", "events": ["record.updated"]},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["url"], r.json()["events"]) == ("https://127.0.0.1:8443/x", ["record.updated"])
    r = admin.patch(f"/api/v1/webhooks/{hook['id']}", json={"state": "disabled"})
    assert r.json()["state"] == "disabled"
    r = admin.patch(f"/api/v1/webhooks/{hook['id']}", json={"state": "active"})
    assert r.json()["state"] == "active"
    assert admin.get(f"/api/v1/webhooks/{hook['id']}/deliveries").json() == {
        "items": [],
        "next": None,
    }
    assert admin.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 204
    assert admin.get(f"/api/v1/webhooks/{hook['id']}").status_code == 404
    assert admin.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 404


def test_only_org_admins_manage_webhooks(server):
    admin, rep = org_with(server)
    hook = admin.post("/api/v1/webhooks", json={"url": URL, "events": ["record.created"]}).json()
    calls = [
        ("GET", "/api/v1/webhooks", None),
        ("POST", "/api/v1/webhooks", {"url": URL, "events": ["record.created"]}),
        ("GET", f"/api/v1/webhooks/{hook['id']}", None),
        ("PATCH", f"/api/v1/webhooks/{hook['id']}", {"events": ["email.sent"]}),
        ("DELETE", f"/api/v1/webhooks/{hook['id']}", None),
        ("POST", f"/api/v1/webhooks/{hook['id']}/rotate-secret", None),
        ("GET", f"/api/v1/webhooks/{hook['id']}/deliveries", None),
    ]
    for method, path, body in calls:
        r = rep.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "forbidden"
    assert admin.get(f"/api/v1/webhooks/{hook['id']}").json()["events"] == ["record.created"]


def test_another_orgs_webhook_is_not_there(server):
    admin, _ = org_with(server)
    other, _ = org_with(server)
    hook = admin.post("/api/v1/webhooks", json={"url": URL, "events": ["record.created"]}).json()
    for method, path, body in [
        ("GET", f"/api/v1/webhooks/{hook['id']}", None),
        ("PATCH", f"/api/v1/webhooks/{hook['id']}", {"state": "disabled"}),
        ("DELETE", f"/api/v1/webhooks/{hook['id']}", None),
        ("POST", f"/api/v1/webhooks/{hook['id']}/rotate-secret", None),
        ("GET", f"/api/v1/webhooks/{hook['id']}/deliveries", None),
    ]:
        r = other.request(method, path, json=body)
        assert r.status_code == 404, (method, path, r.text)
    assert other.get("/api/v1/webhooks").json()["items"] == []
    assert admin.get(f"/api/v1/webhooks/{hook['id']}").json()["state"] == "active"


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"events": ["record.created"]}, "url"),
        ({"url": URL}, "events"),
        ({"url": 42, "events": ["record.created"]}, "url"),
        ({"url": "", "events": ["record.created"]}, "url"),
        ({"url": "ftp://127.0.0.1/x", "events": ["record.created"]}, "http"),
        ({"url": "javascript:alert(1)", "events": ["record.created"]}, "http"),
        ({"url": "http://", "events": ["record.created"]}, "host"),
        ({"url": "http://user:pw@127.0.0.1/x", "events": ["record.created"]}, "credentials"),
        ({"url": "http://token@127.0.0.1/x", "events": ["record.created"]}, "credentials"),
        ({"url": "http://127.0.0.1/a b", "events": ["record.created"]}, "spaces"),
        ({"url": "http://127.0.0.1:99999/", "events": ["record.created"]}, "url"),
        ({"url": "http://127.0.0.1/" + "a" * 2100, "events": ["record.created"]}, "2000"),
        ({"url": "http://127.0.0.1/x#frag", "events": ["record.created"]}, "fragment"),
        ({"url": URL, "events": []}, "non-empty"),
        ({"url": URL, "events": "record.created"}, "list"),
        ({"url": URL, "events": ["record.made"]}, "record.made"),
        ({"url": URL, "events": [1]}, "unknown"),
        ({"url": URL, "events": [None]}, "unknown"),
        ({"url": URL, "events": ["record.created"], "secret": "mine"}, "secret"),
        ({"url": "http://no-such-host.invalid/x", "events": ["record.created"]}, "resolve"),
    ],
)
def test_bad_input_is_a_clear_422(server, body, names):
    admin, _ = org_with(server)
    r = admin.post("/api/v1/webhooks", json=body)
    assert r.status_code == 422, r.text
    assert names in r.json()["error"]["message"], r.text
    assert admin.get("/api/v1/webhooks").json()["items"] == []


def test_bad_patches_and_bodies_are_refused_without_change(server):
    admin, _ = org_with(server)
    hook = admin.post("/api/v1/webhooks", json={"url": URL, "events": ["record.created"]}).json()
    for body in [
        {"state": "paused"},
        {"events": []},
        {"url": "gopher://x"},
        {"id": 7},
        {"url": "http://127.0.0.1/\x00"},
    ]:
        r = admin.patch(f"/api/v1/webhooks/{hook['id']}", json=body)
        assert r.status_code == 422, (body, r.text)
    r = admin.patch(
        f"/api/v1/webhooks/{hook['id']}",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert admin.get("/api/v1/webhooks/abc").status_code == 404
    assert admin.get("/api/v1/webhooks/99999999999999999999999").status_code == 404
    assert admin.get("/api/v1/webhooks?limit=0").status_code == 400
    after = admin.get(f"/api/v1/webhooks/{hook['id']}").json()
    assert (after["url"], after["events"], after["state"]) == (URL, ["record.created"], "active")


def test_listing_pages_with_a_cursor(server):
    admin, _ = org_with(server)
    made = [
        admin.post("/api/v1/webhooks", json={"url": URL, "events": ["email.sent"]}).json()["id"]
        for _ in range(3)
    ]
    first = admin.get("/api/v1/webhooks", params={"limit": 2}).json()
    assert [h["id"] for h in first["items"]] == made[:2] and first["next"]
    rest = admin.get("/api/v1/webhooks", params={"limit": 2, "cursor": first["next"]}).json()
    assert [h["id"] for h in rest["items"]] == made[2:] and rest["next"] is None


def test_private_targets_are_refused_unless_the_operator_allows_them(strict):
    admin, _ = org_with(strict)
    with socket.create_server(("127.0.0.1", 0)) as open_port:
        refused_alike(admin, open_port.getsockname()[1])


def refused_alike(admin, listener: int) -> None:
    """Loopback with something listening, private ranges, metadata: one 422 for all."""
    answers = []
    for url in [
        f"http://127.0.0.1:{listener}/hook",
        f"http://localhost:{listener}/hook",
        f"http://[::1]:{listener}/hook",
        "http://10.1.2.3/hook",
        "https://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ]:
        r = admin.post("/api/v1/webhooks", json={"url": url, "events": ["record.created"]})
        assert r.status_code == 422, (url, r.text)
        answers.append(r.json()["error"]["code"])
    assert set(answers) == {"private_host"}
    hook = admin.post(
        "/api/v1/webhooks", json={"url": "https://8.8.8.8/hook", "events": ["record.created"]}
    )
    assert hook.status_code == 201, hook.text
    r = admin.patch(
        f"/api/v1/webhooks/{hook.json()['id']}", json={"url": f"http://127.0.0.1:{listener}/"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "private_host"
    assert admin.get("/api/v1/webhooks").json()["items"][0]["url"] == "https://8.8.8.8/hook"
