"""The ingest pipeline, declared: named steps in the order they run.

``parse → authorise → dedupe → classify → match → create → file → replies → emit``

Every step is ``run(conn, batch) -> Flow`` over a :class:`~gateway.ingest.context.Batch`
(one module each under :mod:`gateway.ingest.steps`); a step decides an
:class:`~gateway.ingest.context.Outcome` for the messages it finishes and the
rest go on.  Steps work on the whole batch with bulk statements (a statement per
message would halve throughput); the runner keeps failures per message by
re-running a batch that broke one message at a time (see
:mod:`gateway.ingest.runner`).  ``parse`` needs no database and runs before the
transaction, off the event loop; the others run inside one transaction.

When a step raises, :class:`StepFailed` carries its name: that name is what
``mailgate inbound list`` shows as the failed stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from sqlalchemy import Connection

from gateway.ingest.context import Batch, Flow, Outcome
from gateway.ingest.steps import (
    authorise_sender,
    classify_direction,
    create_records,
    dedupe,
    emit_events,
    file_message,
    mark_replies,
    match_records,
    parse_mail,
)
from gateway.outage import is_storage_outage


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    run: Callable[[Connection | None, Batch], Flow]
    #: False for pure steps, which run before the transaction opens.
    in_transaction: bool = True


PIPELINE: tuple[Step, ...] = (
    Step("parse", parse_mail.run, in_transaction=False),
    Step("authorise", authorise_sender.run),
    Step("dedupe", dedupe.run),
    Step("classify", classify_direction.run),
    Step("match", match_records.run),
    Step("create", create_records.run),
    Step("file", file_message.run),
    Step("replies", mark_replies.run),
    Step("emit", emit_events.run),
)

PREPARE = tuple(s for s in PIPELINE if not s.in_transaction)
IN_TRANSACTION = tuple(s for s in PIPELINE if s.in_transaction)
if PIPELINE != PREPARE + IN_TRANSACTION:  # a declaration error, caught at import
    raise RuntimeError("the pure steps must come first in PIPELINE")


def with_record_cap(steps: tuple[Step, ...], max_records: int) -> tuple[Step, ...]:
    """``steps`` with ``match`` and ``create`` bound to ``MAILGATE_MAX_RECORDS_PER_MESSAGE``."""
    capped = {"match": match_records.run, "create": create_records.run}
    return tuple(
        replace(s, run=partial(capped[s.name], max_records=max_records))
        if s.name in capped and s.run is capped[s.name]
        else s
        for s in steps
    )


class StepFailed(Exception):
    """A step raised; ``step`` is its name and ``__cause__`` what it raised."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {type(cause).__name__}: {cause}")
        self.step = step
        self.reason = f"{type(cause).__name__}: {cause}"


def run_steps(conn: Connection | None, batch: Batch, steps: tuple[Step, ...]) -> None:
    for step in steps:
        try:
            flow = step.run(conn, batch)
        except Exception as exc:
            if is_storage_outage(exc):  # not this message's fault: the round fails
                raise
            raise StepFailed(step.name, exc) from exc
        if flow is Flow.DONE:
            return


def prepare(batch: Batch) -> None:
    """The pure steps, message by message when one of them breaks (never raises)."""
    try:
        run_steps(None, batch, PREPARE)
        return
    except StepFailed:
        pass
    for d in batch.live():
        try:
            run_steps(None, Batch([d], batch.mail_domain, batch.now), PREPARE)
        except StepFailed as exc:
            d.decide(Outcome.FAILED, exc.step, exc.reason)
