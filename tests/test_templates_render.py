"""Templates: save-time validation, sandboxed rendering, escaping, CSS, text part."""

from __future__ import annotations

import pytest
from markupsafe import escape

from templates.render import (
    Rendered,
    TemplateProblem,
    build_context,
    compile_template,
    validate,
)

USER = {"first_name": "健二", "last_name": "滝沢", "email": "takizawa@zylker.jp"}
ORG = {"name": "Zylker株式会社", "locale": "ja"}


def lead_context(**record: str) -> dict:
    base = {"first_name": "太郎", "last_name": "山田", "email": "yamada@example.jp"}
    return build_context("leads", {**base, **record}, {}, USER, ORG)


# ----------------------------------------------------------------- validation


def test_unknown_attribute_is_refused_naming_field_and_line():
    html = "<p>こんにちは</p>\n<p>{{ lead.last_name }} 様</p>\n<p>FAX: {{ lead.fax }}</p>"
    with pytest.raises(TemplateProblem) as info:
        validate("件名", html, None, None, None, "leads")
    assert info.value.field == "lead.fax"
    assert info.value.line == 3
    assert info.value.part == "html"
    assert "lead.fax" in str(info.value)


def test_object_of_another_module_is_refused():
    with pytest.raises(TemplateProblem) as info:
        validate("{{ contact.last_name }} 様", "<p>x</p>", module="leads")
    assert info.value.field == "contact"
    assert info.value.part == "subject"
    assert info.value.line == 1


def test_nested_account_field_is_known_for_contacts_but_not_leads():
    validate(
        "x", "{{ contact.account.name }} {{ user.signature }} {{ org.name }}", module="contacts"
    )
    with pytest.raises(TemplateProblem) as info:
        validate("x", "{{ lead.account.name }}", module="leads")
    assert info.value.field == "lead.account"


def test_syntax_error_is_refused_with_its_line():
    with pytest.raises(TemplateProblem) as info:
        validate("x", "<p>a</p>\n<p>b</p>\n{% if lead.email %}\n<p>c</p>\n", module="leads")
    assert info.value.line is not None and info.value.line >= 3
    assert info.value.field is None


def test_unknown_filter_is_refused():
    with pytest.raises(TemplateProblem) as info:
        validate("x", "\n{{ lead.email | shout }}", module="leads")
    assert info.value.line == 2


def test_footer_problem_names_the_footer():
    with pytest.raises(TemplateProblem) as info:
        validate("x", "<p>ok</p>", None, "<p>{{ org.name }}</p>", "<p>{{ org.ceo }}</p>", "leads")
    assert (info.value.part, info.value.field) == ("footer", "org.ceo")


def test_loop_variables_are_not_merge_fields():
    compiled = compile_template(
        "x", "{% for w in ['a', 'b'] %}{{ w }}{{ loop.index }}{% endfor %}", module="leads"
    )
    assert compiled.render(lead_context()).html == "a1b2"


# ----------------------------------------------------------------- SSTI

SSTI_PAYLOADS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ range(10) }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ request.application.__globals__ }}",
    "{{ lead.__class__ }}",
    "{{ lead.last_name.__class__.__base__ }}",
    "{{ lead['__class__'] }}",
    "{{ lead | attr('__class__') }}",
    "{{ lead.last_name.format(lead) }}",
    "{% set x = lead.__class__ %}{{ x }}",
    "{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}",
    "{{ 'a' * 100000000 }}",
    "{{ 9 ** 999999 }}",
    "{{ 'x' | center(1000000000) }}",
    "{% include '/etc/passwd' %}",
    "{% extends '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{% macro m() %}{% endmacro %}",
    "{% autoescape false %}{{ lead.last_name }}{% endautoescape %}",
    "{{ lead.last_name | safe }}",
    "${Leads.__class__}",
    "${Leads.Last Name.__class__}",
    "${__builtins__.open}",
    "${Leads.Last Name}}}{{7*7}}",
    "${Leads.{{7*7}}}",
]


@pytest.mark.parametrize("payload", SSTI_PAYLOADS)
def test_template_injection_payload_is_refused_at_save(payload):
    with pytest.raises(TemplateProblem):
        validate("件名", f"<p>{payload}</p>", module="leads")
    with pytest.raises(TemplateProblem):
        compile_template(payload, "<p>x</p>", module="leads")


@pytest.mark.parametrize(
    "value",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{7*7}}",
        "${Leads.Last Name}",
        "{% include '/etc/passwd' %}",
        "{{ config }}",
    ],
)
def test_template_syntax_in_a_merge_value_renders_as_literal_text(value):
    compiled = compile_template(
        "{{ lead.last_name }}", "<p>{{ lead.last_name }}</p>", "{{ lead.last_name }}"
    )
    rendered = compiled.render(lead_context(last_name=value))
    assert rendered.subject == value
    assert rendered.text == value
    assert rendered.html == f"<p>{escape(value)}</p>"


def test_sandbox_blocks_unsafe_attributes_even_past_validation():
    """Defence in depth: the environment itself refuses dunder access."""
    from jinja2.exceptions import SecurityError

    from templates.render import _TEXT_ENV

    with pytest.raises(SecurityError):
        _TEXT_ENV.from_string("{{ x.__class__.__mro__[1].__subclasses__() }}").render(x="")
    assert _TEXT_ENV.globals == {}
    assert "safe" not in _TEXT_ENV.filters and "attr" not in _TEXT_ENV.filters


# ----------------------------------------------------------------- escaping


