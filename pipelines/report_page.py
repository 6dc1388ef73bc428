"""The report's page: what it says, in which order, around the numbers pipelines.report reads.

:func:`page` turns a :class:`ReportData` into one self-contained HTML document: inline CSS,
the headline cards, then a section per question (failure rate over time, by group, why jobs
fail, how long they take, what is still in flight).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from pipelines.report_charts import COLOR_GRID, COLOR_TEXT, FONT_STACK, Bar, bar_chart, line_chart
from pipelines.report_format import count, duration, durations, esc, pct

BUCKET_ORDER = ("<1h", "1h-1d", "1-7d", "7-30d", ">30d")
NONE_LABEL = "(not set)"
# in_flight_backlog.waits_on: who must act on a job still in flight (analytics.waits_on).
SIDES = {
    "service": "In progress: the service is working on them",
    "user": "Waiting on the user: rejected, failed a check or under the user's review",
}
#: The groups a failure-rate bar chart is drawn for: column of analytics.failure_rate_by_<column>, title.
GROUP_CHARTS = {
    "tag": "Failure rate by tag",
    "language": "Failure rate by language",
    "job_type": "Failure rate by job type",
}

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

RateSeries = tuple[list[tuple[date, float | None]], list[int]]


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, as read from the analytics schema (see pipelines.report).

    headlines: one row of analytics.job_outcomes totals by column name (total, succeeded,
        failed, in_flight, in_progress_by_service, waiting_on_user, failure_rate, p50, as_of).
    daily, weekly: (period, failure rate) points and the finished jobs under each.
    group_rates: for each column of GROUP_CHARTS, (group, failure rate, finished jobs, in
        progress by the service, waiting on the user) rows, in the order the bars are drawn.
    failure_codes: (code, most common reason, jobs, share of failures, last seen) rows.
    finish_times: (job type, finished jobs, p50, p90, p99 seconds) rows.
    backlog: (waits_on, state, age bucket, jobs) rows.
    simulated: the warehouse was filled from the embedded simulator.
    """

    headlines: dict[str, Any]
    daily: RateSeries
    weekly: RateSeries
    group_rates: dict[str, list[tuple]]
    failure_codes: list[tuple]
    finish_times: list[tuple]
    backlog: list[tuple]
    simulated: bool


def page(data: ReportData, generated_at: datetime) -> str:
    """The whole HTML document."""
    as_of_time = data.headlines["as_of"]
    as_of = as_of_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if as_of_time else "no jobs yet"
    suffix = " (simulated data)" if data.simulated else ""
    banner = (
        '<div class="banner" role="note"><strong>Simulated data.</strong> This warehouse was filled '
        "from the embedded MetaStudio simulator, not from a MetaStudio account: no number on this "
        "page describes real jobs.</div>"
        if data.simulated
        else ""
    )
    sections = [
        *_rate_sections(data),
        *_group_sections(data),
        *_failure_code_section(data.failure_codes),
        *_finish_section(data.finish_times),
        *_backlog_section(data.backlog, as_of),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Voice-training jobs report{suffix}</title><style>{CSS}</style></head><body>"
        f"<h1>Voice-training jobs{suffix}</h1>{banner}"
        f'<p class="sub">Data as of {esc(as_of)} &middot; generated {esc(generated_at.strftime("%Y-%m-%d %H:%M UTC"))}</p>'
        f'<div class="cards">{_cards(data.headlines)}</div>' + "".join(sections) + "</body></html>\n"
    )


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return '<p class="muted">Nothing to show.</p>'
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cards(h: dict[str, Any]) -> str:
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
    return "".join(
        f'<div class="card"><div class="muted">{esc(t)}</div><div class="n">{esc(v)}</div>'
        f'<div class="muted">{esc(note)}</div></div>'
        for t, v, note in cards
    )


def _rate_sections(data: ReportData) -> list[str]:
    return [
        "<h2>Failure rate over time</h2>",
        "<p>Out of the jobs created on each day (or week) that have finished, the share that failed. "
        "Jobs still in progress are not counted until they finish, so recent points can move.</p>",
        _rate_figure(data.daily, "Failure rate by creation day (UTC)", "day"),
        _rate_figure(data.weekly, "Failure rate by creation week (weeks start on Monday)", "week"),
    ]


def _rate_figure(series: RateSeries, title: str, period: str) -> str:
    points, finished = series
    return (
        f"<figure>{line_chart(points, title, volumes=finished)}<figcaption>The line is the failure rate of "
        f"the jobs created that {period} that have finished; the grey bars under it count those finished "
        "jobs, the number each point rests on. A point over a handful of jobs can swing far either way: "
        "read it with its bar.</figcaption></figure>"
    )


def _group_sections(data: ReportData) -> list[str]:
    return [
        "<h2>Failure rate by tag and language</h2>",
        "<p>Each bar is the share of finished jobs that failed. Jobs without a tag or language are "
        f"grouped as {esc(NONE_LABEL)}.</p>",
        *[bar_chart(_group_bars(data.group_rates[column]), title) for column, title in GROUP_CHARTS.items()],
    ]


def _group_bars(rows: Sequence[tuple]) -> list[Bar]:
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


def _failure_code_section(codes: Sequence[tuple]) -> list[str]:
    rows = [
        (c, r, count(n), pct(s), ls.astimezone(UTC).strftime("%Y-%m-%d") if ls else "")
        for c, r, n, s, ls in codes
    ]
    return [
        "<h2>Why jobs fail</h2>",
        html_table(["Failure code", "Most common reason", "Jobs", "Share of failures", "Last seen"], rows),
    ]


def _finish_section(finish: Sequence[tuple]) -> list[str]:
    # One unit per column (the one its largest value reads best in), so rows compare at a glance.
    columns = [durations([row[k] for row in finish]) for k in (2, 3, 4)]
    rows = [(t, count(n), *[column[i] for column in columns]) for i, (t, n, *_) in enumerate(finish)]
    return [
        "<h2>How long jobs take</h2>",
        "<p>Time from creation to success or failure, for finished jobs. Half the jobs finish within "
        "the median; nine in ten within the 90th percentile.</p>",
        html_table(["Job type", "Finished jobs", "Median", "90th percentile", "99th percentile"], rows),
    ]


def _backlog_section(backlog: Sequence[tuple], as_of: str) -> list[str]:
    buckets = [*BUCKET_ORDER, None] if any(b is None for *_, b, _ in backlog) else list(BUCKET_ORDER)
    tables = {side: _backlog_table([r[1:] for r in backlog if r[0] == side], buckets) for side in SIDES}
    return [
        "<h2>Jobs still in flight, by age</h2>",
        f"<p>Age is measured against the newest update the source reported ({esc(as_of)}). "
        "Jobs the service is working on and jobs waiting on the user are shown apart: only the "
        "customer can move the second kind.</p>",
        *[part for side, heading in SIDES.items() for part in (f"<h3>{esc(heading)}</h3>", tables[side])],
    ]


def _backlog_table(rows: Sequence[tuple], buckets: Sequence[str | None]) -> str:
    """(state, age_bucket, jobs) rows as a table: a row per state, a column per age bucket."""
    states = sorted({s for s, _, _ in rows}, key=lambda s: (s is None, s or ""))
    cells = {(s, b): n for s, b, n in rows}
    return html_table(
        ["State", *[b or "unknown" for b in buckets]],
        [(NONE_LABEL if s is None else s, *[count(cells.get((s, b), 0)) for b in buckets]) for s in states],
    )
