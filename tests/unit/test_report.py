"""The HTML report and the query formats, over a small warehouse with known answers."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

import duckdb
import pytest

from pipelines.models import refresh_models
from pipelines.query import format_rows, run_query
from pipelines.report import Bar, ReportError, bar_chart, duration, durations, line_chart, write_report
from tests.support.expected import waits_on
from tests.support.warehouse_fixture import Dataset, create_warehouse, insert_rows, sample_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Dataset]:
    db = tmp_path_factory.mktemp("wh") / "serving.duckdb"
    data = sample_dataset(now=datetime(2025, 6, 1, tzinfo=UTC))
    con = duckdb.connect(str(db))
    create_warehouse(con)
    data.load(con)
    refresh_models(con)
    con.close()
    return db, data


# ---------------------------------------------------------------- report


def test_report_is_a_self_contained_page_with_charts(built, tmp_path):
    db, data = built
    out = write_report(db, tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # Inline charts only: nothing fetched from the network, no scripts.
    assert "http" not in page and "<script" not in page
    titles = re.findall(r'<svg class="chart"[^>]*aria-label="([^"]+)"', page)
    assert titles == [
        "Failure rate by creation day (UTC)",
        "Failure rate by creation week (weeks start on Monday)",
        "Failure rate by tag",
        "Failure rate by language",
        "Failure rate by job type",
    ]
    live = data.live_jobs()
    failed = sum(j["state"] == "FAILED" for j in live)
    succeeded = sum(j["state"] == "SUCCEED" for j in live)
    assert f"{failed / (failed + succeeded) * 100:.1f}%" in page
    assert f">{len(live):,}<" in page
    # Every daily point with a finished job is drawn; the tag with nothing finished says so.
    daily_points = {(j["create_time"].date()) for j in live if j["state"] in ("SUCCEED", "FAILED")}
    day_chart = page.split('aria-label="Failure rate by creation day (UTC)"')[1].split("</svg>")[0]
    assert day_chart.count("<circle") == len(daily_points)
    assert "no finished jobs yet" in page and "LIVE" in page and "(not set)" in page
    assert "STORYTELLING" not in page, "deleted jobs are left out"
    assert "audio too noisy" in page
    # Each chart is well-formed markup on its own (a browser would drop a broken one silently).
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        root = ElementTree.fromstring(svg)
        assert root.tag == "svg" and len(root) > 2


def cards_of(page: str) -> dict[str, str]:
    return dict(re.findall(r'<div class="card"><div class="muted">([^<]+)</div><div class="n">([^<]+)</div>', page))


def test_report_shows_who_in_flight_jobs_wait_on(built, tmp_path):
    db, data = built
    page = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    live = data.live_jobs()
    sides = Counter(waits_on(j["state"]) for j in live)
    assert sides["user"] and sides["service"]
    cards = cards_of(page)
    assert cards["In progress"] == f"{sides['service']:,}"
    assert cards["Waiting on the user"] == f"{sides['user']:,}"
    # The backlog by age: one table per side, each state under the side it waits on.
    section = page.split("<h2>Jobs still in flight, by age</h2>")[1]
    service, user = section.split("<h3>")[1:3]
    assert service.startswith("In progress") and user.startswith("Waiting on the user")

    def states(part: str) -> set[str]:
        return set(re.findall(r"<tr><td>([^<]+)</td>", part))

    assert states(service) == {j["state"] for j in live if waits_on(j["state"]) == "service"}
    assert states(user) == {j["state"] for j in live if waits_on(j["state"]) == "user"}
    # A group with nothing finished says how many jobs wait on whom.
    live_tag = Counter(waits_on(j["state"]) for j in live if j.get("tag") == "LIVE")
    assert (f"no finished jobs yet ({live_tag['service']:,} in progress, "
            f"{live_tag['user']:,} waiting on the user)") in page


def test_report_refuses_a_database_without_models(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    create_warehouse(con)
    con.close()
    with pytest.raises(ReportError, match="build the analytics models first"):
        write_report(db, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing.duckdb", tmp_path / "report.html")


def test_report_refuses_models_built_without_the_macros(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    create_warehouse(con)
    refresh_models(con)
    con.execute("DROP MACRO analytics.failure_rate")  # as built before the rules were macros
    con.close()
    with pytest.raises(ReportError, match="rebuild the analytics models"):
        write_report(db, tmp_path / "report.html")


def test_report_of_an_empty_warehouse(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    create_warehouse(con)
    refresh_models(con)
    con.close()
    page = write_report(db, tmp_path / "report.html").read_text()
    assert "No finished jobs yet" in page and "no jobs yet" in page


def test_report_escapes_source_text(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    create_warehouse(con)
    t = datetime(2025, 3, 3, tzinfo=UTC)
    insert_rows(con, "main.voice_training_jobs", [
        {"project_id": "p", "job_id": "1", "state": "FAILED", "tag": "<b>x</b>", "job_failed_code": "E&1",
         "job_failed_reason": "<script>alert(1)</script>", "create_time": t, "lastupdate_time": t},
    ])  # fmt: skip
    refresh_models(con)
    con.close()
    page = write_report(db, tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_chart_helpers():
    chart = line_chart([(date(2025, 3, 1), 0.5), (date(2025, 3, 2), None), (date(2025, 3, 11), 0.25)], "t")
    assert chart.count("<polyline") == 2, "an unknown value breaks the line"
    assert "2025-03-06" in chart, "the middle tick is the middle date, not the middle point"
    bars = bar_chart([Bar("A", 0.5, "of 2 finished"), Bar("B", None, "no finished jobs yet")], "b")
    assert bars.count("<rect") == 1 and "50.0%" in bars and "no finished jobs yet" in bars
    assert [duration(s) for s in (30, 600, 7200, 3 * 86400)] == ["30 s", "10 min", "2.0 h", "3.0 days"]


# ---------------------------------------------------------------- report: axes, volume, units, fonts, source

NICE_MANTISSAS = (1.0, 2.0, 2.5, 5.0)


def y_ticks(svg: str) -> list[float]:
    """The percent labels of a chart's value axis, as numbers."""
    return [float(v) for v in re.findall(r'text-anchor="end" class="axis[^"]*">(-?[\d.]+)%</text>', svg)]


