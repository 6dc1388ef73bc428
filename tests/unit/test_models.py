"""SQL models: each aggregate equals the same aggregate computed in plain Python from the same rows.

The plain-Python computation is tests/support/expected_analytics.py; the models as Dagster assets
are tested in tests/integration/test_dagster_models.py.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

import pipelines.models as models_module
from assets.models import HEADLINES
from pipelines.models import (
    MACROS_FILE,
    MODELS_DIR,
    Model,
    ModelError,
    UnmaskedPersonalDataError,
    load_models,
    refresh_models,
    shared_views,
)
from tests.support.expected import waits_on
from tests.support.expected_analytics import (
    assert_keyed_rows_equal,
    expected_backlog,
    expected_failure_codes,
    expected_failure_rate_by,
    expected_job_outcomes,
    expected_period_stats,
    expected_time_to_finish,
    table,
)
from tests.support.warehouse_fixture import Dataset, create_warehouse, insert_rows, sample_dataset

# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def data() -> Dataset:
    return sample_dataset(now=datetime(2025, 6, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def con(data: Dataset):
    connection = duckdb.connect()
    # A non-UTC session zone: day, week and month boundaries must still be UTC.
    connection.execute("SET TimeZone = 'Asia/Shanghai'")
    create_warehouse(connection)
    data.load(connection)
    refresh_models(connection)
    yield connection
    connection.close()


# ---------------------------------------------------------------- the aggregates


@pytest.mark.parametrize("column", ["tag", "language", "job_type"])
def test_failure_rate_by_group(con, data, column):
    rows = table(con, f"failure_rate_by_{column}")
    assert [r for r in rows if r["total_jobs"] != r["succeeded"] + r["failed"] + r["in_progress"]] == []
    assert [r for r in rows if r["in_progress"] != r["waiting_on_user"] + r["in_progress_by_service"]] == []
    assert_keyed_rows_equal({r[column]: r for r in rows}, expected_failure_rate_by(data, column))
    assert sum(r["waiting_on_user"] for r in rows) and sum(r["in_progress_by_service"] for r in rows)
    # Columns dashboards read keep their names and places; the split comes after them.
    assert list(rows[0])[:6] == [column, "total_jobs", "succeeded", "failed", "in_progress", "failure_rate"]


def test_job_outcomes_say_who_an_unfinished_job_waits_on(con, data):
    rows = table(con, "job_outcomes")
    assert_keyed_rows_equal({(r["project_id"], r["job_id"]): r for r in rows}, expected_job_outcomes(data))


@pytest.mark.parametrize(("state", "side"), [
    ("CREATING", "service"), ("SYSTEM_AUDITING", "service"), ("AUDITING", "service"),
    ("WAITING_SPLIT", "service"), ("SPLITTING", "service"), ("ANNOTATING", "service"),
    ("WAITING", "service"), ("PROCESSING", "service"), ("RESULT_REVIEW", "service"),
    ("UPLOADING", "service"), (None, "service"), ("SOMETHING_NEW", "service"),
    ("SPLIT_FAILED", "user"), ("AUDIT_FAILED", "user"), ("USER_REVIEW_REJECT", "user"),
    ("USER_RESULT_REVIEW", "user"), ("UPLOAD_FAILED", "user"),
    ("SUCCEED", None), ("FAILED", None),
])  # fmt: skip
def test_every_state_waits_on_one_side(state, side):
    assert waits_on(state) == side, "the oracle reads the API page the same way"
    con = small_warehouse(state=state)
    refresh_models(con)
    got = con.execute(
        "SELECT outcome, waits_on, waiting_on_user, in_progress_by_service FROM analytics.job_outcomes "
        "WHERE job_id = '1'"
    ).fetchone()
    assert got == (
        {"SUCCEED": "succeeded", "FAILED": "failed"}.get(state, "in_progress"), side, side == "user", side == "service"
    )
    backlog = con.execute(
        "SELECT waits_on, sum(waiting_on_user), sum(in_progress_by_service) FROM analytics.in_flight_backlog "
        "GROUP BY ALL"
    ).fetchall()
    assert backlog == ([] if side is None else [(side, int(side == "user"), int(side == "service"))])
    by_tag = con.execute(
        "SELECT in_progress, waiting_on_user, in_progress_by_service FROM analytics.failure_rate_by_tag"
    ).fetchone()
    assert by_tag == (int(side is not None), int(side == "user"), int(side == "service"))


def test_failure_rate_edges_are_exercised(con):
    by_tag = {r["tag"]: r for r in table(con, "failure_rate_by_tag")}
    assert None in by_tag, "jobs without a tag form their own group"
    assert by_tag["LIVE"]["failure_rate"] is None and by_tag["LIVE"]["total_jobs"] > 0
    assert "STORYTELLING" not in by_tag, "only deleted jobs carry this tag"
    by_language = {r["language"]: r for r in table(con, "failure_rate_by_language")}
    assert None in by_language and by_language["JA"]["failure_rate"] is None


@pytest.mark.parametrize(("name", "period", "column"), [
    ("daily_job_stats", "day", "day"),
    ("weekly_job_stats", "week", "week_start"),
    ("monthly_job_stats", "month", "month_start"),
])  # fmt: skip
def test_period_stats(con, data, name, period, column):
    rows = table(con, name)
    actual = {(r[column], r["project_id"]): r for r in rows}
    assert_keyed_rows_equal(actual, expected_period_stats(data, period))
    if period == "week":
        assert all(r[column].weekday() == 0 for r in rows)


def test_daily_stats_use_utc_days(data):
    # 23:30 UTC is already the next day in Shanghai; the model must count it on the UTC day.
    late = datetime(2025, 3, 4, 23, 30, tzinfo=UTC)
    job = {
        "project_id": "p",
        "job_id": "late",
        "state": "WAITING",
        "create_time": late,
        "lastupdate_time": late,
    }
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Shanghai'")
    create_warehouse(con)
    insert_rows(con, "main.voice_training_jobs", [job])
    refresh_models(con)
    assert con.execute("SELECT day FROM analytics.daily_job_stats").fetchall() == [(date(2025, 3, 4),)]


@pytest.mark.parametrize("session_zone", ["UTC", "Asia/Shanghai", "America/St_Johns"])
def test_the_utc_day_is_the_day_in_utc_at_any_session_zone(session_zone):
    """analytics.utc_day (the models) and utc_day() (the sync's SQL) give the UTC calendar day
    that CAST(timezone('UTC', t) AS DATE) gives, at midnight's edges, before 1970, at the ends
    of the calendar and for NULL, whatever the session's TimeZone."""
    from pipelines.warehouse.tables import utc_day

    con = duckdb.connect()
    con.execute(f"SET TimeZone = '{session_zone}'")
    con.execute("CREATE SCHEMA analytics")
    con.execute((MODELS_DIR / MACROS_FILE).read_text(encoding="utf-8"))
    instants = ["1969-12-31 23:59:59.999999+00", "1970-01-01 00:00:00+00", "2025-03-04 23:30:00+00",
                "2025-03-05 05:00:00+08", "2025-03-04 20:29:59.999999-03:30", "2025-03-04 20:30:00-03:30",
                "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00"]
    values = ", ".join(f"(TIMESTAMPTZ '{t}')" for t in instants) + ", (NULL::TIMESTAMPTZ)"
    rows = con.execute(
        f"SELECT CAST(timezone('UTC', t) AS DATE), analytics.utc_day(t), {utc_day('t')} FROM (VALUES {values}) v(t)"
    ).fetchall()
    assert [row[0] for row in rows][:4] == [date(1969, 12, 31), date(1970, 1, 1), date(2025, 3, 4), date(2025, 3, 4)]
    assert all(row[0] == row[1] == row[2] for row in rows), rows
    assert rows[-1] == (None, None, None)


def test_time_to_finish_by_job_type(con, data):
    rows = table(con, "time_to_finish_by_job_type")
    assert_keyed_rows_equal({r["job_type"]: r for r in rows}, expected_time_to_finish(data))


def test_time_to_finish_prefers_history():
    created = datetime(2025, 3, 3, tzinfo=UTC)
    jobs = [
        # history says SUCCEED from +100 s, a later edit moved lastupdate_time to +5000 s
        {"project_id": "p", "job_id": "h", "job_type": "BASIC", "state": "SUCCEED",
         "create_time": created, "lastupdate_time": created + timedelta(seconds=5000)},
        # no history: lastupdate_time - create_time
        {"project_id": "p", "job_id": "n", "job_type": "MIDDLE", "state": "FAILED",
         "create_time": created, "lastupdate_time": created + timedelta(seconds=300)},
    ]  # fmt: skip
    history = [
        {"project_id": "p", "job_id": "h", "state": "WAITING", "valid_from": created},
        {
            "project_id": "p",
            "job_id": "h",
            "state": "SUCCEED",
            "valid_from": created + timedelta(seconds=100),
        },
        {
            "project_id": "p",
            "job_id": "h",
            "state": "SUCCEED",
            "valid_from": created + timedelta(seconds=5000),
        },
    ]
    con = duckdb.connect()
    create_warehouse(con)
    insert_rows(con, "main.voice_training_jobs", jobs)
    insert_rows(con, "main.voice_training_job_history", history)
    refresh_models(con)
    got = dict(
        con.execute(
            "SELECT job_type, p50_finish_seconds FROM analytics.time_to_finish_by_job_type"
        ).fetchall()
    )
    assert got == {"BASIC": 100.0, "MIDDLE": 300.0}


def test_top_failure_codes(con, data):
    rows = table(con, "top_failure_codes")
    assert_keyed_rows_equal({r["job_failed_code"]: r for r in rows}, expected_failure_codes(data))
    assert sum(r["share_of_failures"] for r in rows) == pytest.approx(1.0)
    assert None in {r["job_failed_code"] for r in rows}, "failures without a code form their own group"
    assert "MSS.00000009" not in {r["job_failed_code"] for r in rows}, "deleted jobs are left out"


def test_in_flight_backlog(con, data):
    rows = table(con, "in_flight_backlog")
    assert_keyed_rows_equal({(r["state"], r["age_bucket"]): r for r in rows}, expected_backlog(data))
    assert {r["waits_on"] for r in rows} == {"user", "service"}
    assert list(rows[0])[:3] == ["state", "age_bucket", "jobs"]
    assert {r["age_bucket"] for r in rows} == {"<1h", "1h-1d", "1-7d", "7-30d", ">30d"}


# ---------------------------------------------------------------- analyst views


def test_views_leave_deleted_jobs_out(con, data):
    live = {(j["project_id"], j["job_id"]) for j in data.live_jobs()}
    deleted = {(j["project_id"], j["job_id"]) for j in data.jobs} - live
    assert deleted, "the sample holds deleted jobs"
    jobs = set(con.execute("SELECT project_id, job_id FROM analytics.voice_training_jobs").fetchall())
    assert jobs == live
    history = set(
        con.execute("SELECT DISTINCT project_id, job_id FROM analytics.voice_training_job_history").fetchall()
    )
    assert history and not history & deleted
    assert history == {(h["project_id"], h["job_id"]) for h in data.history} - deleted
    transitions = set(
        con.execute(
            "SELECT DISTINCT project_id, job_id FROM analytics.voice_training_job_transitions"
        ).fetchall()
    )
    assert transitions and not transitions & deleted
    columns = [r[0] for r in con.execute("DESCRIBE analytics.voice_training_jobs").fetchall()]
    assert "deleted_at" not in columns and columns[:2] == ["project_id", "job_id"] and "phone" in columns


def test_views_show_masked_personal_data_as_stored(con, data):
    phones = {
        r[0]
        for r in con.execute(
            "SELECT phone FROM analytics.voice_training_jobs WHERE phone IS NOT NULL"
        ).fetchall()
    }
    assert phones == {j["phone"] for j in data.live_jobs() if j.get("phone")}
    assert all(p.startswith("*******") for p in phones)


# ---------------------------------------------------------------- loading and ordering


def test_models_load_in_dependency_order():
    models = load_models()
    names = [m.name for m in models]
    assert {p.stem for p in MODELS_DIR.glob("*.sql") if p.name != MACROS_FILE} == set(names)
    position = {n: i for i, n in enumerate(names)}
    for m in models:
        assert all(position[d] < position[m.name] for d in m.depends_on), m.name
        assert m.description and m.sql.lstrip().startswith("--")
    by_name = {m.name: m for m in models}
    assert by_name["failure_rate_by_tag"].depends_on == ("job_outcomes",)
    assert by_name["job_outcomes"].depends_on == ()
    assert by_name["job_outcomes"].sources == ("voice_training_job_past_versions", "voice_training_jobs")
    assert by_name["voice_training_jobs"].sources == ("voice_training_jobs",)
    assert by_name["voice_training_jobs"].kind == "view" and by_name["daily_job_stats"].kind == "table"


def write_model(directory: Path, name: str, body: str, header: str = "-- a row is a test row") -> None:
    (directory / f"{name}.sql").write_text(f"{header}\n{body}\n", encoding="utf-8")


def test_dependencies_from_references_and_header(tmp_path):
    write_model(tmp_path, "a", "CREATE OR REPLACE TABLE analytics.a AS SELECT 1 AS x")
    # A reference inside a comment or a string literal is not a dependency.
    write_model(
        tmp_path,
        "b",
        "CREATE OR REPLACE VIEW analytics.b AS SELECT 'analytics.c' AS s, x FROM analytics.a -- analytics.c",
    )
    write_model(
        tmp_path, "c", "CREATE OR REPLACE TABLE analytics.c AS SELECT 2 AS y", "-- row\n-- depends_on: b"
    )
    models = load_models(tmp_path)
    assert [m.name for m in models] == ["a", "b", "c"]
    assert {m.name: m.depends_on for m in models} == {"a": (), "b": ("a",), "c": ("b",)}
    assert models[2].description == "row"


def test_cycle_is_a_clear_error(tmp_path):
    write_model(tmp_path, "a", "CREATE OR REPLACE TABLE analytics.a AS SELECT * FROM analytics.b")
    write_model(tmp_path, "b", "CREATE OR REPLACE TABLE analytics.b AS SELECT * FROM analytics.a")
    with pytest.raises(ModelError, match="cycle: a -> b -> a"):
        load_models(tmp_path)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("a", "CREATE OR REPLACE TABLE analytics.other AS SELECT 1", "builds analytics.other"),
    ("a", "CREATE OR REPLACE TABLE analytics.a AS SELECT * FROM analytics.missing", "unknown model"),
    ("a", "SELECT 1", "expected one CREATE"),
])  # fmt: skip
def test_malformed_models_are_rejected(tmp_path, name, text, message):
    write_model(tmp_path, name, text)
    with pytest.raises(ModelError, match=message):
        load_models(tmp_path)


