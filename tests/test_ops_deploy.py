"""docker-compose.yml without a Docker engine (#14): valid compose, real roles, known settings,
and the same topology run as plain ``mailgate serve --only ROLE`` processes.

The file is checked against the Compose Specification's own JSON schema
(vendored in tests/data/compose-spec with its Apache-2.0 licence) rather than
with Debian's ``docker-compose`` 1.x, which predates the specification (it
rejects a file without ``version:`` and knows neither ``name:`` nor
``service_completed_successfully``) and would need a Docker-less shim anyway.
What the schema cannot know is checked against the code: every service's
command names real roles, every ``MAILGATE_*`` variable is a Settings field,
every role runs somewhere, and each health check asks ``/readyz`` on a port
the process really listens on.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import smtplib
import subprocess
import sys
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from gateway.config import Settings
from gateway.serve import ROLES, parse_roles
from tests.support import smtp_sink
from tests.support.databases import fresh_database
from tests.support.metrics import series, value
from tests.support.processes import ServeProcess, stop_all
from tests.support.server import wait_until
from tests.test_cli import LAUNCH

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec" / "compose-spec.json"
MAILGATE = Path(sys.executable).with_name("mailgate")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def mailgate_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from the project's Dockerfile that serve (not the one-shot migrate)."""
    return {
        name: svc
        for name, svc in doc["services"].items()
        if svc.get("build") == "." and svc["command"][:2] == ["mailgate", "serve"]
    }


def roles_of(svc: dict[str, Any]) -> set[str]:
    command = svc["command"]
    assert command[2] == "--only", command
    return parse_roles(command[3])


_VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == "-":
            return arg
        raise AssertionError(f"compose needs ${name}: {arg}")

    return _VAR.sub(one, text)


# -- the file -----------------------------------------------------------------------


