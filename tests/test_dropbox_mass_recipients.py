"""A dropbox message naming 100,000 recipients is filed without stalling anyone else.

It may create (or be linked to) at most ``MAILGATE_MAX_RECORDS_PER_MESSAGE``
records; every other address stays on the message, unlinked.  Mail of another
org sent right after it is filed promptly.
"""

from __future__ import annotations

import smtplib
import time
import uuid

import pytest
from sqlalchemy import func, select

from storage.schema import leads, message_links, messages
from tests.support.server import MailgateServer, wait_until

CAP = 150
RECIPIENTS = 100_000


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory):
    server = MailgateServer(
        database_url,
        tmp_path_factory.mktemp("data"),
        max_message_size=8 * 1024 * 1024,
        max_records_per_message=CAP,
    ).start()
    yield server
    server.stop()


def deliver(gate: MailgateServer, sender: str, dropbox: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", gate.smtp_port, timeout=60) as s:
        assert s.sendmail(sender, [dropbox], raw) == {}


def count(gate: MailgateServer, query) -> int:
    async def go() -> int:
        async with gate.db.connect() as conn:
            return (await conn.execute(query)).scalar_one()

    return gate.call(go())


def test_a_100000_recipient_message_creates_at_most_the_cap_and_others_keep_flowing(gate):
    tag = uuid.uuid4().hex[:6]
    big_org = gate.org(f"Mass {tag}", domains=[f"mass-{tag}.example"])
    big_rep = gate.user(big_org, f"rep@mass-{tag}.example")
    other_org = gate.org(f"Other {tag}", domains=[f"other-{tag}.example"])
    other_rep = gate.user(other_org, f"rep@other-{tag}.example")
    api = gate.api(other_rep)
    r = api.post("/api/v1/leads", json={"last_name": "普通", "email": f"c-{tag}@client.example"})
    assert r.status_code == 201, r.text

    to = ",\r\n ".join(f"r{i}@list{i % 97}.example" for i in range(RECIPIENTS))
    huge = (
        f"From: rep@mass-{tag}.example\r\nTo: {to}\r\nSubject: mass mailing\r\n"
        f"Message-ID: <mass-{tag}@x>\r\n\r\nhello all\r\n"
    ).encode()
    normal = (
        f"From: rep@other-{tag}.example\r\nTo: c-{tag}@client.example\r\n"
        f"Subject: ordinary\r\nMessage-ID: <ordinary-{tag}@x>\r\n\r\nhello\r\n"
    ).encode()

    deliver(gate, f"rep@mass-{tag}.example", big_rep["dropbox_address"], huge)
    sent = time.monotonic()
    deliver(gate, f"rep@other-{tag}.example", other_rep["dropbox_address"], normal)
    of_org = select(func.count()).select_from(messages).where(messages.c.org_id == other_org["id"])
    wait_until(lambda: count(gate, of_org) == 1, timeout=30, interval=0.05)
    assert time.monotonic() - sent < 10, "the other org's mail waited behind the mass mailing"

    gate.settle(timeout=120)
    created = select(func.count()).select_from(leads).where(leads.c.org_id == big_org["id"])
    assert count(gate, created) == CAP

    async def filed() -> tuple[int, int]:
        async with gate.db.connect() as conn:
            row = (
                await conn.execute(
                    select(messages.c.id, messages.c.to_addrs).where(
                        messages.c.message_id == f"mass-{tag}@x"
                    )
                )
            ).one()
            links = select(func.count()).where(message_links.c.message_id == row.id)
            return len(row.to_addrs), (await conn.execute(links)).scalar_one()

    kept, linked = gate.call(filed())
    assert kept == RECIPIENTS  # every address stays on the message
    assert linked == CAP
