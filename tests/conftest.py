"""Suite-wide fixtures and the skip policy.

Tests that need something a fresh clone may lack (the shared corpora, Dovecot,
smtp-sink, PostgreSQL, Chromium) call ``pytest.skip`` with a reason.  CI sets
``MAILGATE_TEST_REQUIRE_ALL=1``; then every skip is turned into a failure, so a
green CI proves that all of them really ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAILGATE_SHARED_DIR", ROOT.parent / "shared"))
CORPORA = SHARED / "corpora"


def strict() -> bool:
    return os.environ.get("MAILGATE_TEST_REQUIRE_ALL", "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if strict() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skip turned into failure (MAILGATE_TEST_REQUIRE_ALL=1): {reason}"


@pytest.fixture(scope="session")
def corpora() -> Path:
    """The shared real-mail corpora; absent in a user's fresh clone."""
    if not (CORPORA / "README.md").exists():
        pytest.skip(f"shared corpora not found at {CORPORA} (set MAILGATE_SHARED_DIR)")
    return CORPORA


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    """A fresh, empty database of each engine (PostgreSQL when MAILGATE_TEST_DATABASE_URL is set)."""
    from tests.support.databases import fresh_database

    with fresh_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="module")
def mailgate(database_url, tmp_path_factory):
    """A running mailgate (SMTP + HTTP) on loopback ports, over a fresh database."""
    from tests.support.server import MailgateServer

    server = MailgateServer(database_url, tmp_path_factory.mktemp("data")).start()
    yield server
    server.stop()
