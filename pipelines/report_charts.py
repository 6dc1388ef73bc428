"""The report's charts: inline SVG drawn here, no library and no network.

A line chart puts values on a time axis (a gap where a value is unknown) with an optional band
of volume bars under it; a bar chart lays groups out horizontally, a bar without a value shows
its note instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from pipelines.report_format import count, esc, pct

COLOR_LINE = "#2563eb"
COLOR_BAR = "#dc2626"
COLOR_MUTED = "#9ca3af"
COLOR_VOLUME = "#cbd5e1"
COLOR_GRID = "#e5e7eb"
COLOR_TEXT = "#374151"
# Failure reasons and voice names come in Chinese too: after the platform's UI font, fonts that
# hold CJK glyphs on Linux, macOS and Windows, so a browser falls back glyph by glyph instead of
# drawing boxes.
FONT_STACK = (
    'system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC", "Source Han Sans SC", '
    '"PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "WenQuanYi Micro Hei", sans-serif'
)
# Axis steps: 1, 2, 2.5 or 5 times a power of ten.
NICE_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None  # None: nothing to show (e.g. no finished job), drawn as a note
    note: str = ""


def nice_ticks(high: float, intervals: int = 5) -> list[float]:
    """Axis ticks from 0 to at least `high`: a round step (1, 2, 2.5 or 5 times a power of ten),
    the smallest that needs no more than `intervals` steps. Nothing above 0: ticks up to 1."""
    if not high > 0:
        high = 1.0
    raw = high / intervals
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in NICE_STEPS if m * power >= raw * (1 - 1e-9))
    n = max(1, math.ceil(high / step * (1 - 1e-9)))
    return [round(k * step, 12) for k in range(n + 1)]


def _tick_label(value: float, step: float, percent: bool) -> str:
    """`value` with as many decimals as the axis step needs (2.5% steps show 2.5%, 10% steps 10%)."""
    scale = 100 if percent else 1
    digits = next(d for d in range(7) if math.isclose(round(step * scale, d), step * scale, abs_tol=1e-9))
    return f"{value * scale:.{digits}f}" + ("%" if percent else "")


def _svg_open(width: int, height: int, title: str) -> str:
    # The font stack on the element itself as well, so a chart copied out of the page keeps it.
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" '
        f'font-family="{esc(FONT_STACK)}">'
    )


# ---------------------------------------------------------------- line chart


@dataclass(frozen=True)
class _TimePlot:
    """Where a line chart draws: days (as ordinals) across, values from 0 to `y_max` up."""

    left: int
    top: int
    width: int
    height: int
    first: int  # the first point's day
    span: int  # days from the first point to the last
    y_max: float

    def x(self, day: int) -> float:
        # Position by date, not by index, so days without jobs keep their width.
        return self.left + (self.width * (day - self.first) / self.span if self.span else self.width / 2)

    def y(self, value: float) -> float:
        return self.top + self.height - self.height * (value / self.y_max)


def line_chart(
    points: Sequence[tuple[date, float | None]],
    title: str,
    *,
    percent: bool = True,
    volumes: Sequence[int] | None = None,
    volume_label: str = "finished jobs",
) -> str:
    """An SVG line chart of `points` (day, value) placed on a time axis; None leaves a gap.

    Values are fractions when `percent`. `volumes` (one per point) draws a bar per point in a
    band under the line: how many jobs the point's value rests on.
    """
    width, left, right, top, bottom = 720, 56, 16, 28, 40
    plot_h = 172
    band_gap, band_h = (14, 56) if volumes is not None else (0, 0)
    height = top + plot_h + band_gap + band_h + bottom
    values = [v for _, v in points if v is not None]
    parts = [_svg_open(width, height, title), f'<text x="{left}" y="18" class="chart-title">{esc(title)}</text>']
    if not values:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">'
                     "No finished jobs yet</text></svg>")  # fmt: skip
        return "".join(parts)
    ticks = nice_ticks(max(values))
    first, last = points[0][0].toordinal(), points[-1][0].toordinal()
    plot = _TimePlot(left, top, width - left - right, plot_h, first, last - first, ticks[-1])
    parts += _value_grid(plot, ticks, width - right, percent)
    if volumes is not None:

        def x_at(i: int) -> float:
            return plot.x(points[i][0].toordinal())

        parts.append(_volume_band(points, volumes, x_at, left, width - right, top + plot_h + band_gap, band_h,
                                  volume_label))  # fmt: skip
    parts += _date_labels(plot, last, height - bottom + 18)
    parts += _line_segments(plot, points)
    parts += _point_markers(plot, points, percent, volumes, volume_label)
    parts.append("</svg>")
    return "".join(parts)


def _value_grid(plot: _TimePlot, ticks: Sequence[float], right_edge: int, percent: bool) -> list[str]:
    """A grid line and a label at each value tick."""
    step = ticks[1] - ticks[0]
    parts = []
    for v in ticks:
        y = plot.y(v)
        parts.append(
            f'<line x1="{plot.left}" x2="{right_edge}" y1="{y:.1f}" y2="{y:.1f}" stroke="{COLOR_GRID}"/>'
        )
        parts.append(
            f'<text x="{plot.left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">'
            f"{esc(_tick_label(v, step, percent))}</text>"
        )
    return parts


def _date_labels(plot: _TimePlot, last: int, y: int) -> list[str]:
    """The first, middle and last day under the plot (one day: in the middle)."""
    first, span = plot.first, plot.span
    tick_days = sorted({first, first + span // 2, last}) if span else [first]
    parts = []
    for day in tick_days:
        # The end labels hang inward so a date at the plot's edge is not clipped by the frame.
        anchor = "start" if span and day == first else "end" if span and day == last else "middle"
        parts.append(
            f'<text x="{plot.x(day):.1f}" y="{y}" text-anchor="{anchor}" class="axis">'
            f"{esc(date.fromordinal(day).isoformat())}</text>"
        )
    return parts


def _line_segments(plot: _TimePlot, points: Sequence[tuple[date, float | None]]) -> list[str]:
    """Consecutive known values form one segment; an unknown value breaks the line."""
    segment: list[str] = []
    segments: list[list[str]] = []
    for day, v in points:
        if v is None:
            if segment:
                segments.append(segment)
            segment = []
        else:
            segment.append(f"{plot.x(day.toordinal()):.1f},{plot.y(v):.1f}")
    if segment:
        segments.append(segment)
    return [
        f'<polyline fill="none" stroke="{COLOR_LINE}" stroke-width="2" points="{" ".join(seg)}"/>'
        for seg in segments
    ]


def _point_markers(
    plot: _TimePlot,
    points: Sequence[tuple[date, float | None]],
    percent: bool,
    volumes: Sequence[int] | None,
    volume_label: str,
) -> list[str]:
    """A dot on each known value, its tooltip the day, the value and the volume under it."""
    parts = []
    for i, (day, v) in enumerate(points):
        if v is not None:
            shown = pct(v) if percent else f"{v:g}"
            of = f" of {count(volumes[i])} {volume_label}" if volumes is not None else ""
            parts.append(
                f'<circle cx="{plot.x(day.toordinal()):.1f}" cy="{plot.y(v):.1f}" r="3" fill="{COLOR_LINE}">'
                f"<title>{esc(day.isoformat())}: {esc(shown)}{esc(of)}</title></circle>"
            )
    return parts


def _volume_band(
    points: Sequence[tuple[date, float | None]],
    volumes: Sequence[int],
    x_at: Callable[[int], float],
    x0: float,
    x1: float,
    y0: float,
    h: float,
    label: str,
) -> str:
    """Bars of `volumes` in the band from y0 to y0 + h, each under its point, on a round scale."""
    top = nice_ticks(max(volumes, default=0), intervals=2)[-1]
    ordinals = [d.toordinal() for d, _ in points]
    gaps = [b - a for a, b in zip(ordinals, ordinals[1:], strict=False) if b > a]
    span = ordinals[-1] - ordinals[0]
    slots = span / min(gaps) + 1 if gaps else 1
    bar_w = max(1.0, min(24.0, (x1 - x0) / slots * 0.8))
    parts = [
        f'<line x1="{x0}" x2="{x1}" y1="{y0 + h:.1f}" y2="{y0 + h:.1f}" stroke="{COLOR_GRID}"/>',
        f'<text x="{x0 - 6}" y="{y0 + 8:.1f}" text-anchor="end" class="axis volume-axis">{esc(count(int(top)))}</text>',
        f'<text x="{x0 + 4}" y="{y0 + 8:.1f}" class="axis volume-axis">{esc(label)} (bars)</text>',
    ]
    for i, ((day, _), n) in enumerate(zip(points, volumes, strict=True)):
        if not n:
            continue
        bar_h = h * n / top
        x = min(max(x_at(i) - bar_w / 2, x0), x1 - bar_w)
        parts.append(
            f'<rect class="volume" x="{x:.1f}" y="{y0 + h - bar_h:.1f}" width="{bar_w:.1f}" height="{bar_h:.1f}" '
            f'fill="{COLOR_VOLUME}"><title>{esc(day.isoformat())}: {esc(count(n))} {esc(label)}</title></rect>'
        )
    return "".join(parts)


# ---------------------------------------------------------------- bar chart


def bar_chart(bars: Sequence[Bar], title: str, *, percent: bool = True) -> str:
    """A horizontal SVG bar chart; a bar without a value shows its note instead."""
    row_h, label_w, width, top = 26, 170, 720, 30
    height = top + row_h * max(len(bars), 1) + 10
    value_w = width - label_w - 170
    parts = [_svg_open(width, height, title), f'<text x="0" y="18" class="chart-title">{esc(title)}</text>']
    if not bars:
        parts.append(
            f'<text x="{width / 2}" y="{top + 16}" text-anchor="middle" class="empty">No jobs yet</text></svg>'
        )
        return "".join(parts)
    known = [b.value for b in bars if b.value is not None]
    scale = (min(nice_ticks(max(known))[-1], 1.0) if percent else nice_ticks(max(known))[-1]) if known else 1.0
    for i, bar in enumerate(bars):
        y = top + i * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" class="label">{esc(bar.label)}</text>'
        )
        if bar.value is None:
            parts.append(f'<text x="{label_w}" y="{y + 17}" class="muted">{esc(bar.note or "n/a")}</text>')
            continue
        w = max(value_w * bar.value / scale, 1.0) if scale else 1.0
        shown = pct(bar.value) if percent else f"{bar.value:g}"
        parts.append(
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" fill="{COLOR_BAR}" rx="2">'
            f"<title>{esc(bar.label)}: {esc(shown)}</title></rect>"
        )
        parts.append(
            f'<text x="{label_w + w + 6:.1f}" y="{y + 17}" class="value">{esc(shown)}'
            f'<tspan class="muted"> {esc(bar.note)}</tspan></text>'
        )
    parts.append("</svg>")
    return "".join(parts)
