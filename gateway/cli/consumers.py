"""``mailgate consumer …``: where each event-log consumer stands, and its parked events.

A consumer parks an event it could not apply (:mod:`sync.consumer`); an
operator lists them, replays one once its cause is fixed (the consumer's own
``apply_batch``, in one transaction), or skips it.  Errors are one line and a
non-zero exit, as everywhere in the CLI.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

consumer_app = typer.Typer(
    no_args_is_help=True,
    help="Event-log consumers: lag, parked events (replay or skip them).",
)


def _lag(conn: Any) -> list[dict[str, Any]]:
    from storage import consumers, events, parked
    from sync import CONSUMERS

    head = events.last_id(conn)
    stored = consumers.positions(conn)
    waiting = parked.open_counts(conn)
    names = [cls.name for cls in CONSUMERS]
    names += sorted(set(stored) - set(names))  # offsets of consumers this build no longer has
    rows = []
    for name in names:
        position, moved = stored.get(name, (0, None))
        rows.append(
            {
                "consumer": name,
                "position": position,
                "head": head,
                "lag": max(head - position, 0),
                "parked": waiting.get(name, 0),
                "moved_at": moved.isoformat() if moved else None,
            }
        )
    return rows


@consumer_app.command("lag")
def lag(as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Each consumer's offset, the log's head, how many events behind, and how many parked."""
    from gateway.cli.main import out, run_db

    rows = run_db(lambda db, s: db.run_read(_lag))
    if as_json:
        out(rows)
        return
    typer.echo(f"{'consumer':<20} {'position':>10} {'head':>10} {'lag':>8} {'parked':>7}")
    for r in rows:
        typer.echo(
            f"{r['consumer']:<20} {r['position']:>10} {r['head']:>10} {r['lag']:>8} "
            f"{r['parked']:>7}"
        )


@consumer_app.command("parked")
def parked_list(
    consumer: Annotated[str | None, typer.Option(help="Only this consumer's.")] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Replayed and skipped ones too.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Events a consumer parked, oldest first, with their error."""
    from gateway.cli.main import out, run_db
    from storage import parked
    from sync.consumer import parked_json

    limit = max(1, min(limit, 10_000))
    rows = run_db(
        lambda db, s: db.run_read(
            lambda conn: parked.listing(conn, consumer=consumer, everything=everything, limit=limit)
        )
    )
    items = [parked_json(r) for r in rows]
    if as_json:
        out(items)
        return
    if not items:
        typer.echo("no parked events")
        return
    for p in items:
        state = p["resolution"] or "parked"
        typer.echo(
            f"{p['id']:>6}  {p['consumer']:<18} event {p['event_id']} {p['event_type']} "
            f"org {p['org_id']} · {state} · {p['attempts']} attempts · {p['parked_at']}\n"
            f"        {p['error']}"
        )


def _act(parked_id: int, action: str) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.cli.main import out, run_db
    from gateway.clock import SystemClock
    from gateway.org import admin
    from storage.db import StorageUnavailable
    from sync.consumer import ParkedError, replay_parked, skip_parked

    act = replay_parked if action == "replay" else skip_parked

    async def go(db, s):
        try:
            return await act(db, SystemClock(), parked_id)
        except ParkedError as exc:
            raise admin.AdminError(str(exc)) from exc
        except (StorageUnavailable, OSError, SQLAlchemyError):
            raise  # run_db words these

    out(run_db(go))


@consumer_app.command("replay")
def replay(
    parked_id: Annotated[int, typer.Argument(help="Id from `consumer parked`.")],
) -> None:
    """Apply a parked event again with its consumer; it stays parked if it fails again."""
    _act(parked_id, "replay")


@consumer_app.command("skip")
def skip(
    parked_id: Annotated[int, typer.Argument(help="Id from `consumer parked`.")],
) -> None:
    """Never apply a parked event (the consumer is already past it)."""
    _act(parked_id, "skip")
