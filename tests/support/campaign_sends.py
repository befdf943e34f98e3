"""A campaign "sent" exactly as the campaign runner leaves it, and real hits on its mail.

The campaign runner (another branch) composes each ``campaign_recipients`` row
into a ``sends`` row carrying ``campaign_id``, sets the recipient's
``send_id`` and status ``queued``, and its ``not_registered_reason`` to
``not_requested`` (the campaign's ``register`` names no target) or
``no_activity``.  :func:`send_campaign` writes the same rows (with
:func:`tests.support.sends.make_send`, which stores tracked HTML with real
``/t/…`` links) plus the relay's ``email.sent`` for each; everything after
that is driven through the running server: :func:`open_mail`,
:func:`click`, :func:`unsubscribe` over HTTP, :func:`bounce` and
:func:`complain` over SMTP to the send's VERP address.
"""

from __future__ import annotations

import re
import smtplib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select, update

from gateway.addresses import normalise
from gateway.bounces import verp_address
from storage import events, payloads
from storage.events import EventType
from storage.schema import consumer_offsets, inbound
from storage.schema_campaigns import campaign_recipients, campaigns
from storage.schema_sending import sends
from tests.support import smtp_sink
from tests.support.campaigns import add_member, make_list
from tests.support.sends import events_of, flush, make_send, rows
from tests.support.server import MAIL_DOMAIN, MailgateServer, wait_until

BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
SCANNER_UA = "python-requests/2.32.3"
APPLE_MPP_UA = "Mozilla/5.0"


def person(email: str, first: str = "太郎", last: str = "山田", company: str = "", **kw: Any):
    """One list member as a campaign reaches it (``module``/``record_id`` optional)."""
    return {"email": email, "first_name": first, "last_name": last, "company": company, **kw}


def send_campaign(
    server: MailgateServer,
    org: dict[str, Any],
    user: dict[str, Any],
    people: list[dict[str, Any]],
    *,
    register: dict[str, str | None] | None = None,
    list_registers: bool = True,
    list_id: int | None = None,
    name: str | None = None,
    sent_ago: timedelta = timedelta(hours=1),
    relay: bool = False,
    html: str | None = None,
    public_url: str | None = None,
) -> dict[str, Any]:
    """A list of ``people``, a campaign sent to it, one send per person, ``email.sent`` each.

    ``html`` (with ``{i}``, the person's position, if wanted) is each message's body, its
    links tracked under ``public_url``.  With ``relay``, the sends are left queued (composed, due now) for the server's relay
    to deliver, which then writes ``email.sent`` (or ``email.failed``) itself.
    Returns ``{"id", "list_id", "sends": {email: send row with "html"}}``.
    """
    name = name or f"キャンペーン {uuid.uuid4().hex[:6]}"
    if list_id is None:
        list_id = make_list(server, org, f"list {uuid.uuid4().hex[:8]}", register=list_registers)
    sent_at = datetime.now(UTC) - sent_ago
    wants = register is not None and any(v for v in register.values())
    reason = "no_activity" if wants else "not_requested"

    def make_campaign(conn) -> int:
        return conn.execute(
            insert(campaigns)
            .values(
                org_id=org["id"],
                user_id=user["id"],
                name=name,
                list_ids=[list_id],
                subject="ご案内",
                html="<p>x</p>",
                from_email=user["email"],
                register=register,
                status="sent",
                recipients=len(people),
                started_at=sent_at,
                sent_at=sent_at,
                created_at=sent_at,
                updated_at=sent_at,
            )
            .returning(campaigns.c.id)
        ).scalar_one()

    campaign_id = server.call(server.db.run_write(make_campaign))
    sends: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(people):
        record = {k: p[k] for k in ("module", "record_id") if k in p}
        body = {"html": html.replace("{i}", str(i))} if html else {}
        names = {k: p[k] for k in ("first_name", "last_name", "company")}
        member_id = add_member(server, org, list_id, p["email"], **names, **record)
        queued = {}
        if relay:
            queued = {
                "state": "queued",
                "status": "queued",
                "next_attempt_at": sent_at,
                "raw": f"To: {p['email']}\r\nSubject: hello\r\n\r\nhello\r\n".encode(),
            }
        send = make_send(
            server,
            org,
            user,
            to=p["email"],
            sent_at=sent_at,
            kind="mass",
            campaign_id=campaign_id,
            public_url=public_url,
            **body,
            **record,
            **queued,
        )

        def recipient(conn, send=send, member_id=member_id, p=p, record=record) -> None:
            conn.execute(
                insert(campaign_recipients).values(
                    org_id=org["id"],
                    campaign_id=campaign_id,
                    member_id=member_id,
                    list_id=list_id,
                    email=p["email"],
                    email_norm=normalise(p["email"]) or p["email"].lower(),
                    first_name=p["first_name"],
                    last_name=p["last_name"],
                    company=p["company"],
                    due_at=sent_at,
                    send_id=send["id"],
                    status="queued",
                    not_registered_reason=reason,
                    **record,
                )
            )
            if not relay:
                sent = payloads.send_event(
                    EventType.EMAIL_SENT, send, at=sent_at, reply="250 2.0.0 Ok: queued"
                )
                events.append_sync(conn, [sent])

        server.call(server.db.run_write(recipient))
        sends[p["email"]] = send
    server.drain_consumers()
    return {"id": campaign_id, "list_id": list_id, "name": name, "sends": sends}


