"""What an incremental refresh rebuilds (pipelines.incremental.plan), and the scope macro that
restricts an incremental model to the marked creation days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import duckdb
import pytest

from pipelines.incremental import plan, scope_macro


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
    ("days marked", {"marked": True}, {"outcomes": "days", "by_tag": "full", "listed": "full", "over_view": "full"}),
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


def test_the_scope_admits_the_marked_days_only():
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Shanghai'")  # a day is a UTC day, whatever the session's zone
    con.execute("CREATE SCHEMA analytics")
    con.execute("CREATE MACRO analytics.utc_day(ts) AS CAST(make_timestamp(epoch_us(ts)) AS DATE)")
    con.execute("CREATE TABLE models_dirty (project_id VARCHAR, create_day DATE)")
    days = [("p", date(2025, 3, 1)), ("p", date(2025, 3, 3)), ("q", None)]
    con.executemany("INSERT INTO models_dirty VALUES (?, ?)", [list(d) for d in days])
    con.execute(scope_macro(days))
    con.execute("CREATE TABLE jobs (project_id VARCHAR, create_time TIMESTAMPTZ)")
    rows = [("p", datetime(2025, 3, 1, 0, 0, tzinfo=UTC)), ("p", datetime(2025, 3, 1, 23, 59, tzinfo=UTC)),
            ("p", datetime(2025, 3, 2, 12, tzinfo=UTC)), ("p", datetime(2025, 3, 3, 8, tzinfo=UTC)),
            ("q", datetime(2025, 3, 1, 8, tzinfo=UTC)), ("q", None), ("p", None)]
    con.executemany("INSERT INTO jobs VALUES (?, ?)", [list(r) for r in rows])
    admitted = con.execute(
        "SELECT project_id, create_time FROM jobs WHERE analytics.in_refresh_scope(project_id, create_time)"
        " ORDER BY ALL").fetchall()
    assert [(p, t and t.astimezone(UTC)) for p, t in admitted] == [
        ("p", datetime(2025, 3, 1, 0, 0, tzinfo=UTC)), ("p", datetime(2025, 3, 1, 23, 59, tzinfo=UTC)),
        ("p", datetime(2025, 3, 3, 8, tzinfo=UTC)), ("q", None)]
    con.execute(scope_macro([]))
    assert con.execute("SELECT count(*) FROM jobs WHERE analytics.in_refresh_scope(project_id, create_time)").fetchone() == (0,)