def test_macros_run_first_and_are_not_models(tmp_path):
    (tmp_path / MACROS_FILE).write_text(
        "-- test macros\n"
        "CREATE OR REPLACE MACRO analytics.double_it(x) AS x * 2;\n"
        "CREATE OR REPLACE MACRO analytics.rows_of(relation) AS TABLE SELECT * FROM query_table(relation);\n"
    )
    write_model(tmp_path, "a", "CREATE OR REPLACE TABLE analytics.a AS SELECT analytics.double_it(21) AS x")
    write_model(tmp_path, "b", "CREATE OR REPLACE VIEW analytics.b AS SELECT * FROM analytics.rows_of(analytics.a)")
    models = load_models(tmp_path)
    # A macro call is not a model; the relation a table macro is handed is a dependency.
    assert {m.name: m.depends_on for m in models} == {"a": (), "b": ("a",)}
    con = duckdb.connect()
    # Only model `a` asked for, on a database that never saw the macros: they are created anyway.
    assert refresh_models(con, ["a"], models=models) == {"a": 1}
    refresh_models(con, models=models)
    assert con.execute("SELECT x FROM analytics.b").fetchall() == [(42,)]


def test_macros_that_read_a_relation_themselves_are_rejected(tmp_path):
    # A macro reading analytics.a would hide that dependency from every model calling it.
    (tmp_path / MACROS_FILE).write_text(
        "-- test macros\nCREATE OR REPLACE MACRO analytics.all_a() AS TABLE SELECT * FROM analytics.a;\n"
    )
    write_model(tmp_path, "a", "CREATE OR REPLACE TABLE analytics.a AS SELECT 1 AS x")
    with pytest.raises(ModelError, match="analytics.a"):
        load_models(tmp_path)


