"""The records API over real HTTP: CRUD, lists, conversion, isolation, auth, hostile input.

Every test talks to a running mailgate (``mailgate`` fixture: SMTP + HTTP on
loopback ports, SQLite and PostgreSQL) with ``httpx`` and ``smtplib``, as a
CRM integration or a user's mail client would.
"""

from __future__ import annotations

import itertools
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import httpx
import pytest

from tests.support.server import MailgateServer, wait_until

_names = itertools.count(1)


def new_org(mailgate: MailgateServer, **kw: Any) -> dict[str, Any]:
    """A fresh org with one admin user; returns the user (with ``org``) for ``.api``."""
    n = next(_names)
    org = mailgate.org(f"Org {n} 株式会社", domains=[f"org{n}.example.jp"], **kw)
    user = mailgate.user(org, f"taro@org{n}.example.jp", admin=True)
    return {**user, "org": org}


@pytest.fixture
def api(mailgate) -> httpx.Client:
    with mailgate.api(new_org(mailgate)) as client:
        yield client


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert the status and the one error shape every failure shares."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    return err


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


# --- CRUD per module ---------------------------------------------------------------


def test_lead_create_read_update_delete(api):
    lead = created(
        api.post(
            "/api/v1/leads",
            json={
                "first_name": "花子",
                "last_name": "佐藤",
                "email": " Hanako@Customer.Example.JP ",
                "company": "顧客商事",
            },
        )
    )
    assert lead["first_name"] == "花子" and lead["last_name"] == "佐藤"
    assert lead["email"] == "Hanako@Customer.Example.JP"
    assert lead["company"] == "顧客商事"
    assert "org_id" not in lead and "email_norm" not in lead

    assert api.get(f"/api/v1/leads/{lead['id']}").json() == lead

    patched = api.patch(f"/api/v1/leads/{lead['id']}", json={"company": "新商事", "title": "部長"})
    assert patched.status_code == 200
    assert patched.json()["company"] == "新商事" and patched.json()["title"] == "部長"
    assert patched.json()["last_name"] == "佐藤"
    assert api.get(f"/api/v1/leads/{lead['id']}").json()["company"] == "新商事"

    assert api.delete(f"/api/v1/leads/{lead['id']}").status_code == 204
    error_of(api.get(f"/api/v1/leads/{lead['id']}"), 404)
    error_of(api.delete(f"/api/v1/leads/{lead['id']}"), 404)
    error_of(api.patch(f"/api/v1/leads/{lead['id']}", json={"company": "x"}), 404)


def test_account_contact_and_deal_crud(api):
    account = created(api.post("/api/v1/accounts", json={"name": "顧客商事"}))
    assert account["name"] == "顧客商事"
    contact = created(
        api.post(
            "/api/v1/contacts",
            json={
                "first_name": "一郎",
                "last_name": "鈴木",
                "email": "ichiro@customer.example.jp",
                "account_id": account["id"],
            },
        )
    )
    assert contact["account_id"] == account["id"]
    assert contact["email"] == "ichiro@customer.example.jp"

    deal = created(
        api.post(
            "/api/v1/deals",
            json={
                "name": "年間契約",
                "account_id": account["id"],
                "contact_id": contact["id"],
                "stage": "proposal",
                "amount": 1200000,
            },
        )
    )
    assert deal["name"] == "年間契約" and deal["stage"] == "proposal"
    assert (deal["account_id"], deal["contact_id"]) == (account["id"], contact["id"])
    assert float(deal["amount"]) == 1200000

    deal2 = api.patch(f"/api/v1/deals/{deal['id']}", json={"amount": "99.50", "stage": "won"})
    assert deal2.status_code == 200, deal2.text
    assert float(deal2.json()["amount"]) == 99.5 and deal2.json()["stage"] == "won"

    assert api.patch(f"/api/v1/accounts/{account['id']}", json={"name": "改名商事"}).json()[
        "name"
    ] == ("改名商事")

    # Deleting the account leaves its contact and deal in place, unlinked.
    assert api.delete(f"/api/v1/accounts/{account['id']}").status_code == 204
    assert api.get(f"/api/v1/contacts/{contact['id']}").json()["account_id"] is None
    assert api.get(f"/api/v1/deals/{deal['id']}").json()["account_id"] is None
    assert api.delete(f"/api/v1/contacts/{contact['id']}").status_code == 204
    assert api.get(f"/api/v1/deals/{deal['id']}").json()["contact_id"] is None


