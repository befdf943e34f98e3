"""``GET /api/v1/events``: the org's event log, read from an offset (``after``).

Mail events follow the sharing rules of the mail they are about
(:func:`gateway.receive.mailboxes.sharing.sees_event`): a colleague's private
mail, and mail with an excluded domain (``shared`` false), are left out of the
page; the events of mail sent from the CRM (a send's ``email.sent`` …
``email.unsubscribed``, the ``email.filed`` of its copy) are everyone's, except
those of a send whose To or a CC sits in an excluded domain: its sender's own
(:func:`event_rules` looks the page's sends up).  ``next`` is the last id
*read*, so a page thinned by sharing still moves the reader on.

:func:`event_body` is the one serialisation of an event: a page's items and
a webhook delivery's body are the same bytes for the same event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.http.auth import int_param
from gateway.http.jsonutil import dumps
from gateway.http.resource import Resource
from gateway.receive.mailboxes import sharing
from storage import events, mailboxes, sends
from storage.events import Event


def envelope_json(envelope: dict[str, Any]) -> bytes:
    """One event envelope as the API writes it: a page's item, a webhook's body."""
    return dumps(envelope)


def event_body(event: Event) -> bytes:
    """``event`` exactly as one item of ``GET /api/v1/events`` shows it (a webhook's body)."""
    return envelope_json(event.envelope())


async def event_rules(
    conn: AsyncConnection, org_id: int, found: Iterable[Mapping[str, Any]]
) -> sharing.EventRules:
    """The org's sharing rules for these events' ``data``: modes, custom shares, and which
    of the sends they name involve an excluded domain (read only when the org has one).

    The one reading behind :func:`sharing.sees_event` for the event log and the stream.
    """
    modes, shares = await mailboxes.sharing_rules(conn, org_id)
    excluded = await mailboxes.list_excluded(conn, org_id)
    if not excluded:
        return sharing.EventRules(modes, shares)
    send_ids = [d.get("send_id") for d in found]
    rows = await sends.recipients(conn, org_id, (s for s in send_ids if isinstance(s, int)))
    return sharing.EventRules(modes, shares, sharing.unshared_sends(rows, excluded))


class EventsApi(Resource):
    def routes(self) -> list[Route]:
        return [Route("/api/v1/events", self.list_events, methods=["GET"])]

    async def list_events(self, request: Request) -> Response:
        user = await self.user(request)
        after = int_param(request, "after", 0)
        limit = int_param(request, "limit", 100, lo=1, hi=1000)
        async with self.db.connect() as conn:
            read = await events.read_after(conn, after=after, limit=limit, org_id=user["org_id"])
            rules = await event_rules(conn, user["org_id"], (e["data"] for e in read))
        items = [e for e in read if rules.sees(user["id"], e["type"], e["data"])]
        nxt = str(read[-1]["id"]) if len(read) == limit else None
        page = b'{"items":[%s],"next":%s}' % (
            b",".join(envelope_json(e) for e in items),
            dumps(nxt),
        )
        return Response(page, media_type="application/json")