def test_business_rules_are_written_once():
    """The failure rate, the per-period stats and the per-group counts are each defined in the macros file."""
    root = MODELS_DIR.parent
    division_of_failed = re.compile(r"failed\W{0,4}(?:::DOUBLE)?\s*/", re.IGNORECASE)
    outcome_counting = re.compile(r"count\(\*\)\s+FILTER\s*\(\s*WHERE\s+outcome", re.IGNORECASE)
    places = {  # the code of each model: its header may say what a column means
        p.name: re.sub(r"--[^\n]*", "", p.read_text(encoding="utf-8"))
        for p in MODELS_DIR.glob("*.sql")
        if p.name != MACROS_FILE
    }
    places |= {f"HEADLINES[{k}]": v for k, v in HEADLINES.items()}
    places["pipelines/report.py"] = (root / "pipelines" / "report.py").read_text(encoding="utf-8")
    restated = sorted(name for name, text in places.items() if division_of_failed.search(text))
    assert restated == [], "the failure rate is computed by analytics.failure_rate only"
    counting = sorted(name for name, text in places.items() if name.endswith(".sql") and outcome_counting.search(text))
    assert counting == [], "per-period and per-group counts come from the table macros"
    macros = re.sub(r"--[^\n]*", "", (MODELS_DIR / MACROS_FILE).read_text(encoding="utf-8"))
    assert len(division_of_failed.findall(macros)) == 1


