"""Analyst SQL reads the serving snapshot's relations and nothing else.

`voicejobs query` and `voicejobs report` run SQL over serving.duckdb on behalf of people
outside the pipeline. That SQL must not write a file (a COPY TO once replaced the warehouse
with four bytes), read one outside the snapshot, attach another database, change a setting
or install and load extensions. The warehouse here is real: built by pipelines.warehouse,
with the analytics models and a published serving snapshot, plus a lake file.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from pipelines import report as report_module
from pipelines.cli import main
from pipelines.models import refresh_models
from pipelines.query import run_query
from pipelines.warehouse import Warehouse
from tests.support.warehouse_fixture import sample_dataset

REFUSED = "analyst SQL may not do"
SECRET = "TOPSECRET-not-for-analysts"
SANDBOX_SETTINGS = {
    "enable_external_access": "false",
    "autoload_known_extensions": "false",
    "autoinstall_known_extensions": "false",
    "lock_configuration": "true",
}
SETTINGS_SQL = (
    "select name, value from duckdb_settings() where name in "
    "('enable_external_access', 'autoload_known_extensions', 'autoinstall_known_extensions', 'lock_configuration')"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A data directory as a sync leaves it: warehouse, analytics models, serving snapshot, a lake file."""
    data_dir = tmp_path_factory.mktemp("sandbox") / "data"
    warehouse = Warehouse(data_dir)
    with warehouse.connect() as con:
        sample_dataset(n_jobs=60, now=datetime(2025, 6, 1, tzinfo=UTC)).load(con)
        refresh_models(con)
        lake_file = warehouse.lake_dir / "create_day=2025-03-03" / "project_id=p1" / "data.parquet"
        lake_file.parent.mkdir(parents=True)
        con.execute(
            f"COPY (SELECT * FROM voice_training_jobs WHERE project_id = 'p1') TO '{lake_file}' (FORMAT parquet)"
        )
    warehouse.publish_serving()
    return data_dir


@pytest.fixture
def data_dir(built, tmp_path) -> Path:
    """A fresh copy per test, so a test that (wrongly) damages a file cannot hide another's failure."""
    copy = tmp_path / "data"
    shutil.copytree(built, copy)
    return copy


@pytest.fixture
def outside(tmp_path) -> Path:
    """A file outside the data directory that no analyst query may read."""
    secret = tmp_path / "elsewhere" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text(f"token\n{SECRET}\n", encoding="utf-8")
    return secret


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}


def cli_query(capsys, data_dir: Path, sql: str, *extra: str) -> tuple[int, str, str]:
    code = main(["query", "--data-dir", str(data_dir), *extra, sql])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, out: str, err: str) -> None:
    assert code == 2, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and REFUSED in lines[0], err


def lake_file(data_dir: Path) -> Path:
    return next((data_dir / "lake").rglob("*.parquet"))


# ---------------------------------------------------------------- writes


@pytest.mark.parametrize("target", ["warehouse.duckdb", "serving.duckdb", "lake"])
def test_copy_to_cannot_overwrite_the_warehouse_snapshot_or_lake(capsys, data_dir, target):
    path = lake_file(data_dir) if target == "lake" else data_dir / target
    before = tree(data_dir)
    code, out, err = cli_query(capsys, data_dir, f"COPY (SELECT 'x' AS x) TO '{path}' (FORMAT csv)")
    assert_refused(code, out, err)
    assert tree(data_dir) == before
    assert sha256(path) == before[str(path.relative_to(data_dir))]


def test_copy_to_a_new_file_writes_nothing(capsys, data_dir, tmp_path):
    target = tmp_path / "exported.csv"
    with pytest.raises(duckdb.Error, match=REFUSED):
        run_query(data_dir / "serving.duckdb", f"COPY analytics.voice_training_jobs TO '{target}'")
    code, out, err = cli_query(capsys, data_dir, f"EXPORT DATABASE '{tmp_path / 'export'}'")
    assert_refused(code, out, err)
    assert not target.exists() and not (tmp_path / "export").exists()


# ---------------------------------------------------------------- reads


@pytest.mark.parametrize("reader", ["read_text", "read_csv", "read_blob"])
def test_files_outside_the_data_directory_cannot_be_read(capsys, data_dir, outside, reader):
    code, out, err = cli_query(capsys, data_dir, f"select * from {reader}('{outside}')")
    assert_refused(code, out, err)
    assert SECRET not in out + err
    with pytest.raises(duckdb.Error, match=REFUSED) as raised:
        run_query(data_dir / "serving.duckdb", f"select * from '{outside}'")
    assert SECRET not in str(raised.value)


