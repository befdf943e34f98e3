"""Mailing lists and members through the HTTP API: by hand, by CSV, hostile input, isolation."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def people(mailgate):
    org = mailgate.org("リスト株式会社")
    user = mailgate.user(org, "lists@example.co.jp", admin=False)
    other_org = mailgate.org("他社リスト")
    outsider = mailgate.user(other_org, "outsider@example.com")
    return org, mailgate.api(user), mailgate.api(outsider)


def new_list(api, name: str, **extra) -> dict:
    r = api.post("/api/v1/lists", json={"name": name, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def members_of(api, list_id: int, **params) -> list[dict]:
    r = api.get(f"/api/v1/lists/{list_id}/members", params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_a_list_is_created_by_any_user_and_a_duplicate_name_is_a_409(people):
    _, api, _ = people
    made = new_list(api, "ニュースレター", description="月刊", kind="topic", register=True)
    assert made["name"] == "ニュースレター" and made["kind"] == "topic" and made["register"] is True
    again = api.post("/api/v1/lists", json={"name": "ニュースレター"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate_name"
    assert api.get(f"/api/v1/lists/{made['id']}").json()["description"] == "月刊"
    assert made["id"] in [x["id"] for x in api.get("/api/v1/lists").json()["items"]]


def test_a_list_is_renamed_and_its_register_flag_changed_but_not_onto_another_name(people):
    _, api, _ = people
    a, b = new_list(api, "A-list"), new_list(api, "B-list")
    r = api.patch(f"/api/v1/lists/{a['id']}", json={"name": "A2", "register": True})
    assert r.status_code == 200 and r.json()["name"] == "A2" and r.json()["register"] is True
    clash = api.patch(f"/api/v1/lists/{b['id']}", json={"name": "A2"})
    assert clash.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 201},
        {"name": "two\nlines"},
        {"name": "ok", "kind": "folder"},
        {"name": "ok", "register": "yes"},
        {"name": 5},
    ],
)
def test_a_list_with_a_bad_field_is_a_clear_422(people, body):
    _, api, _ = people
    r = api.post("/api/v1/lists", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"]


def test_a_member_added_by_hand_is_listed_with_every_field_and_linked_to_its_lead(people):
    _, api, _ = people
    lead = api.post(
        "/api/v1/leads",
        json={"last_name": "山田", "first_name": "花子", "email": "Hanako@Customer.example.jp"},
    ).json()
    lst = new_list(api, "手入力")
    r = api.post(
        f"/api/v1/lists/{lst['id']}/members",
        json={
            "email": "hanako@customer.example.jp",
            "first_name": "花子",
            "last_name": "山田",
            "company": "顧客商事",
            "consent": "confirmed",
            "legal_basis": "consent",
        },
    )
    assert r.status_code == 201, r.text
    (m,) = members_of(api, lst["id"])
    assert m["email"] == "hanako@customer.example.jp"
    assert (m["first_name"], m["last_name"], m["company"]) == ("花子", "山田", "顧客商事")
    assert m["subscription"] == "marketing" and m["consent"] == "confirmed"
    assert m["legal_basis"] == "consent" and m["status"] == "subscribed" and m["source"] == "manual"
    assert m["record"] == {"module": "leads", "id": lead["id"]}
    assert api.get(f"/api/v1/lists/{lst['id']}").json()["members"] == {"subscribed": 1}


def test_a_member_already_on_the_list_is_a_409_and_a_removed_one_comes_back(people):
    _, api, _ = people
    lst = new_list(api, "出入り")
    first = api.post(f"/api/v1/lists/{lst['id']}/members", json={"email": "back@example.com"})
    assert first.status_code == 201
    dup = api.post(f"/api/v1/lists/{lst['id']}/members", json={"email": "BACK@example.com"})
    assert dup.status_code == 409
    gone = api.delete(f"/api/v1/lists/{lst['id']}/members/{first.json()['id']}")
    assert gone.status_code == 204
    assert members_of(api, lst["id"]) == []
    assert api.delete(f"/api/v1/lists/{lst['id']}/members/{first.json()['id']}").status_code == 404
    again = api.post(
        f"/api/v1/lists/{lst['id']}/members", json={"email": "back@example.com", "last_name": "戻"}
    )
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert [m["last_name"] for m in members_of(api, lst["id"])] == ["戻"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "email"),
        ({"email": "not an address"}, "email"),
        ({"email": "a@b..example"}, "email"),
        ({"email": "ok@example.com", "first_name": "a\r\nBcc: x@evil.example"}, "first_name"),
        ({"email": "ok@example.com", "last_name": "x" * 101}, "last_name"),
        ({"email": "ok@example.com", "subscription": "spam"}, "subscription"),
        ({"email": "ok@example.com", "consent": "maybe"}, "consent"),
        ({"email": "ok@example.com", "company": ["a"]}, "company"),
        ({"email": "\ud800@example.com"}, None),
    ],
)
def test_a_hostile_or_broken_member_is_a_clear_422(people, body, field):
    _, api, _ = people
    lst = new_list(api, f"hostile-{field}-{len(str(body))}")
    import json

    r = api.post(
        f"/api/v1/lists/{lst['id']}/members",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    if field:
        assert r.json()["error"]["field"] == field
    assert members_of(api, lst["id"]) == []


def test_members_are_paged_and_filtered_by_status(people, mailgate):
    from tests.support.campaigns import add_member

    org, api, _ = people
    lst = new_list(api, "ページ")
    for i in range(5):
        add_member(mailgate, org, lst["id"], f"p{i}@example.com", status="subscribed")
    add_member(mailgate, org, lst["id"], "u@example.com", status="unsubscribed")
    page = api.get(f"/api/v1/lists/{lst['id']}/members", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next"]
    rest = members_of(api, lst["id"], after=page["next"], limit=100)
    assert len(rest) == 4
    assert [m["email"] for m in members_of(api, lst["id"], status="unsubscribed")] == [
        "u@example.com"
    ]
    assert api.get(f"/api/v1/lists/{lst['id']}/members?status=gone").status_code == 400


def test_another_orgs_list_and_its_members_are_not_found(people):
    _, api, outsider = people
    lst = new_list(api, "秘密")
    api.post(f"/api/v1/lists/{lst['id']}/members", json={"email": "secret@example.com"})
    assert outsider.get(f"/api/v1/lists/{lst['id']}").status_code == 404
    assert outsider.get(f"/api/v1/lists/{lst['id']}/members").status_code == 404
    assert outsider.patch(f"/api/v1/lists/{lst['id']}", json={"name": "x"}).status_code == 404
    r = outsider.post(f"/api/v1/lists/{lst['id']}/members", json={"email": "x@example.com"})
    assert r.status_code == 404
    r = outsider.post(f"/api/v1/lists/{lst['id']}/members/import", content=b"email\na@b.example\n")
    assert r.status_code == 404
    assert lst["id"] not in [x["id"] for x in outsider.get("/api/v1/lists").json()["items"]]
    assert len(members_of(api, lst["id"])) == 1


# -- CSV -------------------------------------------------------------------------------


def import_csv(api, list_id: int, data: bytes):
    return api.post(
        f"/api/v1/lists/{list_id}/members/import",
        content=data,
        headers={"content-type": "text/csv"},
    )


def test_a_shift_jis_csv_with_japanese_headers_adds_members_and_reports_each_bad_row(people):
    _, api, _ = people
    lst = new_list(api, "CSV-SJIS")
    data = (
        "姓,名,メールアドレス,会社名\r\n"
        "髙橋,﨑子,takahashi@example.jp,髙橋商事\r\n"
        "佐藤,一郎,not-an-address,他社\r\n"
        "鈴木,次郎,jiro@example.jp,鈴木工業\r\n"
        "重複,太郎,TAKAHASHI@example.jp,重複\r\n"
        ",,,\r\n"
        "欠け,行,short@example.jp\r\n"
    ).encode("cp932")
    r = import_csv(api, lst["id"], data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == 2 and body["updated"] == 0
    assert body["skipped"] == [
        {"row": 3, "email": "not-an-address", "reason": "invalid_address"},
        {"row": 5, "email": "TAKAHASHI@example.jp", "reason": "duplicate"},
        {"row": 7, "email": "short@example.jp", "reason": "wrong_field_count"},
    ]
    got = {m["email"]: m for m in members_of(api, lst["id"])}
    assert got["takahashi@example.jp"]["last_name"] == "髙橋"
    assert got["takahashi@example.jp"]["first_name"] == "﨑子"
    assert got["jiro@example.jp"]["company"] == "鈴木工業"
    assert got["jiro@example.jp"]["source"] == "csv"


def test_a_utf8_csv_with_a_bom_updates_existing_members_and_never_resubscribes(people, mailgate):
    from tests.support.campaigns import add_member

    org, api, _ = people
    lst = new_list(api, "CSV-UTF8")
    add_member(mailgate, org, lst["id"], "old@example.com", last_name="Old", status="unsubscribed")
    data = (
        "\ufeffEmail,Last Name,First Name,subscription,consent\n"
        "old@example.com,Newer,Anne,marketing,confirmed\n"
        "new@example.com,Fresh,Bob,non_marketing,pending\n"
        "bad@example.com,Line\u2028Break,X,marketing,none\n"
        "odd@example.com,Odd,Y,weekly,none\n"
    ).encode("utf-8")
    body = import_csv(api, lst["id"], data).json()
    assert (body["added"], body["updated"]) == (1, 1)
    assert [(s["row"], s["reason"]) for s in body["skipped"]] == [
        (4, "invalid_name"),
        (5, "invalid_subscription"),
    ]
    got = {m["email"]: m for m in members_of(api, lst["id"])}
    assert got["old@example.com"]["last_name"] == "Newer"
    assert got["old@example.com"]["status"] == "unsubscribed"
    assert got["new@example.com"]["subscription"] == "non_marketing"
    assert got["new@example.com"]["consent"] == "pending"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"name,colour\nx,y\n",
        b"email,email\na@example.com,b@example.com\n",
        "caf\xe9,email\n".encode("latin-1"),
        b"email\n\x00\x00\n",
        b"\xff\xfe\x00e\x00m",
    ],
)
def test_a_csv_that_cannot_be_read_as_a_whole_is_a_clear_422(people, data):
    _, api, _ = people
    lst = new_list(api, f"CSV-bad-{hash(data)}")
    r = import_csv(api, lst["id"], data)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "bad_csv"
    assert members_of(api, lst["id"]) == []


def test_a_csv_over_the_size_limit_is_a_413(people):
    from gateway.http.lists import MAX_CSV_BYTES

    _, api, _ = people
    lst = new_list(api, "CSV-huge")
    data = b"email\n" + b"a@example.com\n" * (MAX_CSV_BYTES // 14 + 10)
    r = import_csv(api, lst["id"], data)
    assert r.status_code == 413