def test_macros_reach_the_serving_snapshot(tmp_path, data):
    """Views calling a macro, and the macros themselves, work in the read-only analyst snapshot."""
    from pipelines.query import open_analyst_connection
    from pipelines.warehouse import Warehouse

    warehouse = Warehouse(tmp_path)
    with warehouse.connect() as con:
        data.load(con)
        refresh_models(con)
    warehouse.publish_serving()
    analyst = open_analyst_connection(warehouse.serving_path)
    try:
        assert analyst.execute("SELECT failure_rate(1, 3), analytics.failure_rate(0, 0)").fetchone() == (0.25, None)
        assert analyst.execute("SELECT count(*) FROM job_outcomes").fetchone()[0] == len(data.live_jobs())
        by_tag = analyst.execute("SELECT * FROM failure_rate_by(job_outcomes, tag) ORDER BY ALL").fetchall()
        assert by_tag == analyst.execute("SELECT * FROM failure_rate_by_tag ORDER BY ALL").fetchall()
    finally:
        analyst.close()
    # A plain read-only client with the default search path (the duckdb CLI, a BI driver).
    plain = duckdb.connect(str(warehouse.serving_path), read_only=True)
    try:
        assert plain.execute("SELECT count(*) FROM analytics.job_outcomes").fetchone()[0] == len(data.live_jobs())
    finally:
        plain.close()


