"""Waiting for new mail: IDLE when the server has it, a NOOP poll when not.

A server that says ``* BYE`` while we idle (shutdown, ``doveadm kick``,
an admin's session limit) is closing the connection; aioimaplib only hands
that line to the IDLE queue, so we look for it and raise
``MailboxError("disconnected")`` at once instead of waiting out the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from gateway.receive.imap.checkpoint import Checkpoint
from gateway.receive.imap.client import ImapSession, MailboxError

_EXISTS = re.compile(rb"^\d+ EXISTS", re.IGNORECASE)
_BYE = re.compile(rb"^(\* )?BYE\b", re.IGNORECASE)

#: Servers drop idlers after 30 min (RFC 2177); renew well before.
MAX_IDLE = 25 * 60.0
NOOP_INTERVAL = 15.0


async def wait_for_new(
    session: ImapSession,
    folder: str,
    timeout: float,
    checkpoint: Checkpoint | None = None,
    stop: asyncio.Event | None = None,
    noop_interval: float = NOOP_INTERVAL,
) -> bool:
    """Block until ``folder`` may have new mail (True) or ``timeout``/``stop`` (False).

    Passing the folder's ``checkpoint`` closes the gap between the last fetch
    and the start of IDLE: mail that arrived in between returns True at once.
    True is a hint, not a promise: the caller then polls (one EXAMINE when
    nothing is new).
    """
    state = await session.examine(folder)
    if checkpoint is not None:
        if state.uidvalidity != checkpoint.uidvalidity:
            return True
        last = state.last_assigned_uid
        if last is not None and last > checkpoint.last_uid:
            return True
    timeout = min(timeout, MAX_IDLE)
    if session.has_capability("IDLE"):
        return await _idle(session, timeout, stop)
    return await _noop_poll(session, timeout, stop, noop_interval)


async def _idle(session: ImapSession, timeout: float, stop: asyncio.Event | None) -> bool:
    client = session._client
    queue = session.protocol.idle_queue
    while not queue.empty():  # pushes left over from an earlier IDLE
        queue.get_nowait()
    # aioimaplib's own idle timer is set past ours; we end IDLE ourselves.
    idle_task = await session.call("IDLE", client.idle_start(timeout=timeout + 60.0))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    new_mail = False
    try:
        while not new_mail:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            lines = await _next_push(session, remaining, stop)
            if lines is None:
                break
            for line in lines:
                if not isinstance(line, bytes):
                    continue
                if _BYE.match(line):
                    session.mark_lost(line.decode("utf-8", "replace"))
                    raise session.disconnected_error()
                if _EXISTS.match(line):
                    new_mail = True
    except BaseException:
        idle_task.cancel()
        raise
    if session.connected:
        client.idle_done()
        await session.command("IDLE", idle_task)
    else:
        idle_task.cancel()
        raise session.disconnected_error()
    return new_mail


async def _next_push(
    session: ImapSession, timeout: float, stop: asyncio.Event | None
) -> list[bytes] | None:
    """The next untagged lines during IDLE; None on timeout or stop."""
    getter = asyncio.ensure_future(session.protocol.idle_queue.get())
    lost = asyncio.ensure_future(session._lost.wait())
    waiters = {getter, lost}
    stopper = None
    if stop is not None:
        stopper = asyncio.ensure_future(stop.wait())
        waiters.add(stopper)
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            if not waiter.done():
                waiter.cancel()
    if getter in done:
        return getter.result()
    if lost in done:
        raise session.disconnected_error()
    return None


async def _noop_poll(
    session: ImapSession, timeout: float, stop: asyncio.Event | None, interval: float
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for line in await session.noop():
            if _BYE.match(line):
                session.mark_lost(line.decode("utf-8", "replace"))
                raise session.disconnected_error()
            if _EXISTS.match(line):
                return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        if await _sleep_or_stop(min(interval, remaining), stop):
            return False


async def _sleep_or_stop(seconds: float, stop: asyncio.Event | None) -> bool:
    """Sleep; True if ``stop`` was set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


__all__ = ["wait_for_new", "MailboxError"]
