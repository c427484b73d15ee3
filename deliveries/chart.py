"""Geometry of the dashboard's stacked bar chart, drawn as inline SVG by the template (no script, no CDN)."""

import math
from collections.abc import Callable
from dataclasses import dataclass

from deliveries.dashboard import HourBucket
from deliveries.models import Status

# Shared with the admin's status badges so a colour means the same thing everywhere.
STATUS_COLOURS = {
    Status.SUCCEEDED: "#2e7d32",
    Status.FAILED: "#c62828",
    Status.PENDING: "#ef8f00",
    Status.CANCELLED: "#8a8a8a",
}
STACK_ORDER = [Status.SUCCEEDED, Status.FAILED, Status.PENDING, Status.CANCELLED]
WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 24
LABEL_EVERY = 3


@dataclass
class Segment:
    status: str
    count: int
    y: float
    height: float
    colour: str


@dataclass
class Bar:
    x: float
    width: float
    centre: float
    title: str
    label: str
    segments: list[Segment]


@dataclass
class Tick:
    y: float
    label: int


@dataclass
class Chart:
    width: int
    height: int
    left: int
    right_edge: int
    baseline: float
    bars: list[Bar]
    ticks: list[Tick]


def nice_step(value: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (and at least 1)."""
    if value <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= value)


def scale_top(peak: int) -> tuple[int, int]:
    """The axis maximum and the step between gridlines (about four of them)."""
    step = nice_step(peak / 4)
    return max(step, step * math.ceil(peak / step)), step


def stacked_bars(hours: list[HourBucket]) -> Chart:
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top, step = scale_top(max((bucket.total for bucket in hours), default=0))
    slot = plot_width / max(len(hours), 1)
    baseline = TOP + plot_height

    def y_of(value: float) -> float:
        return round(baseline - value / top * plot_height, 1)

    bars = [_bar(i, bucket, LEFT + i * slot, slot, y_of) for i, bucket in enumerate(hours)]
    ticks = [Tick(y_of(value), value) for value in range(0, top + 1, step)]
    return Chart(WIDTH, HEIGHT, LEFT, WIDTH - RIGHT, baseline, bars, ticks)


def _bar(index: int, bucket: HourBucket, x: float, slot: float, y_of: Callable[[float], float]) -> Bar:
    segments, below = [], 0
    for status in STACK_ORDER:
        count = bucket.counts[status]
        if count:
            y = y_of(below + count)
            segments.append(Segment(status, count, y, round(y_of(below) - y, 1), STATUS_COLOURS[status]))
            below += count
    hour = bucket.start.strftime("%H:00")
    parts = ", ".join(f"{bucket.counts[s]} {s}" for s in STACK_ORDER if bucket.counts[s]) or "no deliveries"
    label = hour if index % LABEL_EVERY == 0 else ""
    width = round(slot * 0.72, 1)
    return Bar(round(x + (slot - width) / 2, 1), width, round(x + slot / 2, 1), f"{hour} UTC: {parts}", label, segments)
