"""Charts drawn on the server as inline SVG (templates/audit/analytics.html): no script, readable without
one, and each chart comes with its numbers in a table."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 24  # room for the value axis on the left, day labels below
MAX_X_LABELS = 8
SERIES_CLASSES = ("series-a", "series-b", "series-c")


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass
class Line:
    name: str
    css: str
    points: str
    dots: list[tuple[float, float, str]] = field(default_factory=list)


@dataclass
class Chart:
    label: str
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    empty: bool = False

    @property
    def baseline(self) -> float:
        return HEIGHT - BOTTOM

    @property
    def plot_right(self) -> float:
        return WIDTH - RIGHT


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 4, 5 times a power of ten that is at least `value` (halves read well too)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 4, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def _frame(chart: Chart, labels: Sequence[str], top: float, fmt: Callable[[float], str]) -> float:
    """Axis ticks and labels; returns the x step between points."""
    plot_height = HEIGHT - TOP - BOTTOM
    chart.y_ticks = [(TOP + plot_height * (1 - f), fmt(top * f)) for f in (0, 0.5, 1)]
    step = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    every = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    chart.x_labels = [(LEFT + step * (i + 0.5), label) for i, label in enumerate(labels) if i % every == 0]
    return step


def _y(value: float, top: float) -> float:
    plot_height = HEIGHT - TOP - BOTTOM
    return TOP + plot_height * (1 - value / top)


def bar_chart(label: str, labels: Sequence[str], values: Sequence[float], fmt: Callable[[float], str]) -> Chart:
    chart = Chart(label=label, empty=not any(values))
    top = nice_ceiling(max(values, default=0))
    step = _frame(chart, labels, top, fmt)
    gap = min(4.0, step * 0.2)
    for i, (name, value) in enumerate(zip(labels, values, strict=True)):
        y = _y(value, top)
        chart.bars.append(
            Bar(
                x=LEFT + step * i + gap / 2,
                y=y,
                width=step - gap,
                height=chart.baseline - y,
                title=f"{name}: {fmt(value)}",
            )
        )
    return chart


def line_chart(
    label: str, labels: Sequence[str], series: dict[str, Sequence[float | None]], fmt: Callable[[float], str]
) -> Chart:
    """Lines over the days; a day without a value (no questions) is skipped, not drawn as zero."""
    known = [v for values in series.values() for v in values if v is not None]
    chart = Chart(label=label, empty=not known)
    top = nice_ceiling(max(known, default=0))
    step = _frame(chart, labels, top, fmt)
    for (name, values), css in zip(series.items(), SERIES_CLASSES, strict=False):
        line = Line(name=name, css=css, points="")
        coordinates = []
        for i, value in enumerate(values):
            if value is None:
                continue
            x, y = LEFT + step * (i + 0.5), _y(value, top)
            coordinates.append(f"{x:.1f},{y:.1f}")
            line.dots.append((x, y, f"{labels[i]} {name}: {fmt(value)}"))
        line.points = " ".join(coordinates)
        chart.lines.append(line)
    return chart
