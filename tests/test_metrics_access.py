"""``/metrics`` names every org: it is not published on the public tracking listener.

Without ``MAILGATE_METRICS_TOKEN`` only loopback clients may scrape it (a
same-host proxy passes the real client in ``X-Forwarded-For``, which uvicorn
honours from loopback); with it, the bearer token is required from anywhere.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from gateway.http.app import may_scrape
from tests.support.server import MailgateServer

TOKEN = "prom-" + uuid.uuid4().hex  # noqa: S105 - the test's own metrics token


@pytest.fixture(scope="module")
def guarded(database_url, tmp_path_factory):
    server = MailgateServer(
        database_url, tmp_path_factory.mktemp("data"), metrics_token=TOKEN
    ).start({"http"})
    yield server
    server.stop()


def org_named(server: MailgateServer) -> str:
    name = f"Secret Customer {uuid.uuid4().hex[:6]}"
    server.user(server.org(name), f"ops@{uuid.uuid4().hex[:6]}.example.jp")
    return name


def test_a_local_scraper_reads_metrics_and_a_remote_client_does_not(mailgate):
    name = org_named(mailgate)
    local = httpx.get(f"{mailgate.http_url}/metrics", timeout=30)
    assert local.status_code == 200 and name in local.text
    # What a reverse proxy on this host forwards for a visitor from the internet.
    remote = httpx.get(
        f"{mailgate.http_url}/metrics", headers={"X-Forwarded-For": "203.0.113.7"}, timeout=30
    )
    assert remote.status_code == 403
    assert name not in remote.text and "MAILGATE_METRICS_TOKEN" in remote.text


def test_with_a_metrics_token_only_that_bearer_token_reads_metrics(guarded):
    name = org_named(guarded)
    url = f"{guarded.http_url}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.get(url, headers=headers, timeout=30)
        assert r.status_code == 401 and name not in r.text
    r = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200 and name in r.text
    assert httpx.get(f"{guarded.http_url}/healthz", timeout=30).status_code == 200


@pytest.mark.parametrize(
    "client, header, token, allowed",
    [
        ("127.0.0.1", "", "", True),
        ("::1", "", "", True),
        ("203.0.113.7", "", "", False),
        ("10.0.0.5", "", "", False),
        (None, "", "", False),
        ("testclient", "", "", False),
        ("203.0.113.7", "Bearer t0k", "t0k", True),
        ("127.0.0.1", "", "t0k", False),
        ("127.0.0.1", "Bearer t0kX", "t0k", False),
        ("127.0.0.1", "Basic t0k", "t0k", False),
    ],
)
def test_who_may_scrape(client, header, token, allowed):
    assert may_scrape(client, header, token) is allowed
