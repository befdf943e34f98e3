"""Parked events over the API and on the dashboard's /syncs page (issue #13: "parked events
with their error and a replay button"), through a running server on both engines.

The running ``suppression`` consumer parks a hard bounce whose suppression a database
trigger refuses (a DBA's rule the consumer does not know); the trigger is then dropped
(the cause fixed) and the event is replayed from the API or the page.  Org admins only,
their org's events only; the page's buttons are POST forms with the CSRF token.
"""

from __future__ import annotations

import uuid
from contextlib import closing
from datetime import UTC
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, select

from storage import events
from storage.schema import parked_events
from tests.support import metrics
from tests.support.browser import chromium_browser
from tests.support.server import MailgateServer, wait_until
from tests.support.web import csrf_of, login, login_in_browser, new_member
from tests.test_parked_events import bounce, freeze, suppressed, thaw

ARTIFACTS = Path(__file__).parent / "artifacts"


PARKED_GAUGE = "mailgate_parked_events"


@pytest.fixture(scope="module")
def gate(mailgate):
    return mailgate


def park_one(server: MailgateServer, org: dict[str, Any]) -> dict[str, Any]:
    """A bounce of a fresh address of ``org`` parked by the running suppression consumer."""
    email = f"frozen-{uuid.uuid4().hex[:8]}@kokyaku.example.jp"
    server.call(server.db.run_write(freeze, email))
    try:

        def append(conn: Connection) -> int:
            events.append_sync(conn, [bounce(org["id"], email)])
            return events.last_id(conn)

        event_id = server.call(server.db.run_write(append))
        server.running.services.wake("suppression")

        def parked() -> dict[str, Any] | None:
            def read(conn: Connection) -> dict[str, Any] | None:
                q = select(parked_events).where(
                    parked_events.c.consumer == "suppression",
                    parked_events.c.event_id == event_id,
                )
                row = conn.execute(q).mappings().first()
                return dict(row) if row else None

            return server.call(server.db.run_read(read))

        # Three attempts with the runner's back-off between them (0.5 s, then 1 s).
        row = wait_until(parked, timeout=30, interval=0.1)
    finally:
        server.call(server.db.run_write(thaw))
    return {**row, "email": email}


def is_suppressed(server: MailgateServer, org: dict[str, Any], email: str) -> bool:
    return email in server.call(suppressed(server.db, org["id"]))


def test_an_admin_lists_replays_and_skips_the_orgs_parked_events_over_the_api(gate):
    org, admin_user = new_member(gate)
    _, rep = new_member(gate, admin_user=False, org=org)
    _, stranger = new_member(gate)
    waiting = metrics.value(metrics.scrape(gate.http_url), PARKED_GAUGE, consumer="suppression")
    first, second = park_one(gate, org), park_one(gate, org)
    assert not is_suppressed(gate, org, first["email"])
    # What an operator alerts on: two more events wait for a person.
    after = metrics.value(metrics.scrape(gate.http_url), PARKED_GAUGE, consumer="suppression")
    assert after == waiting + 2

    with gate.api(admin_user) as api, gate.api(rep) as rep_api, gate.api(stranger) as other:
        listed = api.get("/api/v1/syncs/parked").json()["items"]
        mine = {p["id"]: p for p in listed}
        assert set(mine) == {first["id"], second["id"]}  # only this org's
        item = mine[first["id"]]
        assert item["consumer"] == "suppression"
        assert item["event_type"] == "email.bounced"
        assert item["event_id"] == first["event_id"]
        assert "frozen" in item["error"]
        assert item["attempts"] == 3 and item["resolution"] is None

        assert rep_api.get("/api/v1/syncs/parked").status_code == 403
        assert rep_api.post(f"/api/v1/syncs/parked/{first['id']}/replay").status_code == 403
        assert other.get("/api/v1/syncs/parked").json()["items"] == []
        for action in ("replay", "skip"):
            r = other.post(f"/api/v1/syncs/parked/{first['id']}/{action}")
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "not_found"
        assert api.post("/api/v1/syncs/parked/²/replay").status_code == 404

        replayed = api.post(f"/api/v1/syncs/parked/{first['id']}/replay")
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["resolution"] == "replayed"
        assert is_suppressed(gate, org, first["email"])
        again = api.post(f"/api/v1/syncs/parked/{first['id']}/replay")
        assert (again.status_code, again.json()["error"]["code"]) == (409, "parked_resolved")

        skipped = api.post(f"/api/v1/syncs/parked/{second['id']}/skip")
        assert skipped.json()["resolution"] == "skipped"
        assert not is_suppressed(gate, org, second["email"])

        assert api.get("/api/v1/syncs/parked").json()["items"] == []
        everything = api.get("/api/v1/syncs/parked", params={"all": "true"}).json()["items"]
        assert {p["id"]: p["resolution"] for p in everything} == {
            first["id"]: "replayed",
            second["id"]: "skipped",
        }
    scraped = metrics.scrape(gate.http_url)
    assert metrics.value(scraped, PARKED_GAUGE, consumer="suppression") == waiting