def test_required_fields_are_enforced(api):
    assert "name" in error_of(api.post("/api/v1/accounts", json={}), 422)["message"]
    assert "name" in error_of(api.post("/api/v1/deals", json={"stage": "x"}), 422)["message"]
    error_of(api.post("/api/v1/leads", json={"first_name": "花子"}), 422)
    error_of(api.post("/api/v1/contacts", json={}), 422)
    # A lead needs only a last name or an email.
    created(api.post("/api/v1/leads", json={"last_name": "佐藤"}))
    created(api.post("/api/v1/leads", json={"email": "only@mail.example.jp"}))


# --- lists, pagination, email filter -----------------------------------------------


def test_lists_paginate_with_limit_and_cursor(api):
    ids = [
        created(api.post("/api/v1/accounts", json={"name": f"Account {i}"}))["id"] for i in range(5)
    ]
    seen: list[int] = []
    pages = 0
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/accounts", params=params).json()
        assert set(page) == {"items", "next"}
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids and pages == 3

    everything = api.get("/api/v1/accounts").json()
    assert [i["id"] for i in everything["items"]] == ids and everything["next"] is None


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 5000}, {"limit": "x"}, {"cursor": "x"}])
def test_bad_list_parameters_are_400(api, params):
    error_of(api.get("/api/v1/leads", params=params), 400)


def test_email_filter_ignores_case(api):
    lead = created(
        api.post("/api/v1/leads", json={"last_name": "佐藤", "email": "hanako@example.jp"})
    )
    created(api.post("/api/v1/leads", json={"last_name": "他", "email": "other@example.jp"}))
    found = api.get("/api/v1/leads", params={"email": "Hanako@Example.JP"}).json()
    assert [i["id"] for i in found["items"]] == [lead["id"]]
    assert api.get("/api/v1/leads", params={"email": "nobody@example.jp"}).json()["items"] == []
    assert api.get("/api/v1/leads", params={"email": "not an address"}).json()["items"] == []
    assert api.get("/api/v1/leads", params={"email": "a\x00@example.jp"}).json()["items"] == []


def test_email_filter_on_a_module_without_email_is_refused(api):
    created(api.post("/api/v1/accounts", json={"name": "顧客商事"}))
    error_of(api.get("/api/v1/accounts", params={"email": "a@example.jp"}), 400)


# --- conversion and the mail that follows it -----------------------------------------


def deliver(mailgate: MailgateServer, user: dict[str, Any], to: str, subject: str) -> str:
    msg = EmailMessage()
    msg["From"] = f"山田 太郎 <{user['email']}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = mid = make_msgid(domain="test.example.jp")
    msg.set_content("お世話になっております。\n")
    with smtplib.SMTP("127.0.0.1", mailgate.smtp_port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr=user["email"], to_addrs=[user["dropbox_address"]])
    return mid.strip("<>")  # filed mail names the Message-ID without its brackets


