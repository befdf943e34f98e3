"""Merge-field catalogue, context building, name order and hosted-CRM syntax."""

from __future__ import annotations

import pytest

from templates import fields
from templates.crm_syntax import UnknownLabel, translate
from templates.render import TemplateProblem, build_context, compile_template, validate

USER = {"first_name": "健二", "last_name": "滝沢", "email": "takizawa@zylker.jp", "password": "x"}


def test_catalogue_names_never_shadow_dict_methods():
    """Templates read plain dicts; a field called `items` would print a method."""

    def leaves(tree, prefix=""):
        for key, sub in tree.items():
            yield key
            if sub is not None:
                yield from leaves(sub)

    for _, tree in fields.MODULES.values():
        assert not set(leaves(tree)) & set(dir(dict))
    assert not set(leaves(fields.USER)) & set(dir(dict))


@pytest.mark.parametrize(
    ("locale", "expected"), [("ja", "山田 太郎"), ("ja_JP", "山田 太郎"), ("en", "太郎 山田")]
)
def test_full_name_follows_org_locale(locale, expected):
    compiled = compile_template("{{ lead.full_name }}", "<p>{{ lead.full_name }}</p>")
    context = build_context(
        "leads",
        {"first_name": "太郎", "last_name": "山田"},
        {},
        USER,
        {"name": "Z", "locale": locale},
    )
    assert compiled.render(context).subject == expected


def test_english_full_name_for_en_org():
    context = build_context(
        "contacts", {"first_name": "Ada", "last_name": "Lovelace"}, {}, {}, {"locale": "en"}
    )
    assert context["contact"]["full_name"] == "Ada Lovelace"


def test_context_holds_only_catalogued_fields_as_plain_dicts():
    record = {"first_name": "花子", "last_name": "佐藤", "owner_password_hash": "secret", "id": 7}
    context = build_context("contacts", record, {"account": {"name": "本日快晴株式会社"}}, USER, {})
    assert context["contact"]["account"] == {"name": "本日快晴株式会社"}
    assert "owner_password_hash" not in context["contact"]
    assert "password" not in context["user"]
    assert context["user"]["name"] == "健二 滝沢"  # en default when org has no locale
    assert type(context["contact"]) is dict


def test_deal_context_reaches_account_and_contact():
    context = build_context(
        "deals",
        {"name": "年間契約", "stage": "交渉", "amount": 1200000},
        {
            "account": {"name": "みなとみらい商事"},
            "contact": {"first_name": "沙有里", "last_name": "赤塚"},
        },
        USER,
        {"locale": "ja"},
    )
    compiled = compile_template(
        "{{ deal.name }}",
        "{{ deal.account.name }} {{ deal.contact.full_name }} 様 {{ deal.amount }}",
        module="deals",
    )
    assert compiled.render(context).html == "みなとみらい商事 赤塚 沙有里 様 1200000"


def test_missing_related_account_renders_empty():
    compiled = compile_template("x", "[{{ contact.account.name }}]", module="contacts")
    context = build_context("contacts", {"last_name": "佐藤"}, {}, USER, {})
    assert compiled.render(context).html == "[]"


# ----------------------------------------------------------------- hosted-CRM syntax


def test_hosted_crm_fields_translate_to_jinja():
    assert translate("${Leads.Last Name} 様") == "{{ lead.last_name }} 様"
    assert translate("${Contacts.Account Name}") == "{{ contact.account.name }}"
    assert translate("${Users.Name} / ${Organization.Name}") == "{{ user.name }} / {{ org.name }}"
    assert translate("${Leads.Designation}") == "{{ lead.title }}"
    assert translate("${見込み客.姓}${見込み客.名}") == "{{ lead.last_name }}{{ lead.first_name }}"
    assert translate("${LEADS.last  name}") == "{{ lead.last_name }}"


def test_old_crm_template_renders_unchanged():
    subject = "${Leads.Last Name}様 ご提案の件について"
    html = (
        "<p>${Leads.Company}<br>${Leads.Last Name} ${Leads.First Name} 様</p>\n"
        "<p>${Organization.Name}<br>${Users.Name}</p>"
    )
    compiled = compile_template(subject, html, None, None, None, "Leads")
    context = build_context(
        "leads",
        {"first_name": "光太郎", "last_name": "池田", "company": "本日快晴株式会社"},
        {},
        {"name": "鈴木 ほなみ"},
        {"name": "Zylker", "locale": "ja"},
    )
    rendered = compiled.render(context)
    assert rendered.subject == "池田様 ご提案の件について"
    assert rendered.html == (
        "<p>本日快晴株式会社<br>池田 光太郎 様</p>\n<p>Zylker<br>鈴木 ほなみ</p>"
    )
    assert rendered.text == "本日快晴株式会社\n池田 光太郎 様\n\nZylker\n鈴木 ほなみ\n"


def test_hosted_crm_syntax_mixes_with_jinja():
    compiled = compile_template(
        "x", "${Contacts.Last Name} {{ contact.account.name }}", module="contacts"
    )
    context = build_context(
        "contacts", {"last_name": "堀越"}, {"account": {"name": "HORIKOSHI"}}, {}, {}
    )
    assert compiled.render(context).html == "堀越 HORIKOSHI"


def test_unknown_hosted_crm_field_names_field_and_line():
    with pytest.raises(UnknownLabel):
        translate("${Leads.Fax}")
    with pytest.raises(TemplateProblem) as info:
        validate("x", "<p>a</p>\n<p>${Leads.Fax}</p>", module="leads")
    assert (info.value.field, info.value.line) == ("${Leads.Fax}", 2)


def test_hosted_crm_field_of_another_module_is_refused():
    with pytest.raises(TemplateProblem) as info:
        validate("x", "${Contacts.Account Name}", module="leads")
    assert info.value.field == "contact"


def test_unknown_module_is_refused():
    with pytest.raises(ValueError):
        validate("x", "y", module="invoices")
