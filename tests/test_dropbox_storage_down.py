"""When the database is gone the receiver says "try again later" (451) and never 250."""

from __future__ import annotations

import smtplib

import pytest

from tests.support.databases import _pg_admin, fresh_database
from tests.support.server import MailgateServer


@pytest.fixture
def pg_server(tmp_path):
    with fresh_database("postgresql", tmp_path) as url:
        server = MailgateServer(url, tmp_path).start()
        try:
            yield server, url
        finally:
            server.stop()


def _drop(url: str) -> None:
    import os

    from sqlalchemy.engine import make_url

    name = make_url(url).database
    _pg_admin(os.environ["MAILGATE_TEST_DATABASE_URL"], f'DROP DATABASE "{name}" WITH (FORCE)')


def test_storage_lost_between_rcpt_and_data_answers_451_not_250(pg_server):
    server, url = pg_server
    org = server.org("Down Inc")
    user = server.user(org, "rep@down.example")
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.ehlo()
        s.mail(user["email"])
        assert s.rcpt(user["dropbox_address"])[0] == 250
        _drop(url)
        s.putcmd("data")
        assert s.getreply()[0] == 354
        s.send(b"From: rep@down.example\r\nTo: a@client.example\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
        code, text = s.getreply()
    assert (code, text[:5]) == (451, b"4.3.0")
    # A new session is refused temporarily too (at RCPT, or at DATA when RCPT was
    # answered from the short-lived dropbox cache), never accepted.
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        with pytest.raises((smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError)) as exc:
            s.sendmail(
                user["email"],
                [user["dropbox_address"]],
                b"From: rep@down.example\r\nSubject: y\r\n\r\nbody\r\n",
            )
    err = exc.value
    code, text = (
        next(iter(err.recipients.values()))
        if isinstance(err, smtplib.SMTPRecipientsRefused)
        else (err.smtp_code, err.smtp_error)
    )
    assert (code, text[:5]) == (451, b"4.3.0")
