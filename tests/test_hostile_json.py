"""Hostile JSON is a 4xx, never a 500: an unpaired surrogate (``"\\ud800"``), a NUL, or
an integer of 2^63 and up, in any field of any endpoint that takes JSON, and in
any path id.  JSON allows all three; no database column can hold them."""

from __future__ import annotations

import json

import pytest

BIG = 2**63
SURROGATE = '"\\ud800"'  # JSON text no client library would produce from a valid str

#: Every endpoint that reads a JSON body, with a body naming its own fields.  ``{x}``
#: is where the hostile value goes; ``{lead}``/``{template}``/``{user}``/``{email}``
#: are ids of real objects, so the request reaches the field it would really use.
ENDPOINTS = [
    ("POST", "/api/v1/leads", '{{"last_name": {x}, "email": "a@b.example"}}'),
    ("POST", "/api/v1/contacts", '{{"last_name": "x", "account_id": {x}}}'),
    ("POST", "/api/v1/accounts", '{{"name": {x}}}'),
    ("POST", "/api/v1/deals", '{{"name": "d", "amount": 1, "contact_id": {x}}}'),
    ("PATCH", "/api/v1/leads/{lead}", '{{"company": {x}}}'),
    ("POST", "/api/v1/leads/{lead}/convert", '{{"deal": {{"name": {x}}}}}'),
    ("POST", "/api/v1/templates",
     '{{"name": {x}, "module": "leads", "subject": "s", "html": "<p/>"}}'),
    ("PUT", "/api/v1/templates/{template}", '{{"subject": {x}}}'),
    ("POST", "/api/v1/templates/{template}/preview", '{{"module": "leads", "id": {x}}}'),
    ("POST", "/api/v1/emails",
     '{{"to": [{{"module": "leads", "id": {x}}}], "subject": "s", "html": "<p/>"}}'),
    ("POST", "/api/v1/emails/bulk", '{{"to": [{{"module": "leads", "id": 1}}], '
     '"template_id": {x}}}'),
    ("POST", "/api/v1/emails", '{{"to": [{{"module": "leads", "id": 1}}], "subject": "s", '
     '"html": "<p/>", "from": {{"email": {x}}}}}'),
    ("POST", "/api/v1/org-addresses", '{{"email": {x}, "name": "Sales"}}'),
    ("PUT", "/api/v1/tracking-skip-domains", '{{"domains": [{x}]}}'),
    ("POST", "/api/v1/mailboxes",
     '{{"host": {x}, "port": 993, "username": "u", "password": "p"}}'),
    ("POST", "/api/v1/mailboxes", '{{"host": "imap.example", "port": {x}, "username": "u", '
     '"password": "p", "user_id": {x}}}'),
    ("POST", "/api/v1/emails/{email}/read", '{{"seen": {x}}}'),
    ("PUT", "/api/v1/users/{user}/sharing", '{{"mode": {x}}}'),
    ("PUT", "/api/v1/excluded-domains", '{{"domains": [{x}]}}'),
]  # fmt: skip
HOSTILE = {"surrogate": SURROGATE, "nul": '"a\\u0000b"', "big_int": str(BIG)}
#: Every path id; ``{id}`` becomes 2^63 and 10^30.
PATH_IDS = [
    ("GET", "/api/v1/leads/{id}"),
    ("PATCH", "/api/v1/contacts/{id}"),
    ("DELETE", "/api/v1/deals/{id}"),
    ("GET", "/api/v1/accounts/{id}/emails"),
    ("POST", "/api/v1/leads/{id}/convert"),
    ("GET", "/api/v1/templates/{id}"),
    ("PUT", "/api/v1/templates/{id}"),
    ("POST", "/api/v1/templates/{id}/preview"),
    ("GET", "/api/v1/sends/{id}"),
    ("DELETE", "/api/v1/org-addresses/{id}"),
    ("GET", "/api/v1/mailboxes/{id}"),
    ("DELETE", "/api/v1/mailboxes/{id}"),
    ("POST", "/api/v1/mailboxes/{id}/backfill"),
    ("POST", "/api/v1/emails/{id}/read"),
    ("GET", "/api/v1/users/{id}/sharing"),
    ("PUT", "/api/v1/users/{id}/sharing"),
]


@pytest.fixture(scope="module")
def world(mailgate):
    org = mailgate.org("hostile-json-org")
    admin = mailgate.user(org, "boss@hostile.example", name="管理 者", admin=True)
    api = mailgate.api(admin)
    lead = api.post("/api/v1/leads", json={"last_name": "山田", "email": "y@client.example"})
    template = api.post(
        "/api/v1/templates",
        json={
            "name": "t",
            "module": "leads",
            "subject": "s",
            "html": "<p>{{ lead.last_name }}</p>",
        },
    )
    sent = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead.json()["id"]}], "subject": "s", "html": "<p/>"},
    )
    assert lead.status_code == 201 and template.status_code == 201, (lead.text, template.text)
    assert sent.status_code == 202, sent.text
    email = api.get(f"/api/v1/leads/{lead.json()['id']}/emails").json()["items"][0]["id"]
    ids = {"lead": lead.json()["id"], "template": template.json()["id"], "user": admin["id"],
           "email": email}  # fmt: skip
    return api, ids


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_hostile_json_value_is_a_4xx_naming_the_problem(world, method, path, body, kind):
    api, ids = world
    content = body.format(x=HOSTILE[kind])
    json.loads(content)  # the test's own bodies are valid JSON
    r = api.request(method, path.format(**ids), content=content)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_field"
    assert {"surrogate": "surrogate", "nul": "NUL", "big_int": "64-bit"}[kind] in err["message"]


@pytest.mark.parametrize("kind", ["surrogate", "nul"])
def test_hostile_key_is_a_4xx(world, kind):
    api, _ = world
    content = '{"domains": ["ok.example"], ' + HOSTILE[kind] + ": 1}"
    r = api.put("/api/v1/excluded-domains", content=content)
    assert r.status_code == 422, r.text
    assert "key" in r.json()["error"]["message"]


@pytest.mark.parametrize("big", [str(BIG), "1" + "0" * 30, "18446744073709551616"])
@pytest.mark.parametrize(("method", "path"), PATH_IDS)
def test_path_id_beyond_64_bits_is_a_404(world, method, path, big):
    api, _ = world
    r = api.request(method, path.format(id=big), content="{}")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"


def test_a_valid_body_still_works_after_the_checks(world):
    """The central check refuses only what cannot be stored: the largest id is fine."""
    api, ids = world
    r = api.patch(f"/api/v1/leads/{ids['lead']}", json={"company": "株式会社\ud7ff"})
    assert r.status_code == 200 and r.json()["company"] == "株式会社\ud7ff"
    r = api.post("/api/v1/contacts", json={"last_name": "x", "account_id": 2**63 - 1})
    assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]