def test_etc_passwd_and_parquet_files_cannot_be_read(capsys, data_dir, tmp_path):
    code, out, err = cli_query(capsys, data_dir, "select * from read_text('/etc/passwd')")
    assert_refused(code, out, err)
    assert "root:" not in out + err
    parquet = tmp_path / "outside.parquet"
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT '{SECRET}' AS s) TO '{parquet}' (FORMAT parquet)")
    code, out, err = cli_query(capsys, data_dir, f"select * from read_parquet('{parquet}')")
    assert_refused(code, out, err)
    assert SECRET not in out + err
    # Nor the files inside the data directory: analysts read the snapshot's tables, not its files.
    code, out, err = cli_query(
        capsys, data_dir, f"select count(*) from read_parquet('{lake_file(data_dir)}')"
    )
    assert_refused(code, out, err)
    code, out, err = cli_query(capsys, data_dir, "select * from glob('/etc/*')")
    assert_refused(code, out, err)


def test_other_databases_cannot_be_attached(capsys, data_dir, tmp_path):
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute(f"CREATE TABLE secret AS SELECT '{SECRET}' AS s")
    code, out, err = cli_query(capsys, data_dir, f"ATTACH '{other}' AS o (READ_ONLY); select * from o.secret")
    assert_refused(code, out, err)
    assert SECRET not in out + err
    # The warehouse itself is not the analysts' either: they get the published snapshot.
    code, out, err = cli_query(capsys, data_dir, f"ATTACH '{data_dir / 'warehouse.duckdb'}' AS w (READ_ONLY)")
    assert_refused(code, out, err)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(duckdb.Error, match=REFUSED):
        run_query(data_dir / "serving.duckdb", f"ATTACH '{tmp_path / 'new.duckdb'}' AS n")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---------------------------------------------------------------- settings and extensions


@pytest.mark.parametrize(
    "sql",
    [
        "SET threads = 1; select current_setting('threads')",
        "RESET threads; select current_setting('threads')",
        "PRAGMA threads = 1; select current_setting('threads')",
        "SET enable_external_access = true; select 1",
        "SET memory_limit = '1GB'; select current_setting('memory_limit')",
        "SET search_path = 'main'; select 1",
        "SET lock_configuration = false; select 1",
    ],
)
def test_settings_cannot_be_changed(capsys, data_dir, sql):
    code, out, err = cli_query(capsys, data_dir, sql)
    assert_refused(code, out, err)


def test_the_connection_is_sandboxed_and_locked(data_dir):
    from pipelines.query import open_analyst_connection

    shown = dict(
        line.split(",")
        for line in run_query(data_dir / "serving.duckdb", SETTINGS_SQL, fmt="csv").splitlines()[1:]
    )
    assert shown == SANDBOX_SETTINGS
    con = open_analyst_connection(data_dir / "serving.duckdb")
    try:
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access = true")
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET autoinstall_known_extensions = true")
        assert con.execute("select current_setting('search_path')").fetchone() == ("analytics,main",)
        assert con.execute("select count(*) from failure_rate_by_tag").fetchone()[0] > 0
        # The connection itself stops these, whatever code runs SQL through it.
        for sql in (
            f"COPY (SELECT 1) TO '{data_dir / 'warehouse.duckdb'}' (FORMAT csv)",
            "select * from read_text('/etc/passwd')",
            f"ATTACH '{data_dir / 'warehouse.duckdb'}' AS w (READ_ONLY)",
            "INSTALL httpfs",
        ):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql)
    finally:
        con.close()


