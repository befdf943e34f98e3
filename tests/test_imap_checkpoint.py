"""Pure decisions of the IMAP layer: what to fetch, and how answers are read."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from gateway.receive.imap.checkpoint import (
    Checkpoint,
    FolderState,
    PlanKind,
    batches,
    checkpoint_after,
    new_uids,
    plan_fetch,
    uid_set,
)
from gateway.receive.imap.client import (
    MailboxConfig,
    parse_folder_state,
    parse_search,
    quote_mailbox,
)
from gateway.receive.imap.fetch import imap_date, parse_fetch_response, parse_flag_updates
from gateway.receive.imap.folders import find_sent, parse_list_line
from gateway.receive.imap.poller import Backoff
from gateway.receive.imap.utf7 import decode_modified_utf7, encode_modified_utf7

# -- plan_fetch ------------------------------------------------------------------


def test_nothing_new_means_no_fetch_even_for_a_huge_mailbox():
    plan = plan_fetch(Checkpoint(7, 250_000), FolderState(7, uidnext=250_001, exists=250_000))
    assert plan.kind is PlanKind.NOTHING


def test_new_uids_are_fetched_from_after_the_checkpoint():
    plan = plan_fetch(Checkpoint(7, 100), FolderState(7, uidnext=105, exists=104))
    assert (plan.kind, plan.first_uid) == (PlanKind.INCREMENTAL, 101)


def test_changed_uidvalidity_starts_over():
    plan = plan_fetch(Checkpoint(7, 100), FolderState(8, uidnext=3, exists=2))
    assert (plan.kind, plan.first_uid, plan.starts_over) == (PlanKind.RESYNC, 1, True)


def test_first_connection_backfills_and_an_empty_folder_needs_nothing():
    assert plan_fetch(None, FolderState(1, 10, 9)).kind is PlanKind.BACKFILL
    assert plan_fetch(None, FolderState(1, 1, 0)).kind is PlanKind.NOTHING
    assert plan_fetch(Checkpoint(1, 5), FolderState(1, 9, 0)).kind is PlanKind.NOTHING


def test_a_server_without_uidnext_is_asked_incrementally():
    plan = plan_fetch(Checkpoint(1, 5), FolderState(1, None, 5))
    assert plan.kind is PlanKind.INCREMENTAL


def test_checkpoint_after_backfill_skips_mail_outside_the_window():
    state = FolderState(3, uidnext=5001, exists=5000)
    plan = plan_fetch(None, state)
    assert checkpoint_after(plan, state, None) == Checkpoint(3, 5000)


def test_checkpoint_never_moves_backwards():
    state = FolderState(3, uidnext=10, exists=9)
    plan = plan_fetch(Checkpoint(3, 20), state)
    assert checkpoint_after(plan, state, Checkpoint(3, 20)) == Checkpoint(3, 20)


def test_uid_search_star_quirk_is_filtered():
    # "UID 501:*" answers the highest message (UID 500) when nothing is newer.
    assert new_uids([500], 501) == []
    assert new_uids([503, 501, 501, 502], 501) == [501, 502, 503]


def test_uid_sets_are_compact_and_batches_bounded():
    assert uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    with pytest.raises(ValueError):
        uid_set([])
    assert [len(b) for b in batches(list(range(450)), 200)] == [200, 200, 50]


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(1, 8)
    assert [backoff.next() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    backoff.reset()
    assert backoff.next() == 1


# -- parsing what the server said ----------------------------------------------------


def test_examine_answer_gives_uidvalidity_uidnext_exists():
    lines = [
        b"FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        b"OK [PERMANENTFLAGS ()] Read-only mailbox.",
        b"5000 EXISTS",
        b"0 RECENT",
        b"OK [UIDVALIDITY 1795466736] UIDs valid",
        b"OK [UIDNEXT 5001] Predicted next UID",
        b"OK [HIGHESTMODSEQ 12] Highest",
        b"[READ-ONLY] Examine completed (0.001 + 0.000 secs).",
    ]
    assert parse_folder_state(lines) == FolderState(1795466736, 5001, 5000, 12)


def test_examine_answer_without_uidvalidity_is_a_protocol_error():
    from gateway.receive.imap.client import MailboxError

    with pytest.raises(MailboxError) as caught:
        parse_folder_state([b"3 EXISTS", b"Examine completed"])
    assert caught.value.kind == "protocol"


def test_search_answer_ignores_modseq_and_status_text():
    assert parse_search([b"1 2 30 (MODSEQ 17)", b"Search completed (0.001 + 0.000 secs)."]) == [
        1,
        2,
        30,
    ]
    assert parse_search([b"Search completed."]) == []


def test_fetch_answer_with_literals_is_read_byte_exact():
    body = b"Subject: (unbalanced (parens\r\n\r\n) FETCH ( {12}\r\n"
    lines = [
        b'7 FETCH (UID 9 FLAGS (\\Seen $Label1) INTERNALDATE " 3-Nov-2026 20:45:35 +0100" BODY[] {%d}'
        % len(body),
        bytearray(body),
        b")",
        b"8 FETCH (FLAGS (\\Seen) UID 10)",  # unsolicited flag update: no body
        b"9 FETCH (UID 11 BODY[] {2}",
        bytearray(b"ab"),
        b' FLAGS (\\Flagged) INTERNALDATE "01-Jan-2026 00:00:00 +0000")',
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    first, second = parse_fetch_response(lines, "INBOX")
    assert first.uid == 9 and first.raw == body and first.seen
    assert first.flags == {"\\Seen", "$Label1"}
    assert first.internal_date == datetime(
        2026, 11, 3, 20, 45, 35, tzinfo=timezone(timedelta(hours=1))
    )
    assert (second.uid, second.raw, second.flags) == (11, b"ab", {"\\Flagged"})
    assert parse_flag_updates(lines[3:4]) == [(10, frozenset({"\\Seen"}))]


def test_fetch_answer_with_garbage_yields_nothing_rather_than_crashing():
    assert (
        parse_fetch_response([b"BYE", bytearray(b"x"), b"7 FETCH (FLAGS ())", b""], "INBOX") == []
    )
    msg = parse_fetch_response([b'1 FETCH (UID 1 INTERNALDATE "bogus" BODY[] NIL)', b"done"], "X")[
        0
    ]
    assert (msg.raw, msg.internal_date) == (b"", None)


def test_sent_is_found_by_special_use_whatever_its_name():
    lines = [
        b'(\\HasNoChildren) "/" INBOX',
        b'(\\HasChildren \\Noselect) "/" "[Gmail]"',
        b'(\\HasNoChildren \\Sent) "/" "[Gmail]/Sent Mail"',
        b'LIST (\\HasNoChildren) "." "&ZeVnLIqe-"',
        b"List completed.",
    ]
    folders = [f for f in map(parse_list_line, lines) if f]
    assert [f.name for f in folders] == ["INBOX", "[Gmail]", "[Gmail]/Sent Mail", "日本語"]
    assert find_sent(folders) == "[Gmail]/Sent Mail"
    assert find_sent(folders, override="Gesendet") == "Gesendet"
    assert find_sent(folders[:2]) is None
    plain = [parse_list_line(b'() "." "INBOX.Sent Items"'), parse_list_line(b'() "." "Sent Items"')]
    assert find_sent(plain) == "Sent Items"  # no \\Sent flag anywhere: go by the usual name


def test_folder_names_round_trip_through_modified_utf7():
    for name in ["INBOX", "Envoyés", "送信済み", "A&B", "Sent Items"]:
        assert decode_modified_utf7(encode_modified_utf7(name)) == name
    assert encode_modified_utf7("送信済み") == "&kAFP4W4IMH8-"
    assert quote_mailbox("Sent Items") == '"Sent Items"'
    assert quote_mailbox('we"ird\\') == '"we\\"ird\\\\"'


def test_search_dates_do_not_depend_on_locale():
    assert imap_date(date(2026, 3, 5)) == "5-Mar-2026"


def test_config_hides_the_password_and_rejects_unknown_security():
    config = MailboxConfig("imap.example.com", 993, "ann", "hunter2")
    assert "hunter2" not in repr(config)
    with pytest.raises(ValueError):
        MailboxConfig("h", 1, "a", "b", security="ssl")  # type: ignore[arg-type]