def test_conversion_creates_account_contact_and_deal_and_moves_the_mail(mailgate):
    user = new_org(mailgate)
    with mailgate.api(user) as api:
        lead = created(
            api.post(
                "/api/v1/leads",
                json={
                    "first_name": "花子",
                    "last_name": "佐藤",
                    "email": "hanako@customer.example.jp",
                    "company": "顧客商事",
                },
            )
        )
        mid = deliver(mailgate, user, "hanako@customer.example.jp", "お見積りの件")
        filed = wait_until(
            lambda: api.get(f"/api/v1/leads/{lead['id']}/emails").json()["items"], timeout=20
        )
        assert [(e["message_id"], e["subject"]) for e in filed] == [(mid, "お見積りの件")]

        conv = api.post(
            f"/api/v1/leads/{lead['id']}/convert",
            json={"deal": {"name": "年間契約", "amount": 500000}},
        )
        assert conv.status_code == 200, conv.text
        result = conv.json()
        account = api.get(f"/api/v1/accounts/{result['account_id']}").json()
        contact = api.get(f"/api/v1/contacts/{result['contact_id']}").json()
        deal = api.get(f"/api/v1/deals/{result['deal_id']}").json()
        assert account["name"] == "顧客商事"
        assert (contact["first_name"], contact["last_name"]) == ("花子", "佐藤")
        assert contact["email"] == "hanako@customer.example.jp"
        assert contact["account_id"] == account["id"]
        assert (deal["name"], deal["account_id"], deal["contact_id"]) == (
            "年間契約",
            account["id"],
            contact["id"],
        )
        assert float(deal["amount"]) == 500000

        contact_mail = api.get(f"/api/v1/contacts/{contact['id']}/emails").json()["items"]
        assert [e["message_id"] for e in contact_mail] == [mid]
        # A deal's list is the mail filed on the deal, not every mail of its contact.
        assert api.get(f"/api/v1/deals/{deal['id']}/emails").json()["items"] == []
        item = contact_mail[0]
        assert item["direction"] == "outgoing" and item["source"] == "dropbox"
        assert item["from"] == user["email"] and "hanako@customer.example.jp" in item["to"]

        again = api.post(f"/api/v1/leads/{lead['id']}/convert", json={})
        assert error_of(again, 409)["code"] == "already_converted"
        assert api.get("/api/v1/contacts").json()["items"] == [contact]


def test_conversion_without_a_deal_and_its_refusals(api):
    lead = created(api.post("/api/v1/leads", json={"first_name": "一郎", "last_name": "鈴木"}))
    error_of(api.post(f"/api/v1/leads/{lead['id']}/convert", json={"deal": "yes"}), 422)
    err = error_of(api.post(f"/api/v1/leads/{lead['id']}/convert", json={"dael": {}}), 422)
    assert "dael" in err["message"]
    error_of(api.post(f"/api/v1/leads/{lead['id']}/convert", json={"deal": {"amount": "abc"}}), 422)
    # Refused conversions left nothing half-done behind.
    assert api.get("/api/v1/accounts").json()["items"] == []

    result = api.post(f"/api/v1/leads/{lead['id']}/convert").json()
    assert result["deal_id"] is None
    assert api.get(f"/api/v1/accounts/{result['account_id']}").json()["name"] == "鈴木 一郎"
    error_of(api.post("/api/v1/leads/999999/convert", json={}), 404)
    error_of(api.post("/api/v1/leads/abc/convert", json={}), 404)


# --- organizations see only their own records ----------------------------------------


def test_another_orgs_token_sees_nothing_of_this_org(mailgate):
    alice, bob = new_org(mailgate), new_org(mailgate)
    with mailgate.api(alice) as a, mailgate.api(bob) as b:
        account = created(a.post("/api/v1/accounts", json={"name": "Alice's"}))
        contact = created(
            a.post(
                "/api/v1/contacts",
                json={"last_name": "鈴木", "email": "s@x.example.jp", "account_id": account["id"]},
            )
        )
        lead = created(
            a.post("/api/v1/leads", json={"last_name": "秘密", "email": "s@y.example.jp"})
        )

        for module, rid in (
            ("accounts", account["id"]),
            ("contacts", contact["id"]),
            ("leads", lead["id"]),
        ):
            error_of(b.get(f"/api/v1/{module}/{rid}"), 404)
            error_of(b.patch(f"/api/v1/{module}/{rid}", json={}), 404)
            error_of(b.delete(f"/api/v1/{module}/{rid}"), 404)
            error_of(b.get(f"/api/v1/{module}/{rid}/emails"), 404)
            assert b.get(f"/api/v1/{module}").json()["items"] == []
        assert b.get("/api/v1/leads", params={"email": "s@y.example.jp"}).json()["items"] == []
        error_of(b.post(f"/api/v1/leads/{lead['id']}/convert", json={}), 404)

        error_of(
            b.post("/api/v1/contacts", json={"last_name": "x", "account_id": account["id"]}), 422
        )
        error_of(b.post("/api/v1/deals", json={"name": "x", "contact_id": contact["id"]}), 422)
        own = created(b.post("/api/v1/contacts", json={"last_name": "own"}))
        error_of(b.patch(f"/api/v1/contacts/{own['id']}", json={"account_id": account["id"]}), 422)

        # Alice's records are untouched by all of that.
        assert a.get(f"/api/v1/leads/{lead['id']}").json() == lead
        assert a.get(f"/api/v1/contacts/{contact['id']}").json() == contact

        a_events = a.get("/api/v1/events").json()["items"]
        b_events = b.get("/api/v1/events").json()["items"]
        assert a_events and all(e["org_id"] == alice["org_id"] for e in a_events)
        assert b_events and all(e["org_id"] == bob["org_id"] for e in b_events)


