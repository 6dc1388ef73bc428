"""An independent computation of every analytics aggregate: the oracle for the SQL models.

Plain Python over the rows of a :class:`~tests.support.warehouse_fixture.Dataset` (the sample
warehouse, or the simulator's truth), sharing no code with ``pipelines/models``: the tests
compare two implementations. ``table()`` reads a model's rows back; ``assert_keyed_rows_equal()``
compares them, floats to a relative 1e-9.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import pytest

from tests.support.expected import waits_on
from tests.support.warehouse_fixture import Dataset

TERMINAL = ("SUCCEED", "FAILED")


def quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (what quantile_cont computes)."""
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rate(failed: int, succeeded: int) -> float | None:
    return failed / (succeeded + failed) if succeeded + failed else None


def finish_seconds(data: Dataset) -> dict[tuple[str, str], float]:
    """Seconds from creation to the first terminal history version, else to lastupdate_time."""
    first_terminal: dict[tuple[str, str], datetime] = {}
    for h in data.history:
        if h["state"] in TERMINAL:
            key = (h["project_id"], h["job_id"])
            first_terminal[key] = min(first_terminal.get(key, h["valid_from"]), h["valid_from"])
    out = {}
    for j in data.live_jobs():
        if j["state"] in TERMINAL:
            key = (j["project_id"], j["job_id"])
            end = first_terminal.get(key, j["lastupdate_time"])
            out[key] = (end - j["create_time"]).total_seconds()
    return out


def expected_failure_rate_by(data: Dataset, column: str) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, Counter] = defaultdict(Counter)
    for j in data.live_jobs():
        c = groups[j.get(column)]
        c["total_jobs"] += 1
        c[
            "succeeded" if j["state"] == "SUCCEED" else "failed" if j["state"] == "FAILED" else "in_progress"
        ] += 1
        side = waits_on(j["state"])
        c["waiting_on_user"] += side == "user"
        c["in_progress_by_service"] += side == "service"
    return {
        g: {
            "total_jobs": c["total_jobs"],
            "succeeded": c["succeeded"],
            "failed": c["failed"],
            "in_progress": c["in_progress"],
            "failure_rate": rate(c["failed"], c["succeeded"]),
            "waiting_on_user": c["waiting_on_user"],
            "in_progress_by_service": c["in_progress_by_service"],
        }
        for g, c in groups.items()
    }


def expected_job_outcomes(data: Dataset) -> dict[tuple[str, str], dict[str, Any]]:
    """Per live job: its outcome and which side an unfinished job waits on."""
    out = {}
    for j in data.live_jobs():
        side = waits_on(j["state"])
        out[(j["project_id"], j["job_id"])] = {
            "outcome": {"SUCCEED": "succeeded", "FAILED": "failed"}.get(j["state"], "in_progress"),
            "waits_on": side,
            "waiting_on_user": side == "user",
            "in_progress_by_service": side == "service",
        }
    return out


def period_start(ts: datetime, period: str) -> date:
    d = ts.astimezone(UTC).date()
    if period == "week":
        return d - timedelta(days=d.weekday())
    if period == "month":
        return d.replace(day=1)
    return d


def expected_period_stats(data: Dataset, period: str) -> dict[tuple[date, str], dict[str, Any]]:
    finish = finish_seconds(data)
    groups: dict[tuple[date, str], list[dict]] = defaultdict(list)
    for j in data.live_jobs():
        groups[(period_start(j["create_time"], period), j["project_id"])].append(j)
    out = {}
    for key, jobs in groups.items():
        succeeded = sum(j["state"] == "SUCCEED" for j in jobs)
        failed = sum(j["state"] == "FAILED" for j in jobs)
        secs = [finish[(j["project_id"], j["job_id"])] for j in jobs if j["state"] in TERMINAL]
        out[key] = {
            "jobs_created": len(jobs),
            "succeeded": succeeded,
            "failed": failed,
            "failure_rate": rate(failed, succeeded),
            "p50_finish_seconds": quantile(secs, 0.5),
            "p90_finish_seconds": quantile(secs, 0.9),
        }
    return out


def expected_time_to_finish(data: Dataset) -> dict[Any, dict[str, Any]]:
    finish = finish_seconds(data)
    groups: dict[Any, list[float]] = defaultdict(list)
    for j in data.live_jobs():
        if j["state"] in TERMINAL:
            groups[j.get("job_type")].append(finish[(j["project_id"], j["job_id"])])
    return {
        g: {
            "finished_jobs": len(s),
            "p50_finish_seconds": quantile(s, 0.5),
            "p90_finish_seconds": quantile(s, 0.9),
            "p99_finish_seconds": quantile(s, 0.99),
            "avg_finish_seconds": sum(s) / len(s),
        }
        for g, s in groups.items()
    }


def expected_failure_codes(data: Dataset) -> dict[Any, dict[str, Any]]:
    failed = [j for j in data.live_jobs() if j["state"] == "FAILED"]
    by_code: dict[Any, list[dict]] = defaultdict(list)
    for j in failed:
        by_code[j.get("job_failed_code")].append(j)
    out = {}
    for code, jobs in by_code.items():
        reasons = Counter(j.get("job_failed_reason") for j in jobs if j.get("job_failed_reason") is not None)
        top = min(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[0] if reasons else None
        out[code] = {
            "most_common_reason": top,
            "jobs": len(jobs),
            "share_of_failures": len(jobs) / len(failed),
            "last_seen": max(j["lastupdate_time"] for j in jobs),
        }
    return out


def bucket(age: timedelta) -> str:
    hours = age.total_seconds() / 3600
    if hours < 1:
        return "<1h"
    if hours < 24:
        return "1h-1d"
    if hours < 24 * 7:
        return "1-7d"
    if hours < 24 * 30:
        return "7-30d"
    return ">30d"


def expected_backlog(data: Dataset) -> dict[tuple[Any, str], dict[str, int]]:
    live = data.live_jobs()
    now = max(j["lastupdate_time"] for j in live)
    counts = Counter((j["state"], bucket(now - j["create_time"])) for j in live if j["state"] not in TERMINAL)
    return {
        (state, age): {
            "jobs": n,
            "waits_on": waits_on(state),
            "waiting_on_user": n if waits_on(state) == "user" else 0,
            "in_progress_by_service": n if waits_on(state) == "service" else 0,
        }
        for (state, age), n in counts.items()
    }


def table(con: duckdb.DuckDBPyConnection, name: str) -> list[dict[str, Any]]:
    cursor = con.execute(f"SELECT * FROM analytics.{name}")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def assert_keyed_rows_equal(actual: dict[Any, dict[str, Any]], expected: dict[Any, dict[str, Any]]) -> None:
    assert set(actual) == set(expected)
    for key, exp in expected.items():
        for column, value in exp.items():
            got = actual[key][column]
            if isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-9, abs=1e-6), (key, column)
            else:
                assert got == value, (key, column)