def test_script_in_merge_value_is_escaped_in_html_but_not_in_text():
    compiled = compile_template(
        "ご提案 {{ lead.company }}",
        "<p>{{ lead.company }} {{ lead.last_name }} 様</p>",
        "{{ lead.company }} {{ lead.last_name }} 様",
    )
    rendered = compiled.render(lead_context(company="<script>alert(1)</script>&Co"))
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;Co" in rendered.html
    assert rendered.text == "<script>alert(1)</script>&Co 山田 様"
    assert rendered.subject == "ご提案 <script>alert(1)</script>&Co"


def test_merge_value_with_newline_cannot_break_the_subject():
    compiled = compile_template("件名 {{ lead.company }}", "<p>x</p>")
    rendered = compiled.render(lead_context(company="ACME\r\nBcc: victim@example.com"))
    assert "\n" not in rendered.subject and "\r" not in rendered.subject


# ----------------------------------------------------------------- Japanese names


def test_default_filter_greets_lead_without_first_name():
    compiled = compile_template("x", "{{ lead.first_name | default('お客様') }}")
    assert compiled.render(lead_context(first_name="")).html == "お客様"
    assert compiled.render(lead_context()).html == "太郎"


def test_honorific_after_last_name():
    compiled = compile_template("{{ lead.last_name }} 様", "<p>{{ lead.last_name }} 様</p>")
    rendered = compiled.render(lead_context())
    assert rendered.subject == "山田 様"
    assert rendered.html == "<p>山田 様</p>"


# ----------------------------------------------------------------- structure


def test_header_and_footer_wrap_the_body_inside_body_element():
    compiled = compile_template(
        "x",
        "<html><body><p>本文 {{ lead.last_name }}</p></body></html>",
        None,
        "<div>ヘッダー</div>",
        "<div>{{ org.name }} 配信停止: {{ unsubscribe_url }}</div>",
    )
    context = lead_context()
    context["unsubscribe_url"] = "https://mail.example.jp/u/abc"
    html = compiled.render(context).html
    assert html.index("<body>") < html.index("ヘッダー") < html.index("本文 山田")
    assert html.index("本文 山田") < html.index("Zylker株式会社") < html.index("</body>")
    text = compiled.render(context).text
    assert (
        text.index("ヘッダー")
        < text.index("本文 山田")
        < text.index("https://mail.example.jp/u/abc")
    )


def test_footer_is_added_to_an_explicit_text_part():
    compiled = compile_template("x", "<p>h</p>", "本文のみ", None, "<p>{{ org.name }}</p>")
    assert compiled.render(lead_context()).text == "本文のみ\nZylker株式会社\n"


def test_text_part_is_derived_from_html_with_links_and_breaks():
    html = (
        "<h1>新製品のご案内</h1><p>{{ lead.last_name }} 様<br>いつもお世話になっております。</p>"
        '<p><a href="https://example.jp/p?id={{ lead.email }}">詳細はこちら</a></p>'
        "<ul><li>一</li><li>二</li></ul><style>p{}</style><script>x()</script>"
    )
    text = compile_template("x", html).render(lead_context()).text
    assert text == (
        "新製品のご案内\n\n山田 様\nいつもお世話になっております。\n\n"
        "詳細はこちら (https://example.jp/p?id=yamada@example.jp)\n\n- 一\n- 二\n"
    )


def test_css_is_inlined_once_and_jinja_survives():
    html = (
        "<html><head><style>p.greet { color: #333; } td { padding: 4px; }</style></head><body>"
        '<p class="greet" title="{{ lead.company }}">{{ lead.last_name }} 様</p>'
        "<table>{% for x in ['a', 'b'] %}<tr><td>{{ x }}</td></tr>{% endfor %}</table>"
        '<a href="{{ unsubscribe_url }}" {% if lead.email %}data-x="1"{% endif %}>停止</a>'
        "</body></html>"
    )
    compiled = compile_template("x", html)
    assert "<style" not in compiled.html_source
    assert "{{ lead.last_name }}" in compiled.html_source
    assert "{% for x in ['a', 'b'] %}" in compiled.html_source
    context = lead_context(company="A&B")
    context["unsubscribe_url"] = "https://u.example/x"
    out = compiled.render(context).html
    assert '<p class="greet" title="A&amp;B" style="color: #333;">山田 様</p>' in out
    assert out.count('<td style="padding: 4px;">') == 2
    assert '<a href="https://u.example/x"  data-x="1" >' in out or 'data-x="1"' in out


def test_remote_stylesheets_are_not_fetched():
    compiled = compile_template(
        "x", '<link rel="stylesheet" href="http://127.0.0.1:9/evil.css"><p>{{ lead.last_name }}</p>'
    )
    assert "127.0.0.1" not in compiled.html_source


def test_compiled_templates_are_cached():
    args = ("件名", "<p>{{ lead.last_name }}</p>", None, None, None, "leads")
    assert compile_template(*args) is compile_template(*args)


def test_render_returns_subject_html_text():
    rendered = compile_template("a", "<p>b</p>", "c").render(lead_context())
    assert rendered == Rendered(subject="a", html="<p>b</p>", text="c")


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>a<br><br>b</p>", "a\n\nb\n"),
        ("<div>a</div><div>b</div>", "a\nb\n"),
        ('<a href="https://x.jp">https://x.jp</a>', "https://x.jp\n"),
        ('<a href="mailto:a@x.jp">a@x.jp</a>', "a@x.jp\n"),
        ('<a href="#top">上へ</a>', "上へ\n"),
        ('<img src="logo.png" alt="Zylker">', "Zylker\n"),
        ("<html><head><title>t</title></head><body>本文 &amp; 記号</body></html>", "本文 & 記号\n"),
        ("<pre>a\n  b</pre>", "a\n  b\n"),
    ],
)
def test_html_to_text_keeps_what_a_reader_needs(html, text):
    from templates.htmltext import html_to_text

    assert html_to_text(html) == text
