"""The pure ingest steps and the pipeline's declaration, without sockets or a database."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.ingest.context import Batch, Delivery, Flow, Outcome
from gateway.ingest.parse import from_addresses, parse
from gateway.ingest.pipeline import IN_TRANSACTION, PIPELINE, PREPARE, prepare
from gateway.ingest.steps import authorise_sender, classify_direction, create_records

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
DOMAIN = "mailgate.test"
OWN = {"taro@acme.co.jp", "taro.private@gmail.example"}
USER = {"id": 7, "active": True, "dropbox_token": "abc123"}


def mail(frm: str = "taro@acme.co.jp", to: str = "hanako@client.example", extra: str = "") -> bytes:
    return (
        f"From: {frm}\r\nTo: {to}\r\n{extra}Subject: s\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n"
    ).encode()


def delivery(raw: bytes | None = None, **kw) -> Delivery:
    kw.setdefault("channel", "dropbox")
    kw.setdefault("mail_from", "taro@acme.co.jp")
    kw.setdefault("rcpt_to", [f"dropbox-abc123@{DOMAIN}"])
    d = Delivery(raw=raw or mail(), org_id=1, user_id=7, **kw)
    d.parsed = parse(d.raw)
    return d


def verdict(d: Delivery, user=USER):
    return authorise_sender.verdict(d, user, OWN, DOMAIN)


def test_the_pipeline_runs_the_steps_in_the_declared_order():
    assert [s.name for s in PIPELINE] == [
        "parse",
        "authorise",
        "dedupe",
        "classify",
        "match",
        "create",
        "file",
        "replies",
        "emit",
    ]
    assert [s.name for s in PREPARE] == ["parse"]
    assert PREPARE + IN_TRANSACTION == PIPELINE


def test_allowed_envelope_and_from_may_file():
    assert verdict(delivery()) is None
    assert verdict(delivery(mail(frm="Taro <Taro.Private@GMAIL.example>"))) is None


def test_a_from_address_not_allowed_is_refused_with_the_address_named():
    outcome, reason = verdict(delivery(mail(frm="attacker@evil.example")))
    assert outcome is Outcome.SENDER_REFUSED
    assert reason == "From attacker@evil.example is not an allowed sender"


def test_envelope_sender_not_allowed_is_refused():
    outcome, reason = verdict(delivery(mail_from="stranger@evil.example"))
    assert outcome is Outcome.SENDER_REFUSED and "stranger@evil.example" in reason


def test_mail_without_from_is_refused():
    raw = b"To: a@client.example\r\nSubject: x\r\n\r\nbody\r\n"
    assert verdict(delivery(raw))[0] is Outcome.SENDER_REFUSED


def test_regenerated_or_deactivated_dropbox_is_unknown():
    assert verdict(delivery(), {**USER, "dropbox_token": "new"}) == (
        Outcome.UNKNOWN_DROPBOX,
        "the dropbox address was regenerated",
    )
    assert verdict(delivery(), {**USER, "active": False})[0] is Outcome.UNKNOWN_DROPBOX
    assert verdict(delivery(), None)[0] is Outcome.UNKNOWN_DROPBOX


def test_replayed_mail_that_passed_before_and_polled_mail_are_not_rechecked():
    forged = mail(frm="attacker@evil.example")
    assert verdict(delivery(forged, accepted_earlier=True)) is None
    assert verdict(delivery(forged, channel="imap", mail_from="", rcpt_to=[])) is None


def test_dropbox_and_sent_mail_is_outgoing_to_its_recipients():
    d = delivery(mail(to="A <a@client.example>, b@client.example", extra="Cc: c@x.example\r\n"))
    classify_direction.classify(d, OWN)
    assert d.direction == "outgoing"
    assert d.counterparts == ["a@client.example", "b@client.example", "c@x.example"]
    sent = delivery(channel="imap", origin={"kind": "sent"})
    classify_direction.classify(sent, set())
    assert sent.direction == "outgoing"


def test_inbox_mail_from_someone_else_is_incoming_from_them():
    d = delivery(mail(frm="hanako@client.example", to="taro@acme.co.jp"), channel="imap")
    d.origin = {"kind": "inbox"}
    classify_direction.classify(d, OWN)
    assert (d.direction, d.counterparts) == ("incoming", ["hanako@client.example"])


def test_mail_with_an_excluded_domain_is_kept_but_not_shared():
    mixed = delivery(mail(to="a@client.example, b@private.example"))
    only = delivery(mail(to="b@private.example"))
    other = delivery(mail(to="a@client.example"))
    batch = Batch(
        [mixed, only, other], DOMAIN, NOW, own_addresses={7: OWN}, excluded={1: ["private.example"]}
    )
    classify_direction.run(None, batch)
    assert [d.outcome for d in (mixed, only, other)] == [None, None, None]
    assert [d.shared for d in (mixed, only, other)] == [False, False, True]
    assert mixed.counterparts == ["a@client.example", "b@private.example"]


def test_colleagues_role_mailboxes_and_our_domain_never_become_records():
    def ok(address: str) -> bool:
        return create_records.creatable(
            address,
            own=OWN,
            org_domains=["acme.co.jp"],
            mail_domain=DOMAIN,
            excluded=["private.example"],
        )

    assert ok("ken@prospect.example")
    for address in (
        "b@private.example",
        "taro@acme.co.jp",
        "boss@sub.acme.co.jp",
        "info@prospect.example",
        f"dropbox-x@{DOMAIN}",
    ):
        assert not ok(address), address


def test_names_split_into_family_and_given_name():
    assert create_records.split_name("高橋 健") == ("高橋", "健")
    assert create_records.split_name("Ken Takahashi") == ("Takahashi", "Ken")
    assert create_records.split_name("Takahashi, Ken") == ("Takahashi", "Ken")
    record = create_records.new_record("ken@prospect.example", "", 7)
    assert (record["last_name"], record["first_name"], record["owner_id"]) == ("ken", "", 7)


def test_flow_ends_once_nothing_is_left_to_do():
    dupe, refused = delivery(), delivery()
    batch = Batch([dupe, refused], DOMAIN, NOW)
    assert batch.flow() is Flow.CONTINUE
    dupe.decide(Outcome.DUPLICATE, "dedupe")
    refused.decide(Outcome.SENDER_REFUSED, "authorise", "x")
    assert batch.flow() is Flow.DONE
    polled = delivery(channel="imap", origin={"mailbox_id": 1, "kind": "inbox"})
    polled.decide(Outcome.DUPLICATE, "dedupe")
    assert Batch([polled], DOMAIN, NOW).flow() is Flow.CONTINUE  # its location is recorded


def test_parsing_never_raises_and_fills_every_delivery():
    items = [Delivery(raw=r, channel="dropbox", org_id=1, user_id=7) for r in (mail(), b"\x00\xff")]
    batch = Batch(items, DOMAIN, NOW)
    prepare(batch)
    assert all(d.parsed is not None and d.outcome is None for d in items)


def test_smtp_from_check_reads_the_header_block_only():
    raw = mail(frm='"山田" <Taro@ACME.co.jp>, other@x.example') + b"From: body@x.example\r\n"
    assert from_addresses(raw) == ["taro@acme.co.jp", "other@x.example"]
    assert from_addresses(b"no headers at all") == []
