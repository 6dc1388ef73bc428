"""What an incremental refresh rebuilds (pipelines.incremental.plan), and the scope macro that
restricts an incremental model to the marked creation days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import duckdb
import pytest

from pipelines.incremental import Marks, plan, scope_macro


@dataclass(frozen=True)
class M:
    name: str
    kind: str = "table"
    sql: str = ""
    depends_on: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    incremental_by: tuple[str, ...] = ()


OUTCOMES = M("outcomes", sources=("jobs",), incremental_by=("project_id", "create_time"))
BY_TAG = M("by_tag", depends_on=("outcomes",))
LISTED = M("listed", kind="view", sources=("jobs",))
OVER_VIEW = M("over_view", depends_on=("listed",))
MODELS = [OUTCOMES, BY_TAG, LISTED, OVER_VIEW]
BUILT = {m.name: "fp" for m in MODELS if m.kind == "table"}
TABLES = {m.name: m.kind for m in MODELS}


def _plan(*, incremental=True, built=BUILT, kinds=TABLES, marked=False) -> dict[str, str]:
    current = {m.name: "fp" for m in MODELS}
    return {name: how.value for name, how in
            plan(MODELS, incremental=incremental, built=built, current=current, kinds=kinds, marked=marked).items()}


@pytest.mark.parametrize(("case", "kwargs", "expected"), [
    ("nothing marked", {}, {"outcomes": "keep", "by_tag": "keep", "listed": "full", "over_view": "full"}),
    ("jobs marked", {"marked": True}, {"outcomes": "marked", "by_tag": "full", "listed": "full", "over_view": "full"}),
    ("a full refresh", {"incremental": False}, {"outcomes": "full", "by_tag": "full", "listed": "full", "over_view": "full"}),
    ("no marks table", {"marked": None}, {"outcomes": "full", "by_tag": "full", "listed": "full", "over_view": "full"}),
    ("never built", {"built": {}}, {"outcomes": "full", "by_tag": "full", "listed": "full", "over_view": "full"}),
    ("no warehouse_meta", {"built": None}, {"outcomes": "full", "by_tag": "full", "listed": "full", "over_view": "full"}),
    ("by_tag's SQL changed", {"built": BUILT | {"by_tag": "old"}},
     {"outcomes": "keep", "by_tag": "full", "listed": "full", "over_view": "full"}),
    ("outcomes was a view", {"kinds": TABLES | {"outcomes": "view"}},
     {"outcomes": "full", "by_tag": "full", "listed": "full", "over_view": "full"}),
])
def test_what_a_refresh_rebuilds(case, kwargs, expected):
    assert _plan(**kwargs) == expected, case


def test_the_scope_admits_the_marked_jobs_only():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Shanghai'")  # a day is a UTC day, whatever the session's zone
    con.execute("CREATE SCHEMA analytics")
    con.execute("CREATE MACRO analytics.utc_day(ts) AS CAST(make_timestamp(epoch_us(ts)) AS DATE)")
    con.execute("CREATE TABLE models_dirty (project_id VARCHAR, create_day DATE, job_id VARCHAR)")
    con.executemany("INSERT INTO models_dirty VALUES (?, ?, ?)", [
        ["p", date(2025, 3, 1), None], ["p", date(2025, 3, 3), None], ["q", None, None], ["p", None, "j9"]])
    con.execute("CREATE TABLE jobs (project_id VARCHAR, job_id VARCHAR, create_time TIMESTAMPTZ)")
    rows = [("p", "j1", datetime(2025, 3, 1, 0, 0, tzinfo=UTC)), ("p", "j2", datetime(2025, 3, 1, 23, 59, tzinfo=UTC)),
            ("p", "j3", datetime(2025, 3, 2, 12, tzinfo=UTC)), ("p", "j4", datetime(2025, 3, 3, 8, tzinfo=UTC)),
            ("q", "j5", datetime(2025, 3, 1, 8, tzinfo=UTC)), ("q", "j6", None), ("p", "j7", None),
            ("p", "j9", datetime(2024, 1, 1, tzinfo=UTC)), ("q", "j9", datetime(2024, 1, 1, tzinfo=UTC))]
    con.executemany("INSERT INTO jobs VALUES (?, ?, ?)", [list(r) for r in rows])

    def admitted(marked: Marks) -> list[str]:
        con.execute(scope_macro(marked))
        return [r[0] for r in con.execute(
            "SELECT job_id FROM jobs WHERE analytics.in_refresh_scope(project_id, job_id, create_time) ORDER BY ALL"
        ).fetchall()]

    days = (("p", date(2025, 3, 1)), ("p", date(2025, 3, 3)), ("q", None))
    assert admitted(Marks(days=days, jobs=True)) == ["j1", "j2", "j4", "j6", "j9"]
    assert admitted(Marks(days=days, jobs=False)) == ["j1", "j2", "j4", "j6"]
    assert admitted(Marks(days=(), jobs=True)) == ["j9"]
    assert admitted(Marks(days=(), jobs=False)) == []
