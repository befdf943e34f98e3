"""Where each event consumer stands in the log, moved only together with its effects.

A consumer's round is one transaction: :func:`hold` reads its offset (and on
PostgreSQL locks the row), the consumer applies the events after it, and
:func:`advance` moves the offset past them; all of it commits together.  A
crash before the commit applies nothing, and the same events are read again;
after it they are never read again.  So no event is applied twice or skipped.

Two copies of one consumer (two ``serve --only sync`` processes, or a test's
``drain`` beside the running loop) must never both apply a batch.  On
PostgreSQL the offset row is locked ``FOR UPDATE``: the second copy waits for
the first to commit, then reads the offset it moved, so when its round
returns every effect before it is committed.  SQLite has one writer (our
writer transactions begin ``IMMEDIATE``), which serialises rounds the same
way.  :func:`advance` is a compare-and-set on top: an offset someone else
moved is never moved again from a stale position.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update

from storage.inserts import insert_ignore
from storage.schema import consumer_offsets


class OffsetMoved(RuntimeError):
    """Another copy of the consumer moved the offset first: this round must roll back."""


def position(conn: Connection, consumer: str) -> int:
    """The consumer's offset without locking it (0 before its first round)."""
    q = select(consumer_offsets.c.position).where(consumer_offsets.c.consumer == consumer)
    return conn.execute(q).scalar() or 0


def hold(conn: Connection, consumer: str, now: datetime) -> int:
    """The consumer's offset, locked until this transaction ends; the row is made if new.

    A new consumer starts at the beginning of the log (offset 0).
    """
    q = select(consumer_offsets.c.position).where(consumer_offsets.c.consumer == consumer)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    found = conn.execute(q).scalar()
    if found is not None:
        return found
    conn.execute(
        insert_ignore(consumer_offsets, conn.dialect.name).values(
            consumer=consumer, position=0, updated_at=now
        )
    )
    return conn.execute(q).scalar_one()


def advance(conn: Connection, consumer: str, *, expected: int, to: int, now: datetime) -> None:
    """Move the offset from ``expected`` to ``to``; :class:`OffsetMoved` if it was not there."""
    res = conn.execute(
        update(consumer_offsets)
        .where(consumer_offsets.c.consumer == consumer, consumer_offsets.c.position == expected)
        .values(position=to, updated_at=now)
    )
    if res.rowcount != 1:
        raise OffsetMoved(f"{consumer}: offset is no longer {expected}")


def positions(conn: Connection) -> dict[str, tuple[int, datetime]]:
    """Every stored offset: consumer → (position, when it last moved) (the dashboard's lag)."""
    q = select(
        consumer_offsets.c.consumer, consumer_offsets.c.position, consumer_offsets.c.updated_at
    )
    return {name: (pos, at) for name, pos, at in conn.execute(q)}