# -- real hits ---------------------------------------------------------------------------


def wait_delivered(server: MailgateServer, campaign_id: int, timeout: float = 60) -> None:
    """Wait until the running relay loop has settled every send of the campaign (sent or
    failed), then let the consumers apply what it wrote.

    No ``drain("relay")`` beside the loop: two rounds of one relay worker at once were
    seen to interleave on a pooled connection (a send failed with ``503 need RCPT``).
    """
    pending = select(sends.c.id).where(
        sends.c.campaign_id == campaign_id, sends.c.state.not_in(("sent", "failed"))
    )
    server.running.services.wake("relay")
    wait_until(lambda: not rows(server, pending), timeout=timeout)
    server.drain_consumers()


def _client(server: MailgateServer, ua: str) -> httpx.Client:
    return httpx.Client(base_url=server.http_url, headers={"User-Agent": ua}, timeout=30)


def settle(server: MailgateServer) -> None:
    """Judge the hits the endpoints took, then let every consumer catch up."""
    flush(server)
    server.drain_consumers()


def _count(server: MailgateServer, send: dict[str, Any], type_: str) -> int:
    return sum(e["data"]["send_id"] == send["id"] for e in events_of(server, send["org_id"], type_))


def _hit(server: MailgateServer, send: dict[str, Any], type_: str, request) -> None:
    """Make one tracked hit, and return once its event is written and applied.

    ``flush`` judges what the endpoints took, but the running ``verdicts`` loop may hold
    the hit in a round of its own: wait for the event itself, then drain the consumers.
    """
    before = _count(server, send, type_)
    request()
    flush(server)
    wait_until(lambda: _count(server, send, type_) > before, timeout=10)
    server.drain_consumers()


def open_mail(server: MailgateServer, send: dict[str, Any], *, ua: str = BROWSER_UA) -> None:
    """Fetch the tracking pixel of the send's HTML, as a mail client (or ``ua``) does."""
    path = re.search(r"/t/o/[A-Za-z0-9_-]+", send["html"]).group(0)

    def request() -> None:
        with _client(server, ua) as http:
            assert http.get(path).status_code == 200

    _hit(server, send, "email.opened", request)


def click(server: MailgateServer, send: dict[str, Any], index: int = 0, *, ua: str = BROWSER_UA):
    """Follow the send's ``index``-th tracked link (never the hidden honeypot)."""
    assert index != send["honeypot"]
    token = server.running.services.tracking.signer.click_token(send["id"], index)

    def request() -> None:
        with _client(server, ua) as http:
            assert http.get(f"/t/c/{token}", follow_redirects=False).status_code == 302

    _hit(server, send, "email.clicked", request)


def unsubscribe(server: MailgateServer, send: dict[str, Any]) -> None:
    """The RFC 8058 one-click POST to the send's unsubscribe link."""
    signer = server.running.services.tracking.signer
    with _client(server, BROWSER_UA) as http:
        r = http.post(
            f"/u/{signer.unsubscribe_token(send['id'])}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200
    settle(server)


def _deliver(server: MailgateServer, send: dict[str, Any], raw: str) -> None:
    rcpt = verp_address(send["verp_token"], MAIL_DOMAIN)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=60) as s:
        s.sendmail("", [rcpt], raw.replace("\n", "\r\n").encode())
    server.drain("bounces")
    wait_until(lambda: not rows(server, select(inbound.c.id).where(inbound.c.state == "pending")))
    server.drain_consumers()