# --- the event stream ---------------------------------------------------------------


def test_events_are_ordered_and_resume_after_an_id(api):
    for i in range(5):
        created(api.post("/api/v1/leads", json={"last_name": f"L{i}"}))
    everything = api.get("/api/v1/events").json()["items"]
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 5
    assert {e["type"] for e in everything} == {"record.created"}
    assert all({"id", "type", "at", "org_id", "data"} <= set(e) for e in everything)

    first = api.get("/api/v1/events", params={"limit": 2}).json()
    assert [e["id"] for e in first["items"]] == ids[:2] and first["next"] is not None
    rest = api.get("/api/v1/events", params={"after": ids[1]}).json()["items"]
    assert [e["id"] for e in rest] == ids[2:]
    assert api.get("/api/v1/events", params={"after": ids[-1]}).json()["items"] == []


@pytest.mark.parametrize(
    "params", [{"limit": "x"}, {"limit": 0}, {"limit": 100000}, {"after": "x"}, {"after": -1}]
)
def test_bad_event_parameters_are_400(api, params):
    error_of(api.get("/api/v1/events", params=params), 400)


# --- authentication -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer mg_not-a-real-token"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "garbage"},
    ],
    ids=["missing", "unknown", "empty", "basic", "garbage"],
)
def test_requests_without_a_valid_token_are_401(mailgate, headers):
    for method, path in (
        ("GET", "/api/v1/leads"),
        ("POST", "/api/v1/leads"),
        ("GET", "/api/v1/events"),
    ):
        r = httpx.request(
            method, mailgate.http_url + path, headers=headers, json={"last_name": "x"}
        )
        assert error_of(r, 401)["code"] == "unauthorized"


def test_the_bearer_scheme_is_case_insensitive(mailgate):
    user = new_org(mailgate)
    r = httpx.get(
        mailgate.http_url + "/api/v1/leads",
        headers={"Authorization": f"bearer {user['api_token']}"},
    )
    assert r.status_code == 200


# --- hostile input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'["a", "list"]', 400),
        (b"null", 400),
        (b"\xff\xfe{}", 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
    ],
    ids=["invalid", "array", "null", "not-utf8", "deeply-nested"],
)
def test_malformed_bodies_are_400(api, body, status):
    r = api.post("/api/v1/leads", content=body, headers={"content-type": "application/json"})
    error_of(r, status)


def test_bodies_over_a_megabyte_are_413(api):
    big = b'{"last_name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    error_of(api.post("/api/v1/leads", content=big), 413)

    def chunks():  # no Content-Length: the limit holds while streaming too
        yield b'{"last_name": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    error_of(api.post("/api/v1/leads", content=chunks()), 413)
    assert api.get("/api/v1/leads").json()["items"] == []


