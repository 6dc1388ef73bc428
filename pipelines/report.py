"""A self-contained HTML report of the analytics tables, for people who never open SQL.

One file, no network: the charts are inline SVG drawn here, the styles are inline CSS.
It reads the `analytics` schema (built by pipelines.models) of a warehouse or serving
snapshot, read-only.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from pipelines.query import open_analyst_connection

REQUIRED_TABLES = (
    "job_outcomes",
    "daily_job_stats",
    "weekly_job_stats",
    "failure_rate_by_tag",
    "failure_rate_by_language",
    "failure_rate_by_job_type",
    "time_to_finish_by_job_type",
    "top_failure_codes",
    "in_flight_backlog",
)
# Macros of sql/_macros.sql the report's SQL calls (the business rules, defined there once).
REQUIRED_MACROS = ("failure_rate",)
BUCKET_ORDER = ("<1h", "1h-1d", "1-7d", "7-30d", ">30d")
NONE_LABEL = "(not set)"
# in_flight_backlog.waits_on: who must act on a job still in flight (analytics.waits_on).
SIDES = {
    "service": "In progress: the service is working on them",
    "user": "Waiting on the user: rejected, failed a check or under the user's review",
}

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
# Duration units, smallest first: (seconds in one, name, decimals shown). A duration reads in
# the largest unit it holds one and a half of: 90 s is 1.5 min, 36 h is 1.5 days.
DURATION_UNITS = ((1, "s", 0), (60, "min", 0), (3600, "h", 1), (86400, "days", 1))
SIMULATOR_ORIGIN = "embedded-simulator"  # warehouse_meta 'source' of a warehouse the simulator filled


class ReportError(RuntimeError):
    """The database lacks what the report needs."""


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None  # None: nothing to show (e.g. no finished job), drawn as a note
    note: str = ""


# ---------------------------------------------------------------- formatting


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def duration_unit(seconds: float) -> tuple[int, str, int]:
    """The unit `seconds` reads best in: s under 90 s, min under 90 min, h under 36 h, else days."""
    for unit, (next_size, _, _) in zip(DURATION_UNITS, DURATION_UNITS[1:], strict=False):
        if seconds < 1.5 * next_size:
            return unit
    return DURATION_UNITS[-1]


def duration(seconds: float | None, unit: tuple[int, str, int] | None = None) -> str:
    """Seconds as a short human duration (45 s, 12 min, 3.5 h, 2.1 days), in `unit` if given.

    A positive duration too small to show in the unit reads "<1 min", "<0.1 days".
    """
    if seconds is None:
        return "n/a"
    size, name, digits = unit or duration_unit(seconds)
    text = f"{seconds / size:.{digits}f}"
    if seconds > 0 and float(text) == 0:
        return f"<{10**-digits:g} {name}"
    return f"{text} {name}"


def durations(values: Sequence[float | None]) -> list[str]:
    """A column of durations in one unit, the one its largest value reads best in."""
    known = [v for v in values if v is not None]
    unit = duration_unit(max(known)) if known else None
    return [duration(v, unit) for v in values]


def count(n: int | None) -> str:
    return "0" if n is None else f"{n:,}"


# ---------------------------------------------------------------- charts


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
    plot_w = width - left - right
    values = [v for _, v in points if v is not None]
    parts = [_svg_open(width, height, title), f'<text x="{left}" y="18" class="chart-title">{esc(title)}</text>']
    if not values:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">'
                     "No finished jobs yet</text></svg>")  # fmt: skip
        return "".join(parts)
    ticks = nice_ticks(max(values))
    y_max, step = ticks[-1], ticks[1] - ticks[0]

    first, last = points[0][0].toordinal(), points[-1][0].toordinal()
    span = last - first

    def x_at(i: int) -> float:
        # Position by date, not by index, so days without jobs keep their width.
        return left + (plot_w * (points[i][0].toordinal() - first) / span if span else plot_w / 2)

    def y_at(v: float) -> float:
        return top + plot_h - plot_h * (v / y_max)

    for v in ticks:
        y = y_at(v)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{COLOR_GRID}"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">'
            f"{esc(_tick_label(v, step, percent))}</text>"
        )
    if volumes is not None:
        parts.append(_volume_band(points, volumes, x_at, left, width - right, top + plot_h + band_gap, band_h,
                                  volume_label))  # fmt: skip
    tick_days = sorted({first, first + span // 2, last}) if span else [first]
    for day in tick_days:
        x = left + (plot_w * (day - first) / span if span else plot_w / 2)
        # The end labels hang inward so a date at the plot's edge is not clipped by the frame.
        anchor = "start" if span and day == first else "end" if span and day == last else "middle"
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 18}" text-anchor="{anchor}" class="axis">'
            f"{esc(date.fromordinal(day).isoformat())}</text>"
        )
    # Consecutive known values form one segment; an unknown value breaks the line.
    segment: list[str] = []
    segments: list[list[str]] = []
    for i, (_, v) in enumerate(points):
        if v is None:
            if segment:
                segments.append(segment)
            segment = []
        else:
            segment.append(f"{x_at(i):.1f},{y_at(v):.1f}")
    if segment:
        segments.append(segment)
    for seg in segments:
        parts.append(
            f'<polyline fill="none" stroke="{COLOR_LINE}" stroke-width="2" points="{" ".join(seg)}"/>'
        )
    for i, (label, v) in enumerate(points):
        if v is not None:
            shown = pct(v) if percent else f"{v:g}"
            of = f" of {count(volumes[i])} {volume_label}" if volumes is not None else ""
            parts.append(
                f'<circle cx="{x_at(i):.1f}" cy="{y_at(v):.1f}" r="3" fill="{COLOR_LINE}">'
                f"<title>{esc(label.isoformat())}: {esc(shown)}{esc(of)}</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _volume_band(points, volumes, x_at, x0: float, x1: float, y0: float, h: float, label: str) -> str:
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


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return '<p class="muted">Nothing to show.</p>'
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------- data


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def _rate_over_time(
    con: duckdb.DuckDBPyConnection, table: str, column: str
) -> tuple[list[tuple[date, float | None]], list[int]]:
    """(period, failure rate) over all projects, and how many of the period's jobs have finished."""
    rows = _fetch(
        con,
        f"""SELECT {column}, analytics.failure_rate(sum(failed), sum(succeeded)), sum(succeeded + failed)
            FROM analytics.{table} WHERE {column} IS NOT NULL GROUP BY {column} ORDER BY {column}""",
    )
    return [(d, r) for d, r, _ in rows], [int(n) for _, _, n in rows]