def bounce(server: MailgateServer, send: dict[str, Any], *, hard: bool = True) -> None:
    """A delivery status notification for the send, to its VERP address."""
    to = send["to_email"]
    status, diag = ("5.1.1", "550 5.1.1 User unknown") if hard else ("4.2.2", "452 Mailbox full")
    _deliver(
        server,
        send,
        "From: MAILER-DAEMON@mx.example\nTo: bounces@mailgate.test\nSubject: Undelivered\n"
        "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; "
        "boundary=B\n\n--B\nContent-Type: text/plain\n\nDelivery failed.\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example\n\n"
        f"Final-Recipient: rfc822; {to}\nAction: {'failed' if hard else 'delayed'}\n"
        f"Status: {status}\nDiagnostic-Code: smtp; {diag}\n"
        f"--B\nContent-Type: text/rfc822-headers\n\nMessage-ID: {send['message_id']}\n"
        "Subject: hi\n--B--\n",
    )


def complain(server: MailgateServer, send: dict[str, Any]) -> None:
    """An ARF feedback report (abuse) for the send, to its VERP address."""
    _deliver(
        server,
        send,
        "From: fbl@isp.example\nSubject: complaint\nMIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=feedback-report; boundary=B\n\n"
        "--B\nContent-Type: text/plain\n\nThis is an abuse report.\n"
        "--B\nContent-Type: message/feedback-report\n\n"
        f"Feedback-Type: abuse\nVersion: 1\nOriginal-Rcpt-To: <{send['to_email']}>\n\n"
        f"--B\nContent-Type: text/rfc822-headers\n\nMessage-ID: {send['message_id']}\n"
        "Subject: hi\n--B--\n",
    )


# -- reading back ----------------------------------------------------------------------------


def recipients(server: MailgateServer, campaign_id: int) -> dict[str, dict[str, Any]]:
    """The campaign's recipient rows by address (what ``/campaigns/{id}/members`` shows)."""
    q = select(campaign_recipients).where(campaign_recipients.c.campaign_id == campaign_id)
    return {r["email"]: r for r in rows(server, q)}


def replay(server: MailgateServer, consumer: str = "campaigns_to_crm") -> int:
    """Move the consumer back to the start of the log and let it read everything again."""

    def reset(conn) -> None:
        conn.execute(
            update(consumer_offsets)
            .where(consumer_offsets.c.consumer == consumer)
            .values(position=0)
        )

    server.call(server.db.run_write(reset))
    return server.drain_consumers()


# -- a server whose campaigns go through the relay and whose links point at itself --------


@dataclass
class LaterClock:
    """The system clock moved on by ``ahead`` (0 until a test moves it): readers come back
    to their mail later, so a click is not judged ``too_fast`` seconds after delivery."""

    ahead: timedelta = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.ahead


def relayed_server(database_url: str, data_dir: Path, relay_port: int) -> MailgateServer:
    """A started server relaying to ``127.0.0.1:relay_port``, its HTTP port chosen up front so
    that the tracked links and unsubscribe URLs it composes point at itself."""
    http_port = smtp_sink.free_port()
    srv = MailgateServer(
        database_url,
        data_dir,
        relay_url=f"smtp://127.0.0.1:{relay_port}",
        relay_retry_base=0.2,
        relay_retry_cap=0.5,
        relay_poll_interval=0.1,
        relay_timeout=5,
    )
    srv.settings.http_listen = f"127.0.0.1:{http_port}"
    srv.settings.public_url = f"http://127.0.0.1:{http_port}"
    return srv.start()


def send_through_api(server: MailgateServer, api: httpx.Client, campaign_id: int) -> None:
    """``POST …/send``, then wait for the runner to compose every recipient and the relay
    loop to settle every send (the caller runs the SMTP server)."""
    sent = api.post(f"/api/v1/campaigns/{campaign_id}/send")
    assert sent.status_code == 202, sent.text
    server.running.services.wake("campaigns")
    wait_until(
        lambda: api.get(f"/api/v1/campaigns/{campaign_id}").json()["status"] == "sent",
        timeout=30,
    )
    wait_delivered(server, campaign_id)


def composed_sends(server: MailgateServer, campaign_id: int) -> dict[str, dict[str, Any]]:
    """The runner's sends of a campaign by address, each with what :func:`open_mail` and
    :func:`click` need: ``html`` (its open pixel) and ``honeypot`` (the hidden link's index)."""
    signer = server.running.services.tracking.signer
    trap = server.settings.public_url.rstrip("/") + "/"
    out = {}
    for row in rows(server, select(sends).where(sends.c.campaign_id == campaign_id)):
        links = row["links"] or []
        out[row["to_email"]] = {
            **row,
            "html": f"/t/o/{signer.open_token(row['id'])}",
            "honeypot": len(links) - 1 if links and links[-1] == trap else None,
        }
    return out