@pytest.mark.parametrize(
    ("module", "body", "names"),
    [
        ("leads", {"last_name": "x", "colour": "red"}, "colour"),
        ("leads", {"last_name": "x", "id": 5}, "id"),
        ("leads", {"last_name": "x", "org_id": 1}, "org_id"),
        ("leads", {"last_name": "x", "email": "not-an-email"}, "email"),
        ("leads", {"last_name": "x" * 101}, "last_name"),
        ("leads", {"last_name": "a\x00b"}, "last_name"),
        ("leads", b'{"last_name": "\\ud800"}', "last_name"),
        ("leads", {"last_name": ["x"]}, "last_name"),
        ("accounts", {"name": 123}, "name"),
        ("accounts", {"name": "   "}, "name"),
        ("deals", {"name": "d", "amount": "abc"}, "amount"),
        ("deals", {"name": "d", "amount": "NaN"}, "amount"),
        ("deals", {"name": "d", "amount": 1e300}, "amount"),
        ("deals", {"name": "d", "amount": True}, "amount"),
        ("deals", {"name": "d", "account_id": "1"}, "account_id"),
        ("deals", {"name": "d", "account_id": 1.0}, "account_id"),
        ("deals", {"name": "d", "account_id": 10**30}, "account_id"),
        ("deals", {"name": "d", "contact_id": -1}, "contact_id"),
        ("contacts", {"last_name": "x", "account_id": True}, "account_id"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(api, module, body, names):
    if isinstance(body, bytes):  # JSON no client library would encode (a lone surrogate)
        r = api.post(f"/api/v1/{module}", content=body)
    else:
        r = api.post(f"/api/v1/{module}", json=body)
    err = error_of(r, 422)
    assert names in err["message"]
    assert api.get(f"/api/v1/{module}").json()["items"] == []


def test_invalid_patches_are_422_and_change_nothing(api):
    lead = created(api.post("/api/v1/leads", json={"last_name": "佐藤", "email": "s@example.jp"}))
    for body in ({"email": "nope"}, {"colour": "red"}, {"last_name": None}, {"company": "\x00"}):
        error_of(api.patch(f"/api/v1/leads/{lead['id']}", json=body), 422)
    assert api.get(f"/api/v1/leads/{lead['id']}").json() == lead


@pytest.mark.parametrize("rid", ["abc", "-1", "0", "99999999999999999999", "1.5", "１", "²", "1e3"])
def test_ids_that_cannot_exist_are_404(api, rid):
    created(api.post("/api/v1/leads", json={"last_name": "佐藤"}))
    for method in ("GET", "PATCH", "DELETE"):
        error_of(api.request(method, f"/api/v1/leads/{rid}", json={}), 404)
    error_of(api.get(f"/api/v1/leads/{rid}/emails"), 404)


def test_unknown_modules_and_paths_are_404_json(api):
    error_of(api.get("/api/v1/widgets"), 404)
    error_of(api.post("/api/v1/widgets", json={}), 404)
    error_of(api.get("/api/v1/widgets/1"), 404)
    error_of(api.get("/api/v1/leads/1/nothing"), 404)
    error_of(api.get("/nowhere"), 404)
    error_of(api.put("/api/v1/leads/1", json={}), 405)


# --- health and metrics -------------------------------------------------------------


def test_healthz_needs_no_token(mailgate):
    r = httpx.get(mailgate.http_url + "/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_metrics_answer_prometheus_text(mailgate):
    r = httpx.get(mailgate.http_url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE " in r.text and "# HELP " in r.text


def test_an_id_in_other_digits_is_not_an_alias_of_a_record(api):
    lead = created(api.post("/api/v1/leads", json={"last_name": "佐藤"}))
    fullwidth = str(lead["id"]).translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    error_of(api.get(f"/api/v1/leads/{fullwidth}"), 404)
    error_of(api.delete(f"/api/v1/leads/{fullwidth}"), 404)
    assert api.get(f"/api/v1/leads/{lead['id']}").status_code == 200


def test_concurrent_conversions_convert_the_lead_once(api):
    from concurrent.futures import ThreadPoolExecutor

    lead = created(
        api.post("/api/v1/leads", json={"last_name": "佐藤", "email": "race@example.jp"})
    )

    def convert(_: int) -> int:
        with httpx.Client(base_url=str(api.base_url), headers=api.headers, timeout=30) as c:
            return c.post(f"/api/v1/leads/{lead['id']}/convert", json={"deal": {}}).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(convert, range(6)))
    assert statuses == [200] + [409] * 5
    assert len(api.get("/api/v1/contacts").json()["items"]) == 1
    assert len(api.get("/api/v1/accounts").json()["items"]) == 1
    assert len(api.get("/api/v1/deals").json()["items"]) == 1