def test_the_syncs_page_shows_parked_events_and_replays_one_with_the_csrf_token(gate):
    org, admin_user = new_member(gate)
    _, rep = new_member(gate, admin_user=False, org=org)
    _, stranger = new_member(gate)
    row = park_one(gate, org)
    pid = row["id"]

    with closing(login(gate, admin_user, **{"accept-language": "en"})) as web:
        page = web.get("/syncs")
        assert page.status_code == 200
        html = page.text
        assert f'data-parked="{pid}"' in html
        assert f"#{row['event_id']}" in html and "email.bounced" in html
        assert "frozen" in html  # the error
        parked_at = row["parked_at"].replace(tzinfo=row["parked_at"].tzinfo or UTC)
        # In the org's time zone (Asia/Tokyo), as the page shows every time.
        assert f"{parked_at.astimezone(ZoneInfo('Asia/Tokyo')):%Y-%m-%d %H:%M} JST" in html
        assert f'action="/syncs/parked/{pid}/replay"' in html
        csrf = csrf_of(html)

        refused = web.post(f"/syncs/parked/{pid}/replay", data={})
        assert refused.status_code == 403  # no CSRF token
        assert not is_suppressed(gate, org, row["email"])

        done = web.post(f"/syncs/parked/{pid}/replay", data={"csrf": csrf})
        assert done.status_code == 303
        assert done.headers["location"] == f"/syncs?done=replayed#parked-{pid}"
        assert is_suppressed(gate, org, row["email"])
        after = web.get(done.headers["location"]).text
        assert f'data-parked="{pid}"' not in after
        assert "The event was applied" in after

    skip_me = park_one(gate, org)
    with closing(login(gate, rep, **{"accept-language": "ja"})) as web:
        html = web.get("/syncs").text
        assert f'data-parked="{skip_me["id"]}"' in html  # the org's users see it…
        assert f'action="/syncs/parked/{skip_me["id"]}/replay"' not in html  # …admins act
        assert "再実行とスキップは管理者のみ行えます。" in html
        r = web.post(f"/syncs/parked/{skip_me['id']}/replay", data={"csrf": csrf_of(html)})
        assert r.status_code == 403

    with closing(login(gate, stranger)) as web:
        html = web.get("/syncs").text
        assert f'data-parked="{skip_me["id"]}"' not in html
        token = csrf_of(html)
        for action in ("replay", "skip"):
            r = web.post(
                f"/syncs/parked/{skip_me['id']}/{action}", data={"csrf": token, "confirm": "yes"}
            )
            assert r.status_code == 404

    with closing(login(gate, admin_user)) as web:
        csrf = csrf_of(web.get("/syncs").text)
        unconfirmed = web.post(f"/syncs/parked/{skip_me['id']}/skip", data={"csrf": csrf})
        assert unconfirmed.status_code == 422
        confirmed = web.post(
            f"/syncs/parked/{skip_me['id']}/skip", data={"csrf": csrf, "confirm": "yes"}
        )
        assert confirmed.headers["location"] == f"/syncs?done=skipped#parked-{skip_me['id']}"
        assert f'data-parked="{skip_me["id"]}"' not in web.get("/syncs").text
    assert not is_suppressed(gate, org, skip_me["email"])


def test_an_admin_replays_a_parked_event_with_the_pages_button_in_chromium(gate):
    org, admin_user = new_member(gate)
    row = park_one(gate, org)
    with chromium_browser() as browser:
        page = browser.new_page(locale="en-US")
        login_in_browser(page, gate, admin_user)
        page.goto(gate.http_url + "/syncs?lang=en")
        parked = page.locator(f"tr[data-parked='{row['id']}']")
        assert "email.bounced" in parked.inner_text()
        assert "frozen" in parked.locator("td.error-text").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "syncs_parked.png"), full_page=True)

        parked.locator("button[value=replay]").click()
        page.wait_for_url(f"{gate.http_url}/syncs?done=replayed#parked-{row['id']}")

        assert page.locator("p.notice").inner_text() == (
            "The event was applied; it is no longer parked."
        )
        assert page.locator(f"tr[data-parked='{row['id']}']").count() == 0
    assert is_suppressed(gate, org, row["email"])
