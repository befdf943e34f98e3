"""Server-rendered SVG bar charts (pure): geometry computed here, drawn by ``chart.html``.

Why SVG from the server rather than a JavaScript library: nothing to vendor or
pin, nothing for the Content-Security-Policy to allow, the chart is in the
page a test (or a screen reader, through each bar's ``<title>``) reads, and it
prints.  Colours come from classes in ``analytics.css`` (no inline style).
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 720, 220
#: Room for the axis labels: left (values) and bottom (periods).
LEFT, RIGHT, BOTTOM, TOP = 48, 20, 24, 8


@dataclass(frozen=True, slots=True)
class Bar:
    series: int  # index of the series: its CSS class is ``s{series}``
    label: str  # the period
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class Tick:
    label: str
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    y_ticks: list[Tick]  # value labels on the left
    x_ticks: list[Tick]  # period labels at the bottom (thinned when there are many)
    limit_y: float | None  # the limit line, when there is one
    limit: int | None
    baseline: float
    right: float  # where the plot ends (axis, grid and limit lines)


def _nice_top(value: int) -> int:
    """The smallest 1, 2 or 5 × 10ⁿ at or above ``value`` (at least 1)."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if step * top >= value:
                return step * top
        top *= 10


def bar_chart(
    labels: list[str],
    series: list[list[int]],
    *,
    limit: int | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """Grouped bars: one group per label, one bar per series; a dashed line at ``limit``."""
    peak = max([0, *(v for s in series for v in s), *([limit] if limit else [])])
    top = _nice_top(peak)
    plot_w, plot_h = width - LEFT - RIGHT, height - BOTTOM - TOP
    baseline = TOP + plot_h
    group_w = plot_w / max(len(labels), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)

    def y_of(v: int) -> float:
        return round(baseline - plot_h * v / top, 2)

    bars = [
        Bar(
            series=k,
            label=label,
            value=values[i],
            x=round(LEFT + i * group_w + group_w * 0.1 + k * bar_w, 2),
            y=y_of(values[i]),
            width=round(bar_w, 2),
            height=round(baseline - y_of(values[i]), 2),
        )
        for i, label in enumerate(labels)
        for k, values in enumerate(series)
    ]
    y_ticks = [Tick(f"{v:,}", LEFT - 6, y_of(v)) for v in (0, top // 2, top)] if top > 1 else []
    if top == 1:
        y_ticks = [Tick("0", LEFT - 6, y_of(0)), Tick("1", LEFT - 6, y_of(1))]
    every = max(1, -(-len(labels) // 8))  # at most ~8 period labels, the last one always
    x_ticks = [
        Tick(label, round(LEFT + (i + 0.5) * group_w, 2), height - 6)
        for i, label in enumerate(labels)
        if (len(labels) - 1 - i) % every == 0
    ]
    return Chart(
        width=width,
        height=height,
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        limit_y=y_of(limit) if limit else None,
        limit=limit,
        baseline=baseline,
        right=width - RIGHT,
    )
