"""Personalised mail throughput: our render + MIME compose vs a bare Jinja loop.

Ours, per message: build_context (plain dicts) -> CompiledTemplate.render in
the sandbox (subject, autoescaped HTML, derived text) -> compose() to RFC 5322
bytes with List-Unsubscribe.  Baseline, per message: the same HTML template
rendered by a plain ``jinja2.Environment().from_string(...).render(...)``
(no sandbox, no escaping, no text part, no MIME).  Same run, same data.

Ours includes the render budget (templates.render.RenderLimits) counted inside
the sandbox; the last lines time how fast costly templates are refused.

    /work/devvenv/bin/python bench/bench_render.py [messages]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jinja2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.sending.compose import compose, make_message_id  # noqa: E402
from templates.render import TemplateLimit, build_context, compile_template  # noqa: E402

SUBJECT = "{{ lead.last_name }} 様 ご提案の件について"
PARAGRAPH = (
    "<p>いつもお世話になっております。弊社の新製品についてご案内いたします。"
    "先日はお時間をいただき、誠にありがとうございました。ご提案の件について、"
    "資料をお送りいたします。ご不明な点がございましたらお気軽にお問い合わせください。</p>\n"
)
HTML = (
    "<html><head><style>p { color: #333; line-height: 1.6 } .sig { color: #777 }</style>"
    "</head><body>\n<p>{{ lead.company }}<br>{{ lead.title }} {{ lead.full_name }} 様</p>\n"
    "<p>{{ org.name }}の{{ user.full_name }}です。</p>\n"
    + PARAGRAPH
    * 13
    + '<p>詳細: <a href="https://zylker.jp/p?e={{ lead.email }}">製品ページ</a></p>\n'
    '<p>お電話: {{ lead.phone }} / {{ lead.first_name | default("お客様") }}</p>\n'
    '<p class="sig">{{ user.full_name }}<br>{{ user.email }}<br>{{ org.name }}</p>\n'
    "</body></html>"
)


def records(n: int) -> list[dict]:
    return [
        {
            "first_name": f"太郎{i}",
            "last_name": "山田",
            "email": f"yamada{i}@example.jp",
            "company": f"本日快晴株式会社 {i}",
            "phone": f"03-1234-{i % 10000:04d}",
            "title": "部長",
        }
        for i in range(n)
    ]


USER = {"first_name": "健二", "last_name": "滝沢", "email": "takizawa@zylker.jp"}
ORG = {"name": "Zylker株式会社", "locale": "ja"}


def ours(leads: list[dict]) -> int:
    compiled = compile_template(SUBJECT, HTML, None, None, None, "leads")
    total = 0
    for i, lead in enumerate(leads):
        context = build_context("leads", lead, {}, USER, ORG)
        rendered = compiled.render(context)
        raw = compose(
            from_addr="takizawa@zylker.jp",
            from_name="滝沢 健二",
            to_addr=lead["email"],
            to_name=context["lead"]["full_name"],
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            message_id=make_message_id("zylker.jp"),
            headers={"X-Mailgate-Send": str(i)},
            list_unsubscribe=(
                f"mailto:unsubscribe+{i:032x}@bounce.zylker.jp",
                f"https://mail.zylker.jp/u/{i:064x}",
            ),
            one_click=True,
        )
        total += len(raw)
    return total


def baseline(leads: list[dict]) -> int:
    template = jinja2.Environment().from_string(HTML)  # noqa: S701 - bare baseline on purpose
    total = 0
    for lead in leads:
        context = {"lead": {**lead, "full_name": f"{lead['last_name']} {lead['first_name']}"},
                   "user": {**USER, "full_name": "滝沢 健二"}, "org": ORG}  # fmt: skip
        total += len(template.render(context))
    return total


X300 = "x" * 300
#: Templates that took seconds and gigabytes before the render budget.
COSTLY = {
    "center(1.5e9)": "{{ 'x'|center('1500000000'|int)|length }}",
    "3 nested loops of 300": f"{{% for a in '{X300}' %}}{{% for b in '{X300}' %}}"
    f"{{% for c in '{X300}' %}}.{{% endfor %}}{{% endfor %}}{{% endfor %}}",
    "27 doublings of a ~ a": "{% set a = 'xx' %}" + "{% set a = a ~ a %}" * 27 + "{{ a }}",
}


def refusal_ms(source: str) -> float:
    start = time.perf_counter()
    try:
        compile_template("s", source).render(build_context("leads", {}))
    except TemplateLimit:
        return (time.perf_counter() - start) * 1000
    raise AssertionError(f"not refused: {source[:40]}")


def timed(fn, leads) -> tuple[float, int]:
    start = time.perf_counter()
    size = fn(leads)
    return time.perf_counter() - start, size


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    leads = records(n)
    html_bytes = len(compile_template(SUBJECT, HTML).render(
        build_context("leads", leads[0], {}, USER, ORG)).html.encode())  # fmt: skip
    ours(leads[:200])  # warm up (and compile once)
    baseline(leads[:200])
    t_base, _ = timed(baseline, leads)
    t_ours, size = timed(ours, leads)
    rate_base, rate_ours = n / t_base, n / t_ours
    print(f"messages: {n}, rendered HTML ~{html_bytes} bytes, 10 merge fields")
    print(f"baseline jinja2 render only : {rate_base:10.0f} msgs/s")
    print(f"ours render+text+MIME bytes : {rate_ours:10.0f} msgs/s  (avg {size / n:.0f} B/msg)")
    print(f"ratio ours/baseline         : {rate_ours / rate_base:10.2f}")
    for name, source in COSTLY.items():
        print(f"costly template refused     : {refusal_ms(source):10.1f} ms  ({name})")


if __name__ == "__main__":
    main()