def _model_tables(con: duckdb.DuckDBPyConnection, models: list[Model] | None = None) -> dict[str, list[tuple]]:
    names = [m.name for m in (models or load_models()) if m.kind == "table"]
    return {name: con.execute(f"SELECT * FROM analytics.{name}").fetchall() for name in names}


def _frozen_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE '_frozen_%'").fetchall()]


def models_with_a_shared_view(directory: Path) -> list[Model]:
    """The models of sql/ with analytics.job_outcomes a plain view, as it was before it became an
    incremental table: nine table models then read one view."""
    for model in load_models():
        sql = model.sql
        if model.name == "job_outcomes":
            sql = re.sub(r"^-- incremental_by:.*\n", "", sql, flags=re.MULTILINE)
            sql = sql.replace("CREATE OR REPLACE TABLE analytics.job_outcomes", "CREATE OR REPLACE VIEW analytics.job_outcomes")
        (directory / model.path.name).write_text(sql, encoding="utf-8")
    (directory / MACROS_FILE).write_text((MODELS_DIR / MACROS_FILE).read_text(encoding="utf-8"), encoding="utf-8")
    return load_models(directory)


def test_a_view_several_tables_read_is_evaluated_once_per_refresh(data, monkeypatch, tmp_path):
    """A view that nine table models read is evaluated once per refresh, into a temporary
    table, and every table comes out as if each had read the view itself."""
    models = models_with_a_shared_view(tmp_path)
    assert shared_views(models) == {"job_outcomes"}
    assert shared_views([m for m in models if m.name in ("job_outcomes", "daily_job_stats")]) == set()
    assert shared_views(load_models()) == set(), "sql/'s job_outcomes is a table"
    shared = duckdb.connect()
    create_warehouse(shared)
    data.load(shared)
    refresh_models(shared, models=models)
    assert _frozen_tables(shared) == [], "the temporary copy is dropped with the refresh"
    monkeypatch.setattr("pipelines.models.shared_views", lambda models: set())
    each = duckdb.connect()
    create_warehouse(each)
    data.load(each)
    refresh_models(each, models=models)
    got, want = _model_tables(shared, models), _model_tables(each, models)
    assert sum(len(rows) for rows in want.values()) > 100
    assert got == want


