"""Reading ``/metrics`` as Prometheus does: over HTTP, parsed with prometheus_client's parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(base_url: str) -> str:
    r = httpx.get(f"{base_url}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        v
        for n, ls, v in samples(text)
        if n == name and all(ls.get(k) == want for k, want in labels.items())
    )


def series(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called ``name``."""
    return [ls for n, ls, _ in samples(text) if n == name]


class Scraper:
    """Scrape once now, then ask how far a series moved since (counters are per process)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.before = scrape(base_url)

    def moved(self, name: str, **labels: str) -> float:
        return value(scrape(self.base_url), name, **labels) - value(self.before, name, **labels)