def assert_nice(ticks: list[float], top: float) -> None:
    assert len(ticks) >= 3 and ticks[0] == 0 and ticks[-1] >= top * 100 - 1e-9, ticks
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m, rel_tol=1e-9) for m in NICE_MANTISSAS), (step, ticks)
    assert all(math.isclose(t, k * step, abs_tol=1e-9) for k, t in enumerate(ticks)), ticks


@pytest.mark.parametrize("top", [0.5, 0.31, 0.07, 0.0123, 0.96, 1.0])
def test_axis_ticks_are_round_numbers(top):
    points = [(date(2025, 3, 1), 0.0), (date(2025, 3, 5), top / 3), (date(2025, 3, 9), top)]
    assert_nice(y_ticks(line_chart(points, "t")), top)


def test_daily_chart_shows_how_many_jobs_each_point_rests_on(built, tmp_path):
    db, data = built
    page = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    day_chart = page.split('aria-label="Failure rate by creation day (UTC)"')[1].split("</svg>")[0]
    finished = Counter(j["create_time"].astimezone(UTC).date() for j in data.live_jobs()
                       if j["state"] in ("SUCCEED", "FAILED"))
    bars = re.findall(r'<rect class="volume"[^>]*><title>(\d{4}-\d\d-\d\d): ([\d,]+) finished', day_chart)
    assert {date.fromisoformat(d): int(n.replace(",", "")) for d, n in bars} == finished
    caption = page.split('aria-label="Failure rate by creation day (UTC)"')[1].split("</figure>")[0]
    assert "<figcaption>" in caption and "bars" in caption and "finished" in caption
    assert_nice(y_ticks(day_chart), 0)