def test_a_failed_refresh_leaves_no_temporary_copy(tmp_path, data):
    working = models_with_a_shared_view(tmp_path)
    (tmp_path / "zz_broken.sql").write_text(
        "-- one row per nothing\nCREATE OR REPLACE TABLE analytics.zz_broken AS SELECT no_such_column FROM analytics.job_outcomes;\n",
        encoding="utf-8")
    con = duckdb.connect()
    create_warehouse(con)
    data.load(con)
    refresh_models(con, models=working)
    before = _model_tables(con, working)
    con.execute("DELETE FROM main.voice_training_jobs WHERE state = 'FAILED'")
    with pytest.raises(ModelError, match="zz_broken"):
        refresh_models(con, models=load_models(tmp_path))
    assert _frozen_tables(con) == []
    assert _model_tables(con, working) == before, "every model keeps its previous state"


def test_a_refresh_frees_what_earlier_commits_pinned_before_copying_a_view(tmp_path, monkeypatch):
    """Rows a sync committed since the last checkpoint stay in DuckDB's memory until one; at a
    million jobs after a change capture that left the temporary copy of job_outcomes too little
    of the sync's memory cap, and the refresh failed. It checkpoints first."""
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    create_warehouse(con)
    con.execute(
        "INSERT INTO main.voice_training_jobs (project_id, job_id, state, job_failed_reason, create_time,"
        " lastupdate_time, synced_at)"
        " SELECT 'p', 'job-' || i, CASE i % 3 WHEN 0 THEN 'SUCCEED' WHEN 1 THEN 'FAILED' ELSE 'AUDITING' END,"
        " md5(i::VARCHAR) || repeat('r', 200), TIMESTAMPTZ '2025-01-01' + to_seconds(i * 60),"
        " TIMESTAMPTZ '2025-01-01' + to_seconds(i * 60 + 600), now() FROM range(20000) t(i)"
    )
    con.execute("CHECKPOINT")
    con.execute("SET checkpoint_threshold = '1GB'")  # as between a sync's checkpoints: commits do not checkpoint
    # A third of the jobs replaced, the way a sync's upsert replaces changed jobs.
    con.execute("CREATE TEMP TABLE changed AS FROM main.voice_training_jobs WHERE hash(job_id) % 3 = 0")
    con.execute("DELETE FROM main.voice_training_jobs j USING changed c WHERE j.job_id = c.job_id")
    con.execute("INSERT INTO main.voice_training_jobs FROM changed")
    con.execute("DROP TABLE changed")

    def pinned() -> int:
        return con.execute(
            "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'IN_MEMORY_TABLE'"
        ).fetchall()[0][0]

    assert pinned() > 1 << 20
    at_copy = []
    freeze = models_module._freeze
    monkeypatch.setattr(models_module, "_freeze", lambda c, view: (at_copy.append(pinned()), freeze(c, view))[1])
    (tmp_path / "models").mkdir()
    refresh_models(con, models=models_with_a_shared_view(tmp_path / "models"))
    assert at_copy == [0]
    assert con.execute("SELECT count(*) FROM analytics.job_outcomes").fetchall() == [(20000,)]
    con.close()


def test_model_without_header_is_rejected(tmp_path):
    (tmp_path / "a.sql").write_text("CREATE OR REPLACE TABLE analytics.a AS SELECT 1\n")
    with pytest.raises(ModelError, match="comment"):
        load_models(tmp_path)


# ---------------------------------------------------------------- refreshing


def small_warehouse(**job_overrides: Any) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    create_warehouse(con)
    t = datetime(2025, 3, 3, tzinfo=UTC)
    insert_rows(con, "main.voice_training_jobs", [
        {"project_id": "p", "job_id": "1", "state": "FAILED", "tag": "NEWS", "create_time": t,
         "lastupdate_time": t + timedelta(hours=1), "phone": "*******1234", **job_overrides},
        {"project_id": "p", "job_id": "2", "state": "SUCCEED", "tag": "NEWS", "create_time": t,
         "lastupdate_time": t + timedelta(hours=2)},
    ])  # fmt: skip
    return con


def test_refresh_subset_and_unknown_names():
    con = small_warehouse()
    wanted = ["failure_rate_by_tag", "voice_training_jobs", "job_outcomes", "voice_training_job_history"]
    rows = refresh_models(con, wanted)
    assert list(rows) == [
        "job_outcomes",
        "failure_rate_by_tag",
        "voice_training_job_history",
        "voice_training_jobs",
    ]
    assert rows == {
        "voice_training_job_history": 0,
        "voice_training_jobs": 2,
        "job_outcomes": 2,
        "failure_rate_by_tag": 1,
    }
    built = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'analytics'"
        ).fetchall()
    }
    assert built == {"failure_rate_by_tag", "job_outcomes"}
    # The incremental table a model reads is brought up to date with it, not reported.
    assert refresh_models(con, ["failure_rate_by_tag"]) == {"failure_rate_by_tag": 1}
    with pytest.raises(ModelError, match="unknown model"):
        refresh_models(con, ["no_such_model"])


