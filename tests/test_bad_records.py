"""A record mail cannot carry is skipped with a reason, never a refusal of the whole
send; such records are refused when created through the API or a CSV import
(addresses checked by email-validator, without DNS)."""

from __future__ import annotations

import pytest

from gateway.records.csv_rows import parse_csv
from storage import crm

BAD_ADDRESSES = ["a@-b.example", "a..b@client.example", "a@client.invalid", "a@b@c.example"]


@pytest.fixture(scope="module")
def people(mailgate):
    org = mailgate.org("bad-records-org")
    user = mailgate.user(org, "rep@bad-records.example", name="営業 一郎")
    return mailgate, org, mailgate.api(user)


def stored_lead(mailgate, org, **values) -> int:
    """A record as the dropbox or an older version may have stored it: unchecked."""

    async def insert() -> int:
        async with mailgate.db.begin() as conn:
            return await crm.create(conn, "leads", org["id"], values)

    return mailgate.call(insert())


def test_one_bad_record_is_skipped_and_the_others_are_sent(people):
    mailgate, org, api = people
    good = api.post("/api/v1/leads", json={"last_name": "山田", "email": "good@client.example"})
    assert good.status_code == 201, good.text
    broken_name = stored_lead(
        mailgate, org, last_name="佐藤\r\nBcc: all@victim.example",
        email="sato@client.example", email_norm="sato@client.example",
    )  # fmt: skip
    broken_address = stored_lead(
        mailgate, org, last_name="鈴木", email="a@-b.example", email_norm="a@-b.example"
    )
    to = [{"module": "leads", "id": i} for i in (good.json()["id"], broken_name, broken_address)]
    r = api.post("/api/v1/emails", json={"to": to, "subject": "ご案内", "html": "<p>hi</p>"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert [s["to"]["id"] for s in body["sends"]] == [good.json()["id"]]
    reasons = {s["to"]["id"]: s["reason"] for s in body["skipped"]}
    assert (
        reasons[broken_name] == "invalid_name:last_name contains a line break or control character"
    )
    assert reasons[broken_address].startswith("invalid_address:")
    assert "hyphen" in reasons[broken_address]


def test_a_send_whose_every_record_is_bad_is_accepted_with_nothing_to_send(people):
    mailgate, org, api = people
    bad = stored_lead(mailgate, org, last_name="x", email="x@-y.example", email_norm="x@-y.example")
    r = api.post(
        "/api/v1/emails", json={"to": [{"module": "leads", "id": bad}], "subject": "s", "html": "h"}
    )
    assert r.status_code == 202, r.text
    assert r.json()["sends"] == [] and r.json()["skipped"][0]["reason"].startswith("invalid_addr")


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_the_api_refuses_a_record_with_an_invalid_address(people, address):
    _, _, api = people
    r = api.post("/api/v1/contacts", json={"last_name": "x", "email": address})
    assert r.status_code == 422, r.text
    assert "not a valid address" in r.json()["error"]["message"]


def test_the_api_refuses_a_line_break_in_a_name_and_accepts_international_addresses(people):
    _, _, api = people
    r = api.post("/api/v1/leads", json={"last_name": "a\nb", "email": "n@client.example"})
    assert r.status_code == 422 and "last_name" in r.json()["error"]["message"]
    for address in ("user@пример.рф", "山田@例え.jp", "Taro@Client.Example"):
        r = api.post("/api/v1/leads", json={"last_name": "x", "email": address})
        assert r.status_code == 201, r.text


def test_csv_import_names_each_invalid_row():
    data = (
        "last_name,email,first_name\n"
        "山田,yamada@client.example,太郎\n"
        "佐藤,a@-b.example,花子\n"
        '鈴木,s@client.example,"一\r\n郎"\n'
    ).encode()
    parsed = parse_csv(data, "leads")
    assert any(e.startswith("line 3:") and "not a valid address" in e for e in parsed.errors)
    assert any(e.startswith("line 4: first_name") for e in parsed.errors)
    assert not any(e.startswith("line 2") for e in parsed.errors)
