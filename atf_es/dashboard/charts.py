"""Server-rendered line charts: inline SVG, no JavaScript."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

WIDTH = 560
HEIGHT = 180
_LEFT = 52
_RIGHT = 10
_TOP = 12
_BOTTOM = 26


@dataclass(frozen=True, slots=True)
class Series:
    """One line: a label, a CSS colour and ``(epoch ms, value)`` points, oldest first."""

    label: str
    color: str
    points: list[tuple[int, float]]


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _clock(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%H:%M:%S")


def _number(value: float, unit: str) -> str:
    if unit == "ms" and value >= 10_000:
        return f"{value / 1000:g} s"
    text = f"{value:g}" if value < 100_000 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def line_chart(
    title: str,
    series: list[Series],
    start_ms: int,
    end_ms: int,
    *,
    unit: str = "",
    empty: str = "no samples yet",
) -> str:
    """An ``<svg>`` line chart of ``series`` over ``[start_ms, end_ms]``, times in UTC."""
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    span = max(1, end_ms - start_ms)
    values = [v for s in series for _, v in s.points]
    top = _nice_ceiling(max(values, default=0))

    def x(at: int) -> float:
        return _LEFT + plot_w * (at - start_ms) / span

    def y(value: float) -> float:
        return _TOP + plot_h * (1 - value / top)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for fraction in (0, 0.5, 1):
        level = top * fraction
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y(level):.1f}" y2="{y(level):.1f}" '
            'class="grid"/>'
            f'<text x="{_LEFT - 4}" y="{y(level) + 4:.1f}" class="axis" text-anchor="end">'
            f"{escape(_number(level, unit))}</text>"
        )
    for fraction, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        at = start_ms + round(span * fraction)
        parts.append(
            f'<text x="{x(at):.1f}" y="{HEIGHT - 8}" class="axis" text-anchor="{anchor}">'
            f"{_clock(at)}</text>"
        )
    if not values:
        parts.append(
            f'<text x="{_LEFT + plot_w / 2}" y="{_TOP + plot_h / 2}" class="empty" '
            f'text-anchor="middle">{escape(empty)}</text>'
        )
    for line in series:
        inside = [(at, v) for at, v in line.points if start_ms <= at <= end_ms]
        if not inside:
            continue
        coordinates = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v in inside)
        color = escape(line.color)
        if len(inside) == 1:
            at, v = inside[0]
            parts.append(f'<circle cx="{x(at):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"/>')
        else:
            parts.append(
                f'<polyline points="{coordinates}" fill="none" stroke="{color}" '
                'stroke-width="1.8" stroke-linejoin="round"/>'
            )
    legend_x = _LEFT + 6
    for line in series:
        parts.append(
            f'<rect x="{legend_x}" y="{_TOP + 5}" width="10" height="3" '
            f'fill="{escape(line.color)}"/>'
            f'<text x="{legend_x + 14}" y="{_TOP + 10}" class="legend">{escape(line.label)}</text>'
        )
        legend_x += 24 + 7 * len(line.label)
    parts.append("</svg>")
    return "".join(parts)


__all__ = ["Series", "line_chart"]
