"""Structured logs (#14): ``mailgate serve`` as a real process writes one JSON object per
line with request ids it echoes, context from runners, exceptions as one field, and no
secret that came in with a request."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway import logs
from gateway.runner import LoopRunner
from tests.support.processes import ServeProcess


def serve(tmp: Path, **settings: str) -> ServeProcess:
    """``mailgate serve --only http,worker`` on a fresh SQLite file, answering /healthz."""
    return ServeProcess(
        f"sqlite+aiosqlite:///{tmp}/mg.db", tmp, "http,worker", stop_deadline="2", **settings
    ).wait_serving(30, probe="/healthz")


def test_json_logs_carry_the_echoed_request_id_and_never_a_secret_from_the_request(tmp_path):
    mailgate = serve(tmp_path, log_format="json", http_access_log="1")
    url = mailgate.http_url
    token = "mg_" + "S3cretT0kenValue" * 2  # noqa: S105 - the secret that must not be logged
    password = "hunter2-" + os.urandom(4).hex()  # noqa: S105
    try:
        mine = httpx.get(f"{url}/healthz", headers={"X-Request-Id": "lb-7f3a.42"}, timeout=10)
        assert mine.headers["x-request-id"] == "lb-7f3a.42"
        made = httpx.get(f"{url}/healthz", timeout=10).headers["x-request-id"]
        assert len(made) == 32
        hostile = httpx.get(f"{url}/healthz", headers={"X-Request-Id": "a b\t<x>"}, timeout=10)
        assert hostile.headers["x-request-id"] != "a b\t<x>"
        secret = httpx.get(
            f"{url}/api/v1/leads",
            params={"api_token": token, "password": password},
            headers={"Authorization": f"Bearer {token}", "X-Request-Id": "with-secrets"},
            timeout=10,
        )
        assert secret.status_code == 401
        login = httpx.post(
            f"{url}/login", data={"email": "rep@example.jp", "password": password}, timeout=10
        )
        assert login.status_code in (400, 401, 403, 422), login.status_code
        time.sleep(0.3)
    finally:
        mailgate.terminate(15)
    text = mailgate.stderr
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines, "serve wrote no log line"
    for entry in lines:
        assert {"ts", "level", "logger", "msg"} <= set(entry), entry
    by_id = {e.get("request_id"): e for e in lines if e["logger"] == "uvicorn.access"}
    assert "/healthz" in by_id["lb-7f3a.42"]["msg"]
    assert made in by_id
    assert "/api/v1/leads" in by_id["with-secrets"]["msg"] and "401" in by_id["with-secrets"]["msg"]
    assert token not in text and password not in text
    assert "S3cretT0ken" not in text


def test_text_is_the_default_and_warning_level_drops_info_lines(tmp_path):
    mailgate = serve(tmp_path, log_level="warning")
    url = mailgate.http_url
    try:
        httpx.get(f"{url}/readyz", timeout=10)
    finally:
        mailgate.terminate(15)
    for line in mailgate.stderr.splitlines():
        assert not line.startswith("{"), line
        assert " INFO " not in line and " DEBUG " not in line, line


def test_a_bad_log_setting_is_one_clear_error(tmp_path):
    from typer.testing import CliRunner

    from gateway.cli.main import app

    env = {"MAILGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    for args, extra in (
        (["--log-format", "xml"], {}),
        (["--log-level", "loud"], {}),
        ([], {"MAILGATE_LOG_FORMAT": "yaml"}),
    ):
        done = CliRunner().invoke(app, ["serve", "--only", "http", *args], env={**env, **extra})
        assert done.exit_code != 0
        assert done.stderr.startswith("error:"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened


class Failing(LoopRunner):
    """A runner whose rounds fail, as one does while its storage is away."""

    name = "relay"

    async def run_once(self) -> int:
        raise ConnectionRefusedError("storage away")


@pytest.fixture
def captured():
    stream = io.StringIO()
    logs.configure("json", "debug", stream=stream)
    yield stream
    logs.configure("text", "warning", stream=sys.stderr)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def test_a_runners_failure_names_the_runner_and_its_traceback_is_one_field(captured):
    async def go() -> None:
        runner = Failing(poll_interval=0.01)
        await runner.start()
        await asyncio.sleep(0.1)
        await runner.stop(1)

    asyncio.run(go())
    entries = [json.loads(line) for line in captured.getvalue().splitlines()]
    failed = [e for e in entries if "round failed" in e["msg"]]
    assert failed and failed[0]["runner"] == "relay" and failed[0]["level"] == "error"
    detail = [e for e in entries if "exc" in e]
    assert detail and "ConnectionRefusedError: storage away" in detail[0]["exc"]
    assert "\n" not in captured.getvalue().splitlines()[0]  # one line per event


def test_bound_context_and_extra_fields_appear_and_secrets_in_messages_are_blanked(captured):
    log = logging.getLogger("mailgate.test")
    with logs.bind(send_id=42):
        log.warning("relay said no for %s", "password=opensesame", extra={"inbound_id": 7})
    log.info('{"token": "abc.def", "Authorization": "Bearer xyz"} and mg_AbCdEfGhIjKlMnOp')
    first, second = (json.loads(line) for line in captured.getvalue().splitlines())
    assert (first["send_id"], first["inbound_id"]) == (42, 7)
    assert "opensesame" not in first["msg"] and "password=[redacted]" in first["msg"]
    assert "send_id" not in second
    assert "abc.def" not in second["msg"] and "xyz" not in second["msg"]
    assert "AbCdEfGhIjKlMnOp" not in second["msg"]
