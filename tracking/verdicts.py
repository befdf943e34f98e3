"""Was this open or click a person, or a machine acting on their mailbox?

Honest tracking means a report's "opened 42 %" counts people.  Since 2021
most raw hits are not people: Apple Mail Privacy Protection downloads every
image of every message, corporate security gateways follow every link before
delivery, link checkers and scripts probe URLs.  The endpoints still record
every hit (the event log keeps the truth); this module decides, purely from
the hit and the send's other hits, which ones a report may count.

Rules, in the order they are tried (the first that fires names the reason):

``honeypot``
    The hidden link (:mod:`tracking.links`) has no text and ``display:none``;
    a person cannot click it.  Whatever followed it is a machine.
``scanner_ua``
    A user agent that names a security scanner, link checker or HTTP library
    (:data:`SCANNER_UA_MARKERS`).  People read mail in browsers and mail
    clients, never with ``python-requests`` or ``HeadlessChrome``.  Google's
    image proxy fetching a *click* URL is also a scanner (it only ever
    fetches images for people).
``apple_mpp``
    Apple Mail Privacy Protection fetches images through Apple's proxy with
    the bare user agent ``Mozilla/5.0`` — no real mail client sends that —
    from Apple's network (17.0.0.0/8), usually soon after delivery, whether
    or not anybody reads the message.  An MPP open says nothing about the
    person, so it is a machine.  A bare-agent open is ``apple_mpp`` when it
    comes from Apple's network or within :attr:`VerdictRules.mpp_window`
    (1 h) of delivery (the address may be hidden behind our own proxy); later
    and from elsewhere it is still no person's mail client: ``scanner_ua``.
``gmail_proxy`` (see the decision below)
``scanner_network``
    The request comes from the published mail-flow networks of the large
    security gateways (:data:`SCANNER_NETWORKS`).  These addresses run the
    gateways' link and attachment detonation, not people's browsers.
``too_fast``
    A click within :attr:`VerdictRules.too_fast` (10 s) of delivery: nobody
    opens, reads and clicks that quickly, but a gateway scanning the message
    on its way in does exactly that.  Likewise a click with no earlier open
    of the send within :attr:`VerdictRules.unopened_click_window` (60 s) of
    delivery — a person whose client blocks images can click without an
    open, but not within a minute of delivery *and* before any open.  Opens
    are not judged by speed alone: a person watching their inbox can open a
    message seconds after it arrives.
``burst``
    Clicks on at least :attr:`VerdictRules.burst_links` (3) distinct links of
    one send within :attr:`VerdictRules.burst_window` (2 s).  A person clicks
    one link, reads, maybe clicks another later; a scanner follows them all at
    once.  Hits on both sides of this one count, so recomputing a verdict
    after the fact gives the same answer for every hit of the burst.

Decision on the Gmail image proxy (``GoogleImageProxy`` / ``via ggpht.com``):
Gmail fetches images through its proxy when the person opens the message
(and caches them, so later opens are invisible).  Unlike Apple MPP, the
fetch is caused by a person, so **a Gmail proxy open counts as a human
open**, with reason ``gmail_proxy`` so reports can still separate it — the
same choice most ESPs make.  The exception: Gmail has been reported to
pre-fetch images for some mailboxes on arrival; a proxy open within
:attr:`VerdictRules.gmail_prefetch` (10 s) of delivery is ``machine`` /
``gmail_proxy``.

Everything else is ``human`` / ``no_machine_signal``.

Hits with a naive datetime are taken to be in UTC, so a caller mixing naive
and aware times gets an answer, not a ``TypeError``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

__all__ = [
    "Hit",
    "HitKind",
    "Verdict",
    "VerdictRules",
    "DEFAULT_RULES",
    "SCANNER_UA_MARKERS",
    "SCANNER_NETWORKS",
    "APPLE_NETWORKS",
    "verdict",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HitKind(StrEnum):
    OPEN = "open"
    CLICK = "click"


@dataclass(frozen=True, slots=True)
class Hit:
    """One request on a tracking URL of a send.

    ``honeypot`` is set by the caller when ``link_index`` is the send's
    ``honeypot_index``; ``link_index`` is None for opens.
    """

    kind: HitKind | Literal["open", "click"]
    at: datetime
    user_agent: str | None = None
    ip: str | None = None
    link_index: int | None = None
    honeypot: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Literal["human", "machine"]
    reason: str

    @property
    def is_human(self) -> bool:
        return self.kind == "human"


#: Case-insensitive substrings of user agents that are never a person.
#: Security gateways (several of them also send plain browser agents; the
#: timing and network rules catch those), link previewers, HTTP libraries.
SCANNER_UA_MARKERS: tuple[str, ...] = (
    "barracuda",
    "proofpoint",
    "mimecast",
    "bingpreview",  # Microsoft Defender for Office 365 Safe Links
    "safelinks",
    "microsoft office protocol discovery",
    "symantec",
    "messagelabs",
    "trend micro",
    "trendmicro",
    "forcepoint",
    "sophos",
    "fortiguard",
    "cisco ironport",
    "headlesschrome",
    "phantomjs",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "curl/",
    "wget/",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "libwww-perl",
    "node-fetch",
    "axios/",
    "scrapy",
    # Crawlers and link unfurlers (Googlebot/2.1, Slackbot-LinkExpanding …).
    # Not a bare "bot": Android agents carry phone models such as "CUBOT".
    "bot/",
    "bot-",
    "+http",  # crawlers put their info page in the agent: "(+http://…)"
    "spider",
    "crawler",
    "facebookexternalhit",
    "skypeuripreview",
    "microsoftpreview",
)

_GMAIL_PROXY = re.compile(r"googleimageproxy|via ggpht\.com", re.IGNORECASE)
_BARE_MOZILLA = re.compile(r"\s*mozilla/5\.0\s*", re.IGNORECASE)


def _networks(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


#: Apple owns the whole of 17.0.0.0/8 (one of the original class A
#: allocations); MPP fetches come from it.
APPLE_NETWORKS: tuple[Network, ...] = _networks("17.0.0.0/8")

#: Mail-flow networks of the large security gateways, as the vendors publish
#: them for allow-listing (reviewed 2026-11).  Kept small on purpose: only
#: ranges whose traffic is the gateway itself, never its customers' people.
#: Operators may pass their own list in :class:`VerdictRules`.
SCANNER_NETWORKS: tuple[Network, ...] = _networks(
    # Microsoft Exchange Online Protection / Defender for Office 365
    # (Microsoft 365 "URLs and IP address ranges", Exchange Online mail flow).
    "40.92.0.0/15",
    "40.107.0.0/16",
    "52.100.0.0/14",
    "104.47.0.0/17",
    # Mimecast (US and UK data-centre gateways).
    "205.139.110.0/24",
    "207.211.30.0/24",
    "195.130.217.0/24",
    "91.220.42.0/24",
    # Proofpoint Essentials / Protection Server cloud.
    "148.163.128.0/19",
    "67.231.144.0/20",
    # Barracuda Email Security Service.
    "209.222.80.0/21",
    "64.235.144.0/20",
)


@dataclass(frozen=True, slots=True)
class VerdictRules:
    too_fast: timedelta = timedelta(seconds=10)
    unopened_click_window: timedelta = timedelta(seconds=60)
    burst_window: timedelta = timedelta(seconds=2)
    burst_links: int = 3
    gmail_prefetch: timedelta = timedelta(seconds=10)
    mpp_window: timedelta = timedelta(hours=1)
    scanner_networks: tuple[Network, ...] = field(default=SCANNER_NETWORKS)
    apple_networks: tuple[Network, ...] = field(default=APPLE_NETWORKS)
    scanner_ua_markers: tuple[str, ...] = field(default=SCANNER_UA_MARKERS)


DEFAULT_RULES = VerdictRules()

_HUMAN = Verdict("human", "no_machine_signal")


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _ip_in(ip: str | None, networks: Sequence[Network]) -> bool:
    if not ip:
        return False
    key = (ip, id(networks))
    cached = _IP_IN.get(key)
    if cached is not None and cached[0] is networks:
        return cached[1]
    found = _ip_in_uncached(ip, networks)
    if len(_IP_IN) >= _IP_CACHE_SIZE:
        _IP_IN.clear()
    _IP_IN[key] = (networks, found)
    return found


#: (ip, id(networks)) -> (networks, answer).  The writer judges thousands of hits a
#: second from far fewer addresses (proxies, corporate gateways, MPP); parsing each
#: again was a fifth of its time.  The networks are kept in the value, so a reused
#: id can never answer for another list.
_IP_IN: dict[tuple[str, int], tuple[Sequence[Network], bool]] = {}
_IP_CACHE_SIZE = 50_000


def _ip_in_uncached(ip: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _since(delivered_at: datetime | None, hit: Hit) -> timedelta | None:
    if delivered_at is None:
        return None
    return _utc(hit.at) - _utc(delivered_at)


def verdict(
    hit: Hit,
    *,
    delivered_at: datetime | None,
    recent_hits: Sequence[Hit],
    rules: VerdictRules = DEFAULT_RULES,
) -> Verdict:
    """Classify one hit; pure, never raises on odd input.

    ``recent_hits`` are the send's other hits (earlier, and later ones if
    known); ``hit`` itself may be among them.  ``delivered_at`` is when the
    relay accepted the message, None if unknown (timing rules are skipped).
    """
    is_click = hit.kind == HitKind.CLICK
    ua = (hit.user_agent or "").strip()
    ua_lower = ua.lower()
    since = _since(delivered_at, hit)

    if hit.honeypot:
        return Verdict("machine", "honeypot")

    gmail = bool(_GMAIL_PROXY.search(ua))
    if gmail and is_click:
        return Verdict("machine", "scanner_ua")
    if not gmail and any(marker in ua_lower for marker in rules.scanner_ua_markers):
        return Verdict("machine", "scanner_ua")

    if _BARE_MOZILLA.fullmatch(ua):
        if not is_click and (
            _ip_in(hit.ip, rules.apple_networks)
            or (since is not None and since <= rules.mpp_window)
        ):
            return Verdict("machine", "apple_mpp")
        return Verdict("machine", "scanner_ua")

    if gmail:
        if since is not None and since <= rules.gmail_prefetch:
            return Verdict("machine", "gmail_proxy")
        return Verdict("human", "gmail_proxy")

    if _ip_in(hit.ip, rules.scanner_networks):
        return Verdict("machine", "scanner_network")

    if is_click and since is not None:
        if since <= rules.too_fast:
            return Verdict("machine", "too_fast")
        if since <= rules.unopened_click_window and not any(
            h.kind == HitKind.OPEN and _utc(h.at) <= _utc(hit.at) for h in recent_hits
        ):
            return Verdict("machine", "too_fast")

    if is_click and _in_burst(hit, recent_hits, rules):
        return Verdict("machine", "burst")

    return _HUMAN


def _in_burst(hit: Hit, recent_hits: Sequence[Hit], rules: VerdictRules) -> bool:
    """Some window of ``burst_window`` containing this hit covers enough links."""
    at = _utc(hit.at)
    near = sorted(
        (_utc(h.at), h.link_index)
        for h in recent_hits
        if h.kind == HitKind.CLICK
        and h.link_index is not None
        and abs(_utc(h.at) - at) <= rules.burst_window
    )
    near.append((at, hit.link_index))
    near.sort(key=lambda pair: pair[0])
    start = 0
    for end in range(len(near)):
        while near[end][0] - near[start][0] > rules.burst_window:
            start += 1
        window = near[start : end + 1]
        if window[0][0] <= at <= window[-1][0]:
            links = {index for _, index in window if index is not None}
            if len(links) >= rules.burst_links:
                return True
    return False