def test_extensions_cannot_be_installed_or_loaded(capsys, data_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    fake = tmp_path / "fake.duckdb_extension"
    fake.write_bytes(b"\0" * 4096)
    sqls = (
        f"INSTALL '{fake}'",
        "INSTALL httpfs FROM 'http://127.0.0.1:9'",
        f"LOAD '{fake}'",
        "LOAD httpfs",
        "UPDATE EXTENSIONS",
    )
    outcomes = [cli_query(capsys, data_dir, sql) for sql in sqls]
    assert list(home.iterdir()) == []  # no ~/.duckdb/extensions made
    for outcome in outcomes:
        assert_refused(*outcome)


# ---------------------------------------------------------------- what analysts do still works


def test_ordinary_analyst_queries_still_work(capsys, data_dir):
    code, out, err = cli_query(
        capsys, data_dir, "select tag, total_jobs from failure_rate_by_tag order by tag", "--format", "csv"
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "tag,total_jobs" and len(out.splitlines()) > 2
    code, out, err = cli_query(
        capsys, data_dir, "select count(*) as n from analytics.voice_training_jobs", "--format", "json"
    )
    assert (code, err) == (0, "") and '"n":' in out
    code, out, err = cli_query(capsys, data_dir, "show all tables")
    assert (code, err) == (0, "") and "failure_rate_by_tag" in out
    db = data_dir / "serving.duckdb"
    tables = run_query(
        db, "select schema_name, table_name from duckdb_tables() where schema_name = 'analytics'", fmt="csv"
    )
    assert "analytics,failure_rate_by_tag" in tables
    views = run_query(db, "select view_name from duckdb_views() where schema_name = 'analytics'", fmt="csv")
    assert "voice_training_jobs" in views.splitlines()
    assert run_query(
        db, "select count(*) from job_outcomes where outcome = ?", fmt="csv", params=["failed"]
    ).startswith("count_star()\n")
    # Temporary objects live in memory and are the analyst's own.
    assert run_query(db, "with t as (select 1 as x) select x from t", fmt="csv") == "x\n1\n"


def test_the_report_renders_from_a_sandboxed_connection(capsys, data_dir, tmp_path, monkeypatch):
    seen = {}
    render = report_module.render

    def spy(con, *args, **kwargs):
        seen["settings"] = dict(con.execute(SETTINGS_SQL).fetchall())
        with pytest.raises(duckdb.Error):
            con.execute(f"COPY (SELECT 1) TO '{tmp_path / 'leak.csv'}'")
        return render(con, *args, **kwargs)

    monkeypatch.setattr(report_module, "render", spy)
    before = tree(data_dir)
    out_file = tmp_path / "out" / "report.html"
    assert main(["report", "--data-dir", str(data_dir), "--out", str(out_file)]) == 0
    out, err = capsys.readouterr()
    assert out == f"report written to {out_file}\n" and err == ""
    assert seen["settings"] == SANDBOX_SETTINGS
    assert out_file.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not (tmp_path / "leak.csv").exists()
    assert tree(data_dir) == before


# ---------------------------------------------------------------- the command's other paths


def test_a_syntax_error_is_one_line_and_exit_2(capsys, data_dir):
    code, out, err = cli_query(capsys, data_dir, "selec * frm failure_rate_by_tag")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("voicejobs query: ") and "Traceback" not in err


def test_no_warehouse_says_so_and_creates_nothing(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli_query(capsys, empty, "select 1")
    assert code == 2 and out == ""
    assert (
        err.startswith(f"voicejobs query: no warehouse at {empty / 'serving.duckdb'}")
        and len(err.splitlines()) == 1
    )
    assert list(empty.iterdir()) == []


def test_the_snapshot_holds_no_sync_bookkeeping(built):
    """Quarantined raw records, cursors and export marks stay in the warehouse: analysts' SQL
    reads the analyst-facing relations only."""
    from pipelines.warehouse import SYNC_ONLY_TABLES

    snapshot = built / "serving.duckdb"
    names = run_query(snapshot, "select table_name from duckdb_tables() where schema_name = 'main'"
                                " union all select view_name from duckdb_views() where schema_name = 'main'", fmt="csv")
    kept = set(names.split()[1:])
    assert not kept & set(SYNC_ONLY_TABLES)
    assert {"voice_training_jobs", "voice_training_job_history", "sync_runs"} <= kept
    with pytest.raises(duckdb.CatalogException):
        run_query(snapshot, "select raw_record from quarantine")


def test_read_hands_analysts_a_dataframe_in_the_same_sandbox(built, tmp_path):
    from pipelines.query import AnalystSQLRefused, read

    frame = read("select tag, total_jobs, failure_rate from failure_rate_by_tag order by tag nulls last",
                 data_dir=built)
    as_text = run_query(built / "serving.duckdb",
                        "select tag, total_jobs from failure_rate_by_tag order by tag nulls last", fmt="csv")
    assert list(frame.columns) == ["tag", "total_jobs", "failure_rate"]
    assert len(frame) == len(as_text.strip().splitlines()) - 1 > 0
    assert frame["total_jobs"].sum() == sum(int(line.split(",")[1]) for line in as_text.strip().splitlines()[1:])
    jobs = read("select create_time from voice_training_jobs limit 5", data_dir=built)
    assert str(jobs["create_time"].dt.tz) == "UTC"
    with pytest.raises(AnalystSQLRefused):
        read(f"COPY (select 1) TO '{tmp_path / 'out.csv'}'", data_dir=built)
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(FileNotFoundError, match="no warehouse"):
        read("select 1", data_dir=tmp_path / "nowhere")
