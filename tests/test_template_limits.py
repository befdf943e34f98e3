"""Nothing stalls on a costly template: every render runs on a budget counted inside
the sandbox, the API answers 422/413 naming the limit, and the server keeps
answering health checks while costly templates are saved and previewed."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from templates.render import (
    RenderLimits,
    TemplateLimit,
    TemplateProblem,
    build_context,
    compile_template,
)

X300 = "x" * 300
#: Templates a non-admin could save before issue 10, each costing seconds and gigabytes.
COSTLY = {
    "huge_center": ("{{ 'x'|center('1500000000'|int)|length }}", "template_max_number"),
    "nested_loops": (
        f"{{% for a in '{X300}' %}}{{% for b in '{X300}' %}}{{% for c in '{X300}' %}}."
        "{% endfor %}{% endfor %}{% endfor %}",
        "template_max_steps",
    ),
    "doubling_concat": (
        "{% set a = 'xx' %}" + "{% set a = a ~ a %}" * 27 + "{{ a|length }}",
        "template_max_string",
    ),
    "doubling_plus": (
        "{% set a = 'xx' %}" + "{% set a = a + a %}" * 27 + "{{ a|length }}",
        "template_max_string",
    ),
    "format_width": ("{{ '%1000000000d'|format(1) }}", "template_max_number"),
    "replace_blowup": (
        "{% set a = 'x'|center(9000) %}{{ a|replace(' ', a)|length }}",
        "template_max_string",
    ),
    "join_of_references": (
        "{% set a = 'x'|center(9000) %}{{ [a, a, a, a, a, a, a, a, a, a, a, a]|join }}",
        "template_max_string",
    ),
    "indent_by_a_string": (
        "{% set a = 'x'|center(9000)|replace(' ', 'x') %}{{ a|wordwrap(1)|indent(a)|length }}",
        "template_max_string",
    ),
    "captured_doubling": (
        "{% set a = 'xx' %}" + "{% set a %}{{ a }}{{ a }}{% endset %}" * 27 + "{{ a|length }}",
        "template_max_string",
    ),
    "repeated_literal": (
        f"{{% for a in '{X300}' %}}{{% for b in '{X300}' %}}"
        + "y" * 1000
        + "{% endfor %}{% endfor %}",
        "template_max_chars",
    ),  # fmt: skip
}
STATUS = {"template_max_string": 413, "template_max_chars": 413}


def render(html: str, limits: RenderLimits | None = None, **lead: str):
    compiled = compile_template("subject", html, None, None, None, "leads")
    return compiled.render(build_context("leads", lead), limits)


# -- the budget, without sockets ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(COSTLY))
def test_each_costly_template_stops_at_its_limit_quickly(name):
    html, limit = COSTLY[name]
    started = time.monotonic()
    with pytest.raises(TemplateLimit) as exc:
        render(html)
    assert exc.value.limit == limit
    assert exc.value.status == STATUS.get(limit, 422)
    assert limit in str(exc.value)
    assert time.monotonic() - started < 1.0


def test_ordinary_templates_render_as_before():
    html = (
        "<p>{{ lead.last_name|default('お客様') }} 様</p>"
        "{% for c in lead.company %}[{{ c }}]{% endfor %}"
        "{{ 'a' ~ lead.first_name ~ 'b' }} {{ 1 + 2 }} {{ lead.company|center(20)|trim }}"
        "{{ ['x', 'y']|join(', ') }} {{ 'a-b'|replace('-', '+') }} {{ 'x %s'|format('y') }}"
    )
    out = render(html, last_name="山田", first_name="太郎", company="ab")
    assert out.html == "<p>山田 様</p>[a][b]a太郎b 3 abx, y a+b x y"


def test_merge_values_are_charged_too():
    """A loop over a lead's value is bounded even though the template looked cheap."""
    html = "{% for a in lead.company %}{% for b in lead.company %}.{% endfor %}{% endfor %}"
    assert render(html, company="ab").html == "...."
    with pytest.raises(TemplateLimit) as exc:
        render(html, RenderLimits(max_steps=1000), company="x" * 300)
    assert exc.value.limit == "template_max_steps"


def test_the_time_limit_is_checked_as_steps_are_counted():
    html = "{% for a in lead.company %}{% for b in lead.company %}{{ b }}{% endfor %}{% endfor %}"
    limits = RenderLimits(max_steps=10**9, max_chars=10**9, seconds=0.05)
    started = time.monotonic()
    with pytest.raises(TemplateLimit) as exc:
        render(html, limits, company="x" * 3000)
    assert exc.value.limit == "template_render_seconds"
    assert time.monotonic() - started < 1.0