def test_refresh_is_idempotent_and_atomic(tmp_path):
    con = small_warehouse()
    first = refresh_models(con)
    before = con.execute("SELECT * FROM analytics.failure_rate_by_tag").fetchall()
    assert refresh_models(con) == first
    assert (
        con.execute("SELECT * FROM analytics.failure_rate_by_tag").fetchall()
        == before
        == [("NEWS", 2, 1, 1, 0, 0.5, 0, 0)]
    )
    # A failing model rolls back the models built before it in the same refresh.
    write_model(
        tmp_path,
        "failure_rate_by_tag",
        "CREATE OR REPLACE TABLE analytics.failure_rate_by_tag AS SELECT 9 AS x",
    )
    write_model(
        tmp_path, "z_broken", "CREATE OR REPLACE TABLE analytics.z_broken AS SELECT * FROM main.nowhere"
    )
    with pytest.raises(ModelError, match="z_broken"):
        refresh_models(con, models=load_models(tmp_path))
    assert con.execute("SELECT * FROM analytics.failure_rate_by_tag").fetchall() == before


def test_refresh_refuses_unmasked_personal_data():
    con = small_warehouse(
        phone="+86 138 0013 5678", voice_authorization_url="https://obs/x.pdf?X-Amz-Signature=abc"
    )
    with pytest.raises(UnmaskedPersonalDataError) as err:
        refresh_models(con)
    assert err.value.counts == {"phone": 1, "voice_authorization_url": 1}
    assert "abc" not in str(err.value) and "0013" not in str(err.value)
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'analytics'").fetchone() == (
        0,
    )
    assert refresh_models(con, allow_unmasked_personal_data=True)["voice_training_jobs"] == 2


def test_models_run_on_the_warehouse_schema(tmp_path, data):
    """The same rows in tables created by pipelines.warehouse give the same answers."""
    from pipelines.warehouse import Warehouse

    warehouse = Warehouse(tmp_path)
    with warehouse.connect() as con:
        data.load(con)
        refresh_models(con)
        rows = table(con, "failure_rate_by_tag")
        assert_keyed_rows_equal({r["tag"]: r for r in rows}, expected_failure_rate_by(data, "tag"))
        assert_keyed_rows_equal(
            {r["job_type"]: r for r in table(con, "time_to_finish_by_job_type")},
            expected_time_to_finish(data),
        )
        history_columns = [
            r[0] for r in con.execute("DESCRIBE analytics.voice_training_job_history").fetchall()
        ]
        assert history_columns[-3:] == ["valid_from", "valid_to", "observed_at"]
        assert "row_hash" not in history_columns and "deleted_at" not in history_columns
        assert con.execute("SELECT count(*) FROM analytics.voice_training_job_transitions").fetchone()[0] > 0


def test_each_refresh_checks_the_jobs_synced_since_the_last_clean_check(tmp_path):
    """A refresh looks at the jobs synced since the last clean check (a stored row changes only by
    being synced again, which moves its synced_at): a later unmasked row is still refused, and a
    refused refresh moves nothing, so the next one looks again."""
    from datetime import UTC, datetime

    from pipelines.models import CHECKED_THROUGH
    from pipelines.warehouse import Warehouse
    from tests.support.warehouse_rows import jobs, rec

    warehouse = Warehouse(tmp_path)
    run = warehouse.begin_run("days", {})
    warehouse.apply(run, jobs=jobs([rec("a"), rec("b")], synced_at=datetime(2025, 3, 1, tzinfo=UTC)))
    with warehouse.connect() as con:
        refresh_models(con)
        (through,) = con.execute("SELECT value FROM warehouse_meta WHERE key = ?", [CHECKED_THROUGH]).fetchone()
        assert through == "2025-03-01T00:00:00+00:00"
        # A later sync wrote a phone in clear (the raw policy): the next refresh sees it, however
        # many rows were checked before, and keeps refusing until it is gone.
        con.execute("UPDATE voice_training_jobs SET phone = '+86 138 0013 5678', synced_at = ? WHERE job_id = 'b'",
                    [datetime(2025, 3, 2, tzinfo=UTC)])
        for _ in range(2):
            with pytest.raises(UnmaskedPersonalDataError):
                refresh_models(con)
        assert con.execute("SELECT value FROM warehouse_meta WHERE key = ?", [CHECKED_THROUGH]).fetchone() == (
            "2025-03-01T00:00:00+00:00",)
        con.execute("UPDATE voice_training_jobs SET phone = '**********5678' WHERE job_id = 'b'")
        refresh_models(con)
        assert con.execute("SELECT value FROM warehouse_meta WHERE key = ?", [CHECKED_THROUGH]).fetchone() == (
            "2025-03-02T00:00:00+00:00",)


