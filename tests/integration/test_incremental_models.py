"""A sync's refresh is incremental (pipelines/incremental.py): analytics.job_outcomes rebuilds
the rows of the jobs that changed, and a table model nothing reached is kept. Whatever the
changes, the incremental refresh leaves every model exactly as a full rebuild would."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipelines.cli import main
from pipelines.incremental import BUILT_FROM
from pipelines.models import MACROS_FILE, MODELS_DIR, load_models, refresh_models
from pipelines.warehouse import Warehouse
from tests.support.simulators import PROJECTS, SIM_NOW, cli_env
from tests.support.warehouse_rows import DAY2, SYNC1, SYNC2, jobs, rec

DAY3 = DAY2 + timedelta(days=1)


def _relations(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    """Every model's rows, sorted (a rebuilt day's rows go to the end of job_outcomes)."""
    return {m.name: sorted(con.execute(f"FROM {m.relation}").fetchall(), key=repr) for m in load_models()}


def _oids(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The catalog id of each analytics table: a new one whenever the table is created again."""
    return dict(con.execute(
        "SELECT table_name, table_oid FROM duckdb_tables() WHERE schema_name = 'analytics'").fetchall())


def _marks(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("SELECT project_id, create_day, job_id FROM models_dirty ORDER BY ALL").fetchall()


def _same_as_a_full_rebuild(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    """Refresh incrementally, then fully: the models must not change in between."""
    refresh_models(con, incremental=True)
    incremental = _relations(con)
    assert _marks(con) == []
    refresh_models(con)
    assert _relations(con) == incremental
    return incremental


def _without_create_time(batch: pa.Table) -> pa.Table:
    """A batch whose jobs lack a create_time (the API always sends one; older warehouses and
    lenient rules may still hold such a job)."""
    column = batch.schema.get_field_index("create_time")
    return batch.set_column(column, batch.schema.field(column), pa.nulls(batch.num_rows, batch.schema.field(column).type))


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path)
    warehouse.apply("r0", jobs=jobs([
        rec("a", "SUCCEED", tag="NEWS", updated_min=30),
        rec("b", "FAILED", tag="NEWS", updated_min=40, job_failed_code="E1"),
        rec("c", "AUDITING", created=DAY2, language="EN"),
        rec("d", "SUCCEED", created=DAY3, tag="ADS", updated_min=90),
    ]))
    return warehouse


def test_every_kind_of_change_leaves_the_models_as_a_full_rebuild_does(wh: Warehouse):
    with wh.connect() as con:
        first = _same_as_a_full_rebuild(con)
        assert len(first["job_outcomes"]) == 4
    # A new job, a state change, a job moved to another creation day, a job with no create_time.
    wh.apply("r1", jobs=jobs([
        rec("e", "FAILED", created=DAY3, updated_min=5, job_failed_code="E2"),
        rec("c", "SUCCEED", created=DAY2, language="EN", updated_min=50),
        rec("a", "SUCCEED", created=DAY3, tag="NEWS", updated_min=60),
    ], synced_at=SYNC2))
    wh.apply("r1", jobs=_without_create_time(jobs([rec("f", "CREATING")], synced_at=SYNC2)))
    with wh.connect() as con:
        # Jobs appended mark their creation day; a new version of a stored job marks that job.
        assert _marks(con) == [("p1", DAY3.date(), None), ("p1", None, "a"), ("p1", None, "c"), ("p1", None, None)]
        second = _same_as_a_full_rebuild(con)
    assert second != first
    assert len(second["job_outcomes"]) == 6
    # Deleted, then listed again.
    wh.apply("r2", jobs=jobs([]), deleted=[("p1", "b"), ("p1", "f")])
    with wh.connect() as con:
        third = _same_as_a_full_rebuild(con)
    assert {r[1] for r in third["job_outcomes"]} == {"a", "c", "d", "e"}
    wh.apply("r3", jobs=jobs([rec("b", "FAILED", tag="NEWS", updated_min=40, job_failed_code="E1")], synced_at=SYNC2))
    with wh.connect() as con:
        assert {r[1] for r in _same_as_a_full_rebuild(con)["job_outcomes"]} == {"a", "b", "c", "d", "e"}


def test_jobs_synced_again_unchanged_leave_every_table_as_it_was(wh: Warehouse):
    with wh.connect() as con:  # one connection: catalog ids hold within it
        refresh_models(con, incremental=True)
        before, oids = _relations(con), _oids(con)
        wh.apply("r1", jobs=jobs([rec("a", "SUCCEED", tag="NEWS", updated_min=30)], synced_at=SYNC2), export=False)
        assert _marks(con) == [], "only synced_at moved: no model reads it"
        assert con.execute("SELECT count(*) FROM lake_dirty").fetchone()[0] == 1, "the lake file holds synced_at"
        refresh_models(con, incremental=True)
        assert _oids(con) == oids, "no table was created again"
        tables = set(oids)
        assert {k: v for k, v in _relations(con).items() if k in tables} == {k: before[k] for k in tables}
        wh.apply("r2", jobs=jobs([rec("d", "FAILED", created=DAY3, tag="ADS", updated_min=95)], synced_at=SYNC2))
        refresh_models(con, incremental=True)
        after = _oids(con)
    assert after["job_outcomes"] == oids["job_outcomes"], "its changed job's row was rebuilt in place"
    assert all(after[name] != oids[name] for name in oids if name != "job_outcomes"), "every aggregate was rebuilt"


def test_a_changed_model_is_rebuilt_whole(wh: Warehouse, tmp_path: Path):
    changed = tmp_path / "models"
    changed.mkdir()
    for model in load_models():
        sql = model.sql.replace("ORDER BY total_jobs DESC, tag", "ORDER BY tag") if model.name == "failure_rate_by_tag" else model.sql
        (changed / model.path.name).write_text(sql, encoding="utf-8")
    (changed / MACROS_FILE).write_text((MODELS_DIR / MACROS_FILE).read_text(encoding="utf-8"), encoding="utf-8")
    with wh.connect() as con:
        refresh_models(con, incremental=True)
        oids = _oids(con)
        refresh_models(con, models=load_models(changed), incremental=True)
        after = _oids(con)
        fingerprints = dict(con.execute(
            "SELECT key, value FROM warehouse_meta WHERE starts_with(key, ?)", [BUILT_FROM]).fetchall())
    assert [name for name in oids if after[name] != oids[name]] == ["failure_rate_by_tag"]
    assert set(fingerprints) == {BUILT_FROM + m.name for m in load_models() if m.kind == "table"}


def test_a_warehouse_whose_job_outcomes_is_a_view_gets_the_table(wh: Warehouse):
    """Warehouses refreshed before job_outcomes was incremental hold it as a view."""
    with wh.connect() as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        con.execute("CREATE VIEW analytics.job_outcomes AS SELECT 1 AS stale")
        refresh_models(con, incremental=True)
        assert con.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_name = 'job_outcomes'").fetchall() == [
                ("BASE TABLE",)]
        assert con.execute("SELECT count(*) FROM analytics.job_outcomes").fetchone() == (4,)