def test_the_compose_file_is_valid_by_the_compose_specification_schema():
    schema = json.loads(SCHEMA.read_text())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(compose())
    ]
    assert errors == []
    assert (SCHEMA.parent / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_the_schema_check_catches_a_misspelt_key():
    doc = compose()
    doc["services"]["smtp"]["comand"] = doc["services"]["smtp"].pop("command")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert any("comand" in e.message for e in validator.iter_errors(doc))


def test_every_service_runs_real_roles_with_known_settings_and_a_readiness_check():
    doc = compose()
    services = mailgate_services(doc)
    covered: set[str] = set()
    fields = set(Settings.model_fields)
    for name, svc in services.items():
        roles = roles_of(svc)
        covered |= roles
        env = svc["environment"]
        for key in env:
            assert key.startswith("MAILGATE_"), (name, key)
            assert key.removeprefix("MAILGATE_").lower() in fields, (name, key)
        depends = svc["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        check = " ".join(svc["healthcheck"]["test"])
        port = env["MAILGATE_HTTP_LISTEN"] if "http" in roles else env["MAILGATE_OPS_LISTEN"]
        assert f"127.0.0.1:{port.rsplit(':', 1)[1]}/readyz" in check, (name, check)
        # One signing key for every node, from the environment, never generated per container.
        assert env["MAILGATE_SECRET_KEY"].startswith("${MAILGATE_SECRET_KEY:?"), name
        assert env["MAILGATE_DATABASE_URL"].startswith("postgresql+asyncpg://"), name
    assert covered == set(ROLES)
    assert doc["services"]["migrate"]["command"] == ["mailgate", "db", "upgrade"]
    for key in doc["services"]["migrate"]["environment"]:
        assert key.removeprefix("MAILGATE_").lower() in fields


# -- the same topology as plain processes -------------------------------------------------


def run_cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(MAILGATE), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def set_up_org(env: dict[str, str], tag: str) -> dict[str, Any]:
    """An org and a rep, as `mailgate org create` / `user create` make them (in-process:
    two fewer interpreters to start on a busy CI machine)."""
    from gateway.org import admin
    from storage.db import Database

    async def go() -> dict[str, Any]:
        db = Database(env["MAILGATE_DATABASE_URL"])
        try:
            await admin.create_org(db, f"Compose {tag}", plan="standard", domains=[f"{tag}.jp"])
            return await admin.create_user(
                db,
                f"Compose {tag}",
                f"rep@{tag}.jp",
                name="佐藤 花子",
                mail_domain=env["MAILGATE_MAIL_DOMAIN"],
            )
        finally:
            await db.dispose()

    return asyncio.run(go())


@pytest.fixture
def topology(tmp_path):
    """Every mailgate service of the compose file (each replica) on one fresh PostgreSQL."""
    if not smtp_sink.available():
        pytest.skip(f"smtp-sink not found at {smtp_sink.SMTP_SINK} (apt-get install postfix)")
    doc = compose()
    relay_port = smtp_sink.free_port()
    sink = smtp_sink.SmtpSink(relay_port).start()
    processes: list[ServeProcess] = []
    with fresh_database("postgresql", tmp_path) as url:
        variables = {
            "POSTGRES_PASSWORD": "unused-here",
            "MAILGATE_SECRET_KEY": "compose-topology-" + uuid.uuid4().hex,
            "MAILGATE_METRICS_TOKEN": "prom-" + uuid.uuid4().hex,
        }
        # What differs from the containers: loopback ports, the test database, the sink.
        local = {
            "MAILGATE_DATABASE_URL": url,
            "MAILGATE_RELAY_URL": f"smtp://127.0.0.1:{relay_port}",
            "MAILGATE_RELAY_POLL_INTERVAL": "0.2",
        }

        def env_of(svc: dict[str, Any], data: Path) -> dict[str, str]:
            env = {k: interpolate(str(v), variables) for k, v in svc["environment"].items()}
            for key in ("MAILGATE_SMTP_LISTEN", "MAILGATE_HTTP_LISTEN", "MAILGATE_OPS_LISTEN"):
                if key in env:
                    env[key] = f"127.0.0.1:{smtp_sink.free_port()}"
            data.mkdir()
            return {**env, **local, "MAILGATE_DATA_DIR": str(data)}

        migrate = doc["services"]["migrate"]
        migrate_env = env_of(migrate, tmp_path / "migrate")
        run_cli(migrate_env, *migrate["command"][1:])
        try:
            for name, svc in mailgate_services(doc).items():
                for n in range(svc.get("deploy", {}).get("replicas", 1)):
                    data = tmp_path / f"{name}-{n}"
                    env = env_of(svc, data)
                    processes.append(
                        ServeProcess(
                            url,
                            data,
                            argv=[*LAUNCH, *svc["command"][1:]],
                            environ=env,
                            name=f"{name}-{n}",
                        )
                    )
            for process in processes:
                process.wait_serving(90, probe="/readyz")
            yield processes, migrate_env, sink, variables
        finally:
            stop_all(processes)
            sink.stop()


def test_the_compose_topology_as_processes_files_mail_in_and_delivers_a_send_out(topology):
    processes, cli_env, sink, variables = topology
    by_role = {role: p for p in processes for role in p.roles}
    assert [p.name for p in processes if "worker" in p.roles] == ["worker-0", "worker-1"]
    tag = uuid.uuid4().hex[:6]
    user = set_up_org(cli_env, tag)
    http = by_role["http"]
    api = httpx.Client(
        base_url=http.ops_url, headers={"Authorization": f"Bearer {user['api_token']}"}, timeout=30
    )
    lead_email = f"lead-{tag}@client.example"
    r = api.post("/api/v1/leads", json={"last_name": "山田", "email": lead_email})
    assert r.status_code == 201, r.text
    lead = r.json()["id"]

    # Mail in: over SMTP to the smtp process, filed by a worker process.
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"rep@{tag}.jp", lead_email, "ご提案の件"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{tag}.jp>"
    msg.set_content("お世話になっております。")
    smtp = by_role["smtp"]
    with smtplib.SMTP("127.0.0.1", smtp.smtp_port, timeout=30) as s:
        s.sendmail(f"rep@{tag}.jp", [user["dropbox_address"]], bytes(msg))
    filed = wait_until(lambda: api.get(f"/api/v1/leads/{lead}/emails").json()["items"], timeout=30)
    assert [(m["subject"], m["source"]) for m in filed] == [("ご提案の件", "dropbox")]

    # A send out: through the http process's API, delivered to smtp-sink by a worker.
    r = api.post(
        "/api/v1/emails",
        json={"to": [{"module": "leads", "id": lead}], "subject": "お見積り", "text": "本文"},
    )
    assert r.status_code == 202, r.text
    send_id = r.json()["sends"][0]["id"]
    wait_until(lambda: api.get(f"/api/v1/sends/{send_id}").json()["state"] == "sent", timeout=30)
    dumped = wait_until(lambda: list(sink.dump_dir.iterdir()), timeout=10)
    assert any(lead_email.encode() in path.read_bytes() for path in dumped)

    # Metrics: each process its own counters; only the http process the database gauges.
    token = {"Authorization": f"Bearer {variables['MAILGATE_METRICS_TOKEN']}"}

    def metrics(process: ServeProcess) -> str:
        r = httpx.get(f"{process.ops_url}/metrics", headers=token, timeout=10)
        assert r.status_code == 200, r.text
        return r.text

    assert value(metrics(smtp), "mailgate_smtp_messages_total", reply="250") == 1
    workers = [metrics(p) for p in processes if "worker" in p.roles]
    assert sum(value(t, "mailgate_filed_messages_total", outcome="filed") for t in workers) >= 1
    assert sum(value(t, "mailgate_relay_attempts_total", state="sent") for t in workers) == 1
    assert all(series(t, "mailgate_queue_depth") == [] for t in workers)
    front = metrics(http)
    assert value(front, "mailgate_queue_depth", runner="ingest") == 0
    assert {s["consumer"] for s in series(front, "mailgate_consumer_lag_events")} >= {
        "suppression",
        "webhooks",
    }
    assert httpx.get(f"{http.ops_url}/metrics", timeout=10).status_code == 401  # token set
    for process in processes:
        body = httpx.get(f"{process.ops_url}/readyz", timeout=10).json()
        assert body["status"] == "ready" and body["database"] == "up", (process.name, body)