def test_a_template_limit_is_a_template_problem():
    """Callers that already answer 422 for a TemplateProblem refuse a costly one too."""
    assert issubclass(TemplateLimit, TemplateProblem)


# -- over the real HTTP server -----------------------------------------------------


@pytest.fixture(scope="module")
def author(mailgate):
    org = mailgate.org("costly-templates-org")
    user = mailgate.user(org, "author@costly.example", name="作者 太郎")  # not an admin
    return mailgate.api(user)


def create(api: httpx.Client, html: str) -> httpx.Response:
    body = {"name": "costly", "module": "leads", "subject": "s", "html": html}
    return api.post("/api/v1/templates", json=body)


def test_health_answers_within_100ms_while_costly_templates_are_saved_and_previewed(
    mailgate, author
):
    lead = author.post("/api/v1/leads", json={"last_name": "山田", "company": X300}).json()["id"]
    # Cheap against an empty record, so it saves; costly against this lead's company.
    looping = (
        "{% for a in lead.company %}{% for b in lead.company %}{% for c in lead.company %}"
        "{{ c }}{% endfor %}{% endfor %}{% endfor %}"
    )
    saved = create(author, looping)
    assert saved.status_code == 201, saved.text
    preview_url = f"/api/v1/templates/{saved.json()['id']}/preview"

    answers: list[tuple[str, int, dict]] = []
    stop = threading.Event()

    def attack(client: httpx.Client) -> None:
        while not stop.is_set():
            for name, (html, _) in COSTLY.items():
                r = create(client, html)
                answers.append((name, r.status_code, r.json()))
            r = client.post(preview_url, json={"module": "leads", "id": lead})
            answers.append(("preview", r.status_code, r.json()))

    clients = [httpx.Client(base_url=mailgate.http_url, headers=author.headers, timeout=30)
               for _ in range(2)]  # fmt: skip
    threads = [threading.Thread(target=attack, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    latencies = []
    try:
        with httpx.Client(base_url=mailgate.http_url, timeout=5) as health:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                assert health.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for c in clients:
            c.close()
    assert len(answers) > len(COSTLY), "the costly requests ran while health was polled"
    # Before issue 10 one such render held the process for seconds.  The machine
    # running the suite is shared (other suites, two cores), so scheduling hiccups
    # are tolerated: 90 % of health checks answer within 100 ms, none takes a second.
    latencies.sort()
    assert latencies[int(len(latencies) * 0.9)] < 0.1, latencies[-5:]
    assert latencies[-1] < 1.0, latencies[-5:]
    for name, status, body in answers:
        limit = "template_max_steps" if name == "preview" else COSTLY[name][1]
        assert status == STATUS.get(limit, 422), (name, body)
        assert body["error"]["code"] == "template_too_costly"
        assert body["error"]["limit"] == limit
        assert body["error"]["message"]


def test_a_costly_update_is_refused_and_the_saved_version_stays(author):
    saved = create(author, "<p>{{ lead.last_name }}</p>")
    tid = saved.json()["id"]
    r = author.put(f"/api/v1/templates/{tid}", json={"html": COSTLY["doubling_concat"][0]})
    assert r.status_code == 413
    assert r.json()["error"]["limit"] == "template_max_string"
    kept = author.get(f"/api/v1/templates/{tid}").json()
    assert kept["version"] == 1 and kept["html"] == "<p>{{ lead.last_name }}</p>"


def test_renders_can_share_one_deadline():
    """A send request's messages share one time limit, checked before each render too."""
    compiled = compile_template("s", "<p>{{ lead.last_name }}</p>")
    context = build_context("leads", {"last_name": "山田"})
    assert compiled.render(context, deadline=time.monotonic() + 5).html == "<p>山田</p>"
    with pytest.raises(TemplateLimit) as exc:
        compiled.render(context, deadline=time.monotonic() - 0.001)
    assert exc.value.limit == "template_render_seconds"


def test_a_costly_inline_send_is_refused_naming_the_limit_and_nothing_is_queued(author):
    lead = author.post("/api/v1/leads", json={"last_name": "x", "email": "x@costly.example"})
    html, limit = COSTLY["nested_loops"]
    r = author.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead.json()["id"]}], "subject": "s", "html": html},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["limit"] == limit
    assert author.get(f"/api/v1/leads/{lead.json()['id']}/emails").json()["items"] == []


def test_a_template_nested_too_deeply_is_a_422(author):
    r = create(author, "{{ " + "[" * 3000 + "]" * 3000 + " }}")
    assert r.status_code == 422, r.text
    assert "nests too deeply" in r.json()["error"]["message"]