def test_a_subset_refresh_brings_the_incremental_table_it_reads_up_to_date(wh: Warehouse):
    with wh.connect() as con:
        refresh_models(con, incremental=True)
    wh.apply("r1", jobs=jobs([rec("c", "FAILED", created=DAY2, language="EN", updated_min=70)], synced_at=SYNC1))
    with wh.connect() as con:
        rows = refresh_models(con, ["failure_rate_by_language"], incremental=True)
        assert rows == {"failure_rate_by_language": 2}
        assert con.execute(
            "SELECT failed FROM analytics.failure_rate_by_language WHERE language = 'EN'").fetchall() == [(1,)]
        assert _marks(con) == []


def test_a_hand_edit_reaches_the_models_with_a_full_refresh(tmp_path: Path, monkeypatch, capsys, make_simulator):
    """A job changed by hand in warehouse.duckdb leaves no mark: the next sync's refresh keeps the
    models and the lake as they were, `voicejobs sync --full-refresh` rebuilds both from the
    warehouse."""
    server = make_simulator(jobs=120, seed=4, days=3, projects=PROJECTS[:1], now=SIM_NOW)
    cli_env(monkeypatch, server, tmp_path, PROJECTS[:1])
    first, last = (SIM_NOW - timedelta(days=2)).date(), SIM_NOW.date()
    assert main(["sync", "--since", first.isoformat(), "--until", last.isoformat()]) == 0
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        (job_id,) = con.execute(
            "SELECT job_id FROM main.voice_training_jobs WHERE CAST(create_time AS DATE) = ? AND state <> 'FAILED'"
            " ORDER BY job_id LIMIT 1", [first]).fetchone()
        con.execute("UPDATE main.voice_training_jobs SET state = 'FAILED' WHERE job_id = ?", [job_id])

    def served_state() -> str:
        with duckdb.connect(str(tmp_path / "serving.duckdb"), read_only=True) as con:
            return con.execute("SELECT state FROM analytics.job_outcomes WHERE job_id = ?", [job_id]).fetchone()[0]

    def lake_state() -> str:
        lake = ds.dataset(tmp_path / "lake" / "voice_training_jobs", format="parquet", partitioning="hive")
        return lake.to_table(filter=ds.field("job_id") == job_id)["state"][0].as_py()

    # The last day only: the edited job, created on the first, is not listed again.
    assert main(["sync", "--since", last.isoformat(), "--until", last.isoformat()]) == 0
    assert served_state() != "FAILED"
    assert lake_state() != "FAILED"
    assert main(["sync", "--since", last.isoformat(), "--until", last.isoformat(), "--full-refresh"]) == 0
    assert served_state() == "FAILED"
    assert lake_state() == "FAILED"  # the lake too: every partition is written again
    capsys.readouterr()