def test_durations_share_one_unit_per_column(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    create_warehouse(con)
    t = datetime(2025, 3, 3, tzinfo=UTC)
    took = {"BASIC": [600, 900], "MIDDLE": [5 * 3600, 20 * 3600], "ADVANCE": [3 * 86400, 9 * 86400]}
    insert_rows(con, "main.voice_training_jobs", [
        {"project_id": "p", "job_id": f"{kind}-{i}", "job_type": kind, "state": "SUCCEED",
         "create_time": t, "lastupdate_time": t + timedelta(seconds=seconds)}
        for kind, times in took.items() for i, seconds in enumerate(times)
    ])  # fmt: skip
    refresh_models(con)
    con.close()
    page = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    section = page.split("<h2>How long jobs take</h2>")[1].split("<h2>")[0]
    rows = [re.findall(r"<td>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", section)[1:]]
    assert len(rows) == 3
    for column in (2, 3, 4):  # median, 90th and 99th percentile
        units = {row[column].split()[-1] for row in rows}
        assert units == {"days"}, [row[column] for row in rows]
    assert {row[0]: row[2] for row in rows}["MIDDLE"] == "0.5 days"


def test_durations_helper_picks_the_unit_of_the_largest_value():
    assert durations([30, 600, None, 3 * 86400]) == ["<0.1 days", "<0.1 days", "n/a", "3.0 days"]
    assert durations([30, 1800]) == ["<1 min", "30 min"]
    assert durations([None]) == ["n/a"]


def test_report_names_fonts_that_hold_chinese(built, tmp_path):
    db, _ = built
    page = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    css = page.split("<style>")[1].split("</style>")[0]
    stacks = re.findall(r"font-family:\s*([^;}]+)", css)
    body = next(s for s in stacks if "system-ui" in s)
    assert re.search(r"Noto Sans CJK|Source Han Sans|PingFang|Microsoft YaHei", body), body
    assert body.strip().endswith("sans-serif")
    # Chart text too, also when an SVG is copied out of the page on its own.
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        assert "Noto Sans CJK SC" in html.unescape(ElementTree.fromstring(svg).get("font-family", ""))


@pytest.mark.parametrize(("source", "banner"), [
    (None, False),
    ({"origin": "embedded-simulator", "simulated": True}, True),
    ({"origin": "https://metastudio.cn-north-4.myhuaweicloud.com", "simulated": False}, False),
    ("not json", False),
])  # fmt: skip
def test_simulated_data_is_said_in_the_header(tmp_path, source, banner):
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    create_warehouse(con)
    if source is not None:
        con.execute("CREATE TABLE warehouse_meta (key VARCHAR, value VARCHAR, updated_at TIMESTAMPTZ)")
        value = source if isinstance(source, str) else json.dumps(source)
        con.execute("INSERT INTO warehouse_meta VALUES ('source', ?, now())", [value])
    refresh_models(con)
    con.close()
    page = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    header = page.split("<h2>")[0]
    assert ("simulated data" in header.lower()) is banner
    assert ('class="banner"' in header) is banner
    assert "myhuaweicloud" not in page


# ---------------------------------------------------------------- query


def test_query_table_format_uses_analytics_first(built):
    db, data = built
    text = run_query(
        db, "select tag, total_jobs, failure_rate from failure_rate_by_tag order by tag nulls last"
    )
    lines = text.splitlines()
    assert lines[0].split() == ["tag", "total_jobs", "failure_rate"]
    assert set(lines[1]) == {"-", " "}
    assert lines[-1] == f"({len(lines) - 3} rows)"
    assert lines[-2].startswith("NULL") and "LIVE" in text
    # Numbers align right: each total_jobs value ends where its header ends.
    end = lines[0].index("total_jobs") + len("total_jobs")
    for line in lines[2:-1]:
        assert line[end - 1].isdigit() and line[end] == " ", line
    # Unqualified names resolve to analytics (deleted jobs left out), then to main.
    live = run_query(db, "select count(*) as n from voice_training_jobs", "json")
    assert json.loads(live) == [{"n": len(data.live_jobs())}]
    runs = run_query(db, "select run_id from sync_runs", "json")
    assert json.loads(runs) == [{"run_id": "run-1"}]


def test_query_csv_and_json(built):
    db, _ = built
    sql = "select tag, failure_rate, total_jobs from failure_rate_by_tag order by tag nulls last"
    rows = list(csv.reader(io.StringIO(run_query(db, sql, "csv"))))
    assert rows[0] == ["tag", "failure_rate", "total_jobs"]
    assert rows[-1][0] == "" and any(r[0] == "LIVE" and r[1] == "" for r in rows[1:])
    records = json.loads(run_query(db, sql, "json"))
    assert records[-1]["tag"] is None and {r["tag"]: r["failure_rate"] for r in records}["LIVE"] is None
    assert all(isinstance(r["total_jobs"], int) for r in records)
    stamped = json.loads(run_query(db, "select last_seen from top_failure_codes limit 1", "json"))
    assert datetime.fromisoformat(stamped[0]["last_seen"]).tzinfo is not None


def test_query_is_read_only_and_binds_parameters(built):
    db, _ = built
    with pytest.raises(duckdb.Error):
        run_query(db, "delete from main.voice_training_jobs")
    text = run_query(
        db, "select count(*) as n from voice_training_jobs where tag = ?", "csv", params=["LIVE"]
    )
    assert text.splitlines()[0] == "n" and int(text.splitlines()[1]) > 0
    with pytest.raises(ValueError, match="unknown format"):
        run_query(db, "select 1", "xml")


def test_table_aligns_wide_characters():
    text = format_rows(["reason", "n"], [("训练音频", 1), ("abc", 22)], "table")
    lines = text.splitlines()
    # "训练音频" takes eight terminal columns, so both numbers end at the same column.
    assert lines[2] == "训练音频   1" and lines[3] == "abc       22"


def test_format_rows_cells():
    text = format_rows(["a", "b"], [("x", 1234567.891), (None, 0.000123456), ("z|w", None)], "table")
    assert "1234568" in text and "0.000123" in text and "NULL" in text and "e+" not in text
    md = format_rows(["a"], [("z|w",)], "markdown")
    assert md.splitlines() == ["| a |", "|---|", "| z\\|w |"]
