"""One bad message never takes a polled batch with it, and status tells the truth about it.

A real Dovecot mailbox mixes good mail, real-world broken mail (``Message-Id:
<>``, undecodable header bytes, Big5 names without encoded words, the malformed
MIME corpus) and mail that breaks a filing step.  Every good and every broken
but readable message is filed; the ones a step cannot handle are parked, and
``GET /api/v1/mailboxes/{id}`` and ``mailgate imap status`` say how many, why,
and how to replay them; a replay that fails again is one clear line.
"""

from __future__ import annotations

import pytest

from gateway.ingest.context import Batch, Flow
from gateway.ingest.pipeline import IN_TRANSACTION, Step
from gateway.ingest.runner import ReplayError
from tests.support.dovecot import start_or_skip
from tests.support.server import MailgateServer, wait_until
from tests.test_cli import Mailgate
from tests.test_mailboxes_imap import Account, mail

FAULT = "[fault]"


@pytest.fixture(scope="module")
def dovecot():
    server = start_or_skip()
    server.add_users({f"iso{i}": "pw" for i in range(4)})
    server.unused = [f"iso{i}" for i in range(4)]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gate(database_url, tmp_path_factory):
    server = MailgateServer(database_url, tmp_path_factory.mktemp("data")).start(
        {"smtp", "http", "worker", "imap"}
    )
    yield server
    server.stop()


def breaks_on_fault(conn, batch: Batch) -> Flow:
    """A step with a bug on odd input: it raises for the marked messages only."""
    for d in batch.live():
        if d.parsed.subject.startswith(FAULT):
            raise ValueError("cannot handle this one")
    return batch.flow()


FAULTY = (*IN_TRANSACTION[:4], Step("match", breaks_on_fault), *IN_TRANSACTION[4:])


def broken_mail(lead: str, rep: str, corpora) -> list[bytes]:
    """Real-world breakage, each from the lead to the rep so that it is ours to file."""
    head = f"From: {lead}\r\nTo: {rep}\r\n".encode()
    out = [
        head + b"Message-Id: <>\r\nSubject: empty id\r\n\r\nbody\r\n",
        head + b"Subject: \xa35 off, P\xe1draig\r\nMessage-Id: <latin1@x>\r\n\r\nbody\r\n",
        (
            b"From: "
            + "林大明".encode("big5")
            + f" <{lead}>\r\n".encode()
            + b"To: "
            + "王小美".encode("big5")
            + f" <{rep}>, ".encode()
            + b"\xa4\xa4 <\xb7|@example.tw>\r\nCc: caf\xe9@example.com\r\n"
            + b"Subject: "
            + "會議記錄".encode("big5")
            + b"\r\nMessage-Id: <big5@x>\r\n\r\nx\r\n"
        ),
        head + b"Subject: =?x-klingon?B?5pel5pys?=\r\nMessage-Id: <klingon@x>\r\n\r\nx\r\n",
    ]
    for i, path in enumerate(sorted((corpora / "malformed").rglob("*.eml"))):
        out.append(head + f"Message-Id: <corpus-{i}@x>\r\n".encode() + path.read_bytes())
    return out


def test_broken_mail_is_filed_or_parked_alone_and_status_says_how_to_replay(
    gate, dovecot, corpora, database_url, tmp_path
):
    ingest = gate.running.services.runner("ingest")
    ingest.steps, ingest.max_attempts = FAULTY, 1  # the first failure parks
    try:
        acct = Account(gate, dovecot)
        good = acct.incoming(5)
        broken = broken_mail(acct.lead_email, acct.address, corpora)
        faults = [
            mail(100 + i, acct.lead_email, acct.address, subject=f"{FAULT} {i}") for i in range(3)
        ]
        raws = good[:2] + faults[:1] + broken + faults[1:] + good[2:]
        dovecot.seed(acct.login, "INBOX", raws)
        acct.connect_mailbox()

        def caught_up():
            s = acct.status()
            return s["folders"].get("INBOX", {}).get("last_uid") == len(raws)

        wait_until(caught_up, timeout=60)
        gate.settle()
        assert acct.filed() == len(good) + len(broken)

        status = acct.status()
        assert status["state"] == "ok" and status["messages"] == len(good) + len(broken)
        parked = status["parked"]
        assert parked["count"] == len(faults) and parked["retrying"] == 0
        [reason] = parked["reasons"]
        assert reason["stage"] == "match" and "cannot handle this one" in reason["error"]
        assert len(reason["ids"]) == len(faults)
        assert "mailgate inbound replay" in parked["replay"]

        cli = Mailgate(database_url, tmp_path)
        shown = cli("imap", "status", acct.address)
        assert shown.json()[0]["parked"]["count"] == len(faults)
        assert "3 message(s) not filed (match)" in shown.stderr
        assert "mailgate inbound replay" in shown.stderr

        # Replaying while the bug is still there: one clear line, still parked.
        with pytest.raises(ReplayError) as exc:
            gate.call(ingest.replay(reason["ids"][0]))
        assert "failed again at match" in str(exc.value) and "\n" not in str(exc.value)
        assert acct.status()["parked"]["count"] == len(faults)
    finally:
        ingest.steps, ingest.max_attempts = IN_TRANSACTION, 5

    # The bug fixed: the operator replays them from the command line and they are filed.
    for inbound_id in reason["ids"]:
        assert cli("inbound", "replay", str(inbound_id)).json()["result"] == "filed"
    assert acct.filed() == len(raws)
    assert acct.status()["parked"] == {"count": 0, "retrying": 0, "reasons": [], "replay": None}
    assert "not filed" not in cli("imap", "status", acct.address).stderr