def test_a_refresh_that_does_not_count_builds_the_same_models():
    counted, uncounted = small_warehouse(), small_warehouse()
    rows = refresh_models(counted)
    assert refresh_models(uncounted, count_rows=False) == {}
    for name in rows:
        query = f"SELECT * FROM analytics.{name} ORDER BY ALL"
        assert uncounted.execute(query).fetchall() == counted.execute(query).fetchall()


def test_finished_at_is_the_first_terminal_version_whether_replaced_or_current(tmp_path):
    """A job's first terminal version is either a version a newer one replaced (kept in the past
    versions) or its current version (the jobs row): job_outcomes reads both as the history."""
    from pipelines.warehouse import Warehouse
    from tests.support.warehouse_rows import DAY1, SYNC2, jobs, rec

    wh = Warehouse(tmp_path / "d")
    run = wh.begin_run("days", {})
    wh.apply(run, jobs=jobs([rec("early", "SUCCEED", updated_min=10), rec("late", "PROCESSING", updated_min=10),
                             rec("never", "FAILED", updated_min=None)]))
    # early: finished at 10 min, then renamed at 50 (a new terminal version); late: finished at 40.
    wh.apply(run, jobs=jobs([rec("early", "SUCCEED", updated_min=50, voice_name="renamed"),
                             rec("late", "SUCCEED", updated_min=40)], synced_at=SYNC2))
    with wh.connect() as con:
        refresh_models(con)
        got = dict(con.execute("SELECT job_id, finished_at FROM analytics.job_outcomes").fetchall())
        history = con.execute("SELECT job_id, count(*) FROM voice_training_job_history GROUP BY 1").fetchall()
    assert sorted(history) == [("early", 2), ("late", 2), ("never", 1)]
    assert got == {
        "early": DAY1 + timedelta(minutes=10),  # a replaced version
        "late": DAY1 + timedelta(minutes=40),  # the current version
        "never": DAY1,  # no lastupdate_time: its version is valid from its creation
    }


def test_the_models_connection_has_the_syncs_memory_cap(tmp_path: Path):
    """Dagster's model refresh opens the warehouse through connect(): uncapped, DuckDB took up to
    1.3 GB to rebuild every model of a million-job warehouse, the sync's refresh its cap (80 MB)."""
    from pipelines.warehouse import Warehouse

    wh = Warehouse(tmp_path)
    with wh.connect() as synced:
        cap = synced.execute("SELECT current_setting('memory_limit')").fetchall()
    con = models_module.connect(wh.db_path)
    try:
        assert con.execute("SELECT current_setting('memory_limit')").fetchall() == cap
    finally:
        con.close()


@pytest.mark.parametrize("phone", [
    None, "", "1234", "*******5678", "+86 ***** 5678", "12345", "1-2-3-4-5", "+86 138 0013 5678",
    "tel:0012", "a1b2c3d4", "a1b2c3d4e5", "１２３４５６",  # full-width digits are not [0-9]
])
def test_a_phone_counts_as_unmasked_when_more_than_four_ascii_digits_show(phone):
    from pipelines.unmasked import unmasked_personal_data

    con = duckdb.connect()
    con.execute("CREATE TABLE jobs (phone VARCHAR, voice_authorization_url VARCHAR, training_input_source_url VARCHAR,"
                " synced_at TIMESTAMPTZ)")
    con.execute("INSERT INTO jobs VALUES (?, NULL, NULL, now())", [phone])
    shown = sum(char in "0123456789" for char in phone or "")
    assert unmasked_personal_data(con, "jobs") == ({"phone": 1} if shown > 4 else {})
