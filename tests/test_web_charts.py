"""The SVG chart geometry (pure): bars scale to a round top, the limit line sits at its
value, and period labels are thinned but the last is always shown."""

from __future__ import annotations

from gateway.web.charts import BOTTOM, HEIGHT, TOP, bar_chart


def test_bars_scale_to_a_round_top_and_the_limit_line_sits_at_its_value():
    chart = bar_chart(["a", "b", "c"], [[0, 150, 300]], limit=400)
    plot = HEIGHT - BOTTOM - TOP
    assert [t.label for t in chart.y_ticks] == ["0", "250", "500"]  # 400 → 500
    heights = [b.height for b in chart.bars]
    assert heights == [0, round(plot * 150 / 500, 2), round(plot * 300 / 500, 2)]
    assert chart.limit_y == round(chart.baseline - plot * 400 / 500, 2)
    assert all(b.y + b.height == chart.baseline for b in chart.bars)


def test_grouped_series_sit_side_by_side_and_never_overlap():
    chart = bar_chart(["d1", "d2"], [[5, 1], [3, 0], [1, 0]])
    assert [(b.label, b.series, b.value) for b in chart.bars[:3]] == [
        ("d1", 0, 5),
        ("d1", 1, 3),
        ("d1", 2, 1),
    ]
    xs = sorted((b.x, b.x + b.width) for b in chart.bars)
    assert all(a[1] <= b[0] + 1e-6 for a, b in zip(xs, xs[1:], strict=False))
    assert chart.limit_y is None


def test_thirty_days_show_about_eight_labels_ending_with_today_and_empty_is_fine():
    days = [f"11-{d:02d}" for d in range(1, 31)]
    chart = bar_chart(days, [[0] * 30], limit=300)
    labels = [t.label for t in chart.x_ticks]
    assert labels[-1] == "11-30" and 6 <= len(labels) <= 9
    empty = bar_chart([], [[]])
    assert empty.bars == [] and [t.label for t in empty.y_ticks] == ["0", "1"]