def _source(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """What warehouse_meta says the data came from ({} when it does not say, or says it unreadably)."""
    try:
        row = con.execute(
            """SELECT value FROM main.warehouse_meta WHERE key = 'source' LIMIT 1"""
        ).fetchone()
        found = json.loads(row[0]) if row and row[0] else {}
    except (duckdb.Error, ValueError, TypeError):
        # A warehouse written before sources were recorded has no such table or key.
        return {}
    return found if isinstance(found, dict) else {}


def _is_simulated(source: dict[str, Any]) -> bool:
    return source.get("simulated") is True or source.get("origin") == SIMULATOR_ORIGIN


def _group_bars(con: duckdb.DuckDBPyConnection, column: str) -> list[Bar]:
    rows = _fetch(
        con,
        f"""SELECT {column}, failure_rate, succeeded + failed, in_progress_by_service, waiting_on_user
            FROM analytics.failure_rate_by_{column}
            ORDER BY failure_rate DESC NULLS LAST, total_jobs DESC, {column} NULLS LAST""",
    )
    bars = []
    for group, rate, finished, by_service, on_user in rows:
        label = NONE_LABEL if group is None else str(group)
        if rate is None:
            bars.append(Bar(
                label, None,
                f"no finished jobs yet ({count(by_service)} in progress, {count(on_user)} waiting on the user)",
            ))  # fmt: skip
        else:
            bars.append(Bar(label, rate, f"of {count(finished)} finished"))
    return bars


def _backlog_table(rows: Sequence[tuple], buckets: Sequence[str | None]) -> str:
    """(state, age_bucket, jobs) rows as a table: a row per state, a column per age bucket."""
    states = sorted({s for s, _, _ in rows}, key=lambda s: (s is None, s or ""))
    cells = {(s, b): n for s, b, n in rows}
    return html_table(
        ["State", *[b or "unknown" for b in buckets]],
        [(NONE_LABEL if s is None else s, *[count(cells.get((s, b), 0)) for b in buckets]) for s in states],
    )


def _headlines(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    row = con.execute(
        """SELECT count(*) AS total,
                  count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,
                  count(*) FILTER (WHERE outcome = 'failed') AS failed,
                  count(*) FILTER (WHERE outcome = 'in_progress') AS in_flight,
                  count(*) FILTER (WHERE in_progress_by_service) AS in_progress_by_service,
                  count(*) FILTER (WHERE waiting_on_user) AS waiting_on_user,
                  analytics.failure_rate(failed, succeeded) AS failure_rate,
                  quantile_cont(finish_seconds, 0.5) AS p50,
                  max(lastupdate_time) AS as_of
           FROM analytics.job_outcomes"""
    )
    names = [d[0] for d in row.description]
    return dict(zip(names, row.fetchone(), strict=True))


# ---------------------------------------------------------------- page

CSS = f"""
body {{ font-family: {FONT_STACK}; color: {COLOR_TEXT};
       max-width: 960px; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }}
h1 {{ margin-bottom: .2rem; }} h2 {{ margin-top: 2.2rem; border-bottom: 1px solid {COLOR_GRID}; }}
.sub, .muted {{ color: #6b7280; fill: #6b7280; }}
.cards {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: .8rem; }}
.card {{ border: 1px solid {COLOR_GRID}; border-radius: 8px; padding: .7rem .9rem; }}
.card .n {{ font-size: 1.6rem; font-weight: 600; }}
.chart {{ width: 100%; height: auto; margin: .6rem 0; }}
.chart text {{ font-family: {FONT_STACK}; font-size: 12px; fill: {COLOR_TEXT}; }}
.chart .volume-axis {{ fill: #6b7280; font-size: 11px; }}
figure {{ margin: .6rem 0 1.2rem; }} figcaption {{ color: #6b7280; font-size: .9rem; }}
.banner {{ background: #fef3c7; border: 2px solid #d97706; color: #78350f; border-radius: 8px;
          padding: .7rem 1rem; margin: .8rem 0; font-size: 1.05rem; }}
.chart .chart-title {{ font-size: 14px; font-weight: 600; }}
.chart .empty {{ fill: #6b7280; font-size: 14px; }}
table {{ border-collapse: collapse; width: 100%; font-size: .9rem; }}
th, td {{ border-bottom: 1px solid {COLOR_GRID}; padding: .3rem .5rem; text-align: left; }}
"""


def _rate_figure(series: tuple[list[tuple[date, float | None]], list[int]], title: str, period: str) -> str:
    points, finished = series
    return (
        f"<figure>{line_chart(points, title, volumes=finished)}<figcaption>The line is the failure rate of "
        f"the jobs created that {period} that have finished; the grey bars under it count those finished "
        "jobs, the number each point rests on. A point over a handful of jobs can swing far either way: "
        "read it with its bar.</figcaption></figure>"
    )


def render(con: duckdb.DuckDBPyConnection, generated_at: datetime | None = None) -> str:
    """The report page for the analytics schema reachable through `con`."""
    present = {
        r[0] for r in _fetch(con, "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'analytics'")
    }
    present |= {
        r[0] for r in _fetch(con, "SELECT view_name FROM duckdb_views() WHERE schema_name = 'analytics'")
    }
    missing = [t for t in REQUIRED_TABLES if t not in present]
    if missing:
        raise ReportError(f"analytics tables missing: {', '.join(missing)}; build the analytics models first")
    macros = {
        r[0] for r in _fetch(con, "SELECT function_name FROM duckdb_functions() WHERE schema_name = 'analytics'")
    }
    missing = [m for m in REQUIRED_MACROS if m not in macros]
    if missing:
        raise ReportError(
            f"analytics macros missing: {', '.join(missing)}; the models were built by an older version, "
            "rebuild the analytics models"
        )
    generated_at = generated_at or datetime.now(UTC)
    h = _headlines(con)
    as_of = h["as_of"].astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if h["as_of"] else "no jobs yet"
    cards = [
        ("Jobs", count(h["total"]), "known to the warehouse, deleted jobs left out"),
        ("Succeeded", count(h["succeeded"]), "state SUCCEED"),
        ("Failed", count(h["failed"]), "state FAILED"),
        ("Failure rate", pct(h["failure_rate"]), "failed out of finished jobs"),
        # "In flight" in two: jobs the service is moving, and jobs only the customer can move.
        ("In progress", count(h["in_progress_by_service"]), "not finished, the service is working on them"),
        ("Waiting on the user", count(h["waiting_on_user"]), "rejected, failed a check or under the user's review"),
        ("Median time to finish", duration(h["p50"]), "creation to success or failure"),
    ]
    card_html = "".join(
        f'<div class="card"><div class="muted">{esc(t)}</div><div class="n">{esc(v)}</div>'
        f'<div class="muted">{esc(note)}</div></div>'
        for t, v, note in cards
    )
    daily = _rate_over_time(con, "daily_job_stats", "day")
    weekly = _rate_over_time(con, "weekly_job_stats", "week_start")
    codes = _fetch(
        con,
        """SELECT coalesce(job_failed_code, '(no code)'), coalesce(most_common_reason, ''), jobs,
                  share_of_failures, last_seen
           FROM analytics.top_failure_codes ORDER BY jobs DESC, job_failed_code NULLS LAST LIMIT 15""",
    )
    code_rows = [
        (c, r, count(n), pct(s), ls.astimezone(UTC).strftime("%Y-%m-%d") if ls else "")
        for c, r, n, s, ls in codes
    ]
    finish = _fetch(
        con,
        """SELECT coalesce(job_type, '(not set)'), finished_jobs, p50_finish_seconds, p90_finish_seconds,
                  p99_finish_seconds
           FROM analytics.time_to_finish_by_job_type ORDER BY finished_jobs DESC, job_type NULLS LAST""",
    )
    # One unit per column (the one its largest value reads best in), so rows compare at a glance.
    finish_columns = [durations([row[k] for row in finish]) for k in (2, 3, 4)]
    finish_rows = [
        (t, count(n), *[column[i] for column in finish_columns]) for i, (t, n, *_) in enumerate(finish)
    ]
    backlog = _fetch(con, "SELECT waits_on, state, age_bucket, jobs FROM analytics.in_flight_backlog")
    buckets = [*BUCKET_ORDER, None] if any(b is None for *_, b, _ in backlog) else list(BUCKET_ORDER)
    backlog_tables = {side: _backlog_table([r[1:] for r in backlog if r[0] == side], buckets) for side in SIDES}
    sections = [
        "<h2>Failure rate over time</h2>",
        "<p>Out of the jobs created on each day (or week) that have finished, the share that failed. "
        "Jobs still in progress are not counted until they finish, so recent points can move.</p>",
        _rate_figure(daily, "Failure rate by creation day (UTC)", "day"),
        _rate_figure(weekly, "Failure rate by creation week (weeks start on Monday)", "week"),
        "<h2>Failure rate by tag and language</h2>",
        "<p>Each bar is the share of finished jobs that failed. Jobs without a tag or language are "
        f"grouped as {esc(NONE_LABEL)}.</p>",
        bar_chart(_group_bars(con, "tag"), "Failure rate by tag"),
        bar_chart(_group_bars(con, "language"), "Failure rate by language"),
        bar_chart(_group_bars(con, "job_type"), "Failure rate by job type"),
        "<h2>Why jobs fail</h2>",
        html_table(
            ["Failure code", "Most common reason", "Jobs", "Share of failures", "Last seen"], code_rows
        ),
        "<h2>How long jobs take</h2>",
        "<p>Time from creation to success or failure, for finished jobs. Half the jobs finish within "
        "the median; nine in ten within the 90th percentile.</p>",
        html_table(
            ["Job type", "Finished jobs", "Median", "90th percentile", "99th percentile"], finish_rows
        ),
        "<h2>Jobs still in flight, by age</h2>",
        f"<p>Age is measured against the newest update the source reported ({esc(as_of)}). "
        "Jobs the service is working on and jobs waiting on the user are shown apart: only the "
        "customer can move the second kind.</p>",
        *[part for side, heading in SIDES.items() for part in (f"<h3>{esc(heading)}</h3>", backlog_tables[side])],
    ]
    simulated = _is_simulated(_source(con))
    suffix = " (simulated data)" if simulated else ""
    banner = (
        '<div class="banner" role="note"><strong>Simulated data.</strong> This warehouse was filled '
        "from the embedded MetaStudio simulator, not from a MetaStudio account: no number on this "
        "page describes real jobs.</div>"
        if simulated
        else ""
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Voice-training jobs report{suffix}</title><style>{CSS}</style></head><body>"
        f"<h1>Voice-training jobs{suffix}</h1>{banner}"
        f'<p class="sub">Data as of {esc(as_of)} &middot; generated {esc(generated_at.strftime("%Y-%m-%d %H:%M UTC"))}</p>'
        f'<div class="cards">{card_html}</div>' + "".join(sections) + "</body></html>\n"
    )


def write_report(db_path: str | Path, out_path: str | Path) -> Path:
    """Write the HTML report for the database at `db_path` to `out_path`; return the path written.

    The database is opened with pipelines.query.open_analyst_connection (read-only, no file
    access, settings locked); its analytics models must have been built. The file
    is written beside its target and renamed into place, so a reader never sees half a page.
    """
    # The sandbox every connection serving outside readers uses (read-only, no file access,
    # settings locked): the report reads the same relations an analyst may.
    con = open_analyst_connection(db_path)
    try:
        page = render(con)
    finally:
        con.close()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
