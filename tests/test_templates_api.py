"""Templates over HTTP: save-time validation (422 naming field and line), versions,
preview against a record, and server-side template injection that cannot escape."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def api(mailgate):
    org = mailgate.org("templates-org", plan="professional")
    user = mailgate.user(org, "author@example.co.jp", name="鈴木 一郎")
    return mailgate.api(user)


@pytest.fixture(scope="module")
def lead(api) -> int:
    r = api.post(
        "/api/v1/leads",
        json={
            "last_name": "山田",
            "first_name": "太郎",
            "email": "t@client.example",
            "company": "<b>山田&商事</b>",
        },
    )
    return r.json()["id"]


def test_save_version_and_preview_a_template_in_both_syntaxes(api, lead):
    r = api.post(
        "/api/v1/templates",
        json={
            "name": "挨拶",
            "module": "leads",
            "subject": "${Leads.Last Name}様へのご案内",
            "html": "<p>{{ lead.full_name }} 様（{{ lead.company }}）</p>",
        },
    )
    assert r.status_code == 201, r.text
    tpl = r.json()
    assert tpl["version"] == 1 and tpl["module"] == "leads"

    preview = api.post(
        f"/api/v1/templates/{tpl['id']}/preview", json={"module": "leads", "id": lead}
    )
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["subject"] == "山田様へのご案内"
    assert "山田 太郎 様" in body["html"]
    assert "&lt;b&gt;山田&amp;商事&lt;/b&gt;" in body["html"]  # merge values are escaped
    assert "山田 太郎 様" in body["text"]  # text derived from the HTML

    r = api.put(f"/api/v1/templates/{tpl['id']}", json={"subject": "改訂: {{ lead.last_name }}"})
    assert r.status_code == 200 and r.json()["version"] == 2
    assert (
        api.get(f"/api/v1/templates/{tpl['id']}").json()["subject"] == "改訂: {{ lead.last_name }}"
    )
    listed = api.get("/api/v1/templates").json()["items"]
    assert [t["id"] for t in listed] == [tpl["id"]]


def test_unknown_merge_field_is_a_422_naming_the_field_and_line(api):
    r = api.post(
        "/api/v1/templates",
        json={
            "name": "x",
            "module": "leads",
            "subject": "s",
            "html": "<p>ok</p>\n<p>{{ lead.fax }}</p>",
        },
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_template"
    assert err["field"] == "lead.fax" and err["line"] == 2 and err["part"] == "html"
    r = api.post(
        "/api/v1/templates",
        json={"name": "x", "module": "leads", "subject": "${Leads.Fax Number}", "html": "<p/>"},
    )
    assert r.status_code == 422 and "Fax Number" in r.json()["error"]["message"]


def test_syntax_error_is_a_422_with_its_line(api):
    r = api.post(
        "/api/v1/templates",
        json={"name": "x", "module": "leads", "subject": "s", "html": "a\nb\n{% if %}"},
    )
    assert r.status_code == 422 and r.json()["error"]["line"] == 3


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ config }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ lead.__class__ }}",
        "{{ lipsum.__globals__ }}",
        "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
        "${Leads.__class__}",
        "${{ ''.__class__ }}",
    ],
)
def test_template_injection_is_refused_or_inert(api, lead, payload):
    r = api.post(
        "/api/v1/templates",
        json={"name": "ssti", "module": "leads", "subject": "s", "html": f"<p>{payload}</p>"},
    )
    if r.status_code == 422:
        return
    assert r.status_code == 201, r.text
    out = api.post(
        f"/api/v1/templates/{r.json()['id']}/preview", json={"module": "leads", "id": lead}
    ).json()
    for leaked in ("<class", "object", "uid=", "__builtins__", "os.", "subclasses"):
        assert leaked not in out["html"], out["html"]


def test_injection_in_inline_send_content_is_refused_or_inert(mailgate, api, lead):
    from sqlalchemy import select

    from storage.schema import messages

    r = api.post(
        "/api/v1/emails",
        json={
            "to": [{"module": "leads", "id": lead}],
            "subject": "hi {{ ''.__class__ }}",
            "html": "<p>{{ ''.__class__.__mro__ }}{{ config }}</p>",
        },
    )
    if r.status_code == 422:
        return
    assert r.status_code == 202, r.text
    sid = r.json()["sends"][0]["id"]

    def filed(conn):
        q = select(messages.c.subject, messages.c.html_body).where(messages.c.send_id == sid)
        return conn.execute(q).one()

    subject, html = mailgate.call(mailgate.db.run_read(filed))
    assert subject == "hi" and html == "<p></p>"


def test_templates_belong_to_their_organization(mailgate, api):
    tid = api.post(
        "/api/v1/templates",
        json={"name": "mine", "module": "leads", "subject": "s", "html": "<p/>"},
    ).json()["id"]
    other_org = mailgate.org("templates-other", plan="standard")
    other = mailgate.api(mailgate.user(other_org, "someone@other.example"))
    assert other.get(f"/api/v1/templates/{tid}").status_code == 404
    assert other.put(f"/api/v1/templates/{tid}", json={"subject": "x"}).status_code == 404
