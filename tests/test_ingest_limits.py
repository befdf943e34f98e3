"""The per-message record cap is wired into the pipeline, and parked mail is summarised (pure)."""

from __future__ import annotations

from gateway.ingest.pipeline import IN_TRANSACTION, with_record_cap
from gateway.receive.mailboxes.service import REPLAY_HINT, parked_summary


def test_the_cap_binds_match_and_create_and_leaves_every_other_step_alone():
    capped = with_record_cap(IN_TRANSACTION, 7)
    assert [s.name for s in capped] == [s.name for s in IN_TRANSACTION]
    for before, after in zip(IN_TRANSACTION, capped, strict=True):
        if before.name in ("match", "create"):
            assert after.run.keywords == {"max_records": 7} and after.run.func is before.run
        else:
            assert after is before


def test_parked_mail_is_counted_by_reason_with_how_to_replay_it():
    rows = [
        {"id": 1, "state": "failed", "failed_stage": "match", "last_error": "ValueError: x"},
        {"id": 2, "state": "pending", "failed_stage": "file", "last_error": "KeyError: y"},
        {"id": 3, "state": "failed", "failed_stage": "match", "last_error": "ValueError: x"},
    ]
    summary = parked_summary(rows)
    assert summary["count"] == 2 and summary["retrying"] == 1
    assert summary["reasons"][0] == {
        "state": "failed",
        "stage": "match",
        "error": "ValueError: x",
        "count": 2,
        "ids": [1, 3],
    }
    assert summary["reasons"][1]["state"] == "retrying"
    assert summary["replay"] == REPLAY_HINT


def test_nothing_parked_means_no_replay_advice():
    assert parked_summary([]) == {"count": 0, "retrying": 0, "reasons": [], "replay": None}
