"""A sync killed with SIGKILL at any point leaves a warehouse that opens and is consistent.

Each case starts from the same committed warehouse (a full sync of the simulator), moves
the simulator's clock on (new jobs, state changes, deletions), and runs ``voicejobs sync``
(change capture) as a subprocess that kills itself at one named point of
:mod:`pipelines.crashpoints`. Afterwards:

- the process died by SIGKILL (exit -9), so nothing after the point ran;
- warehouse.duckdb opens, holds each job once, and every row is either the job as it was
  before the run or the job as the source now lists it (no mixed or torn rows);
- every Parquet file in the lake is complete and readable, and serving.duckdb (if present)
  opens;
- the next sync finishes, and the warehouse equals the source and the lake equals the table.

"While DuckDB is committing" is covered by a crash point right before COMMIT (the
transaction is open with all its writes done) and one right after it. The lake is written
once per run, as it finishes, from the table; the export that also recovers the partitions a
killed run left marked is killed on its own (``lake_replaced`` hit inside the export of the
run after an ``apply_after_commit`` kill). A larger run is then killed four times in a
row, each run leaving its state to the next, at moments drawn from a seeded RNG: twice from
outside while pages arrive (the proxy in front of the simulator SIGKILLs the process as it
answers the K-th page, so the kill cannot miss however fast or slow the machine is), and at
the N-th temporary file and the N-th rename of the lake writes. No kill is timed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from pipelines.sync import refresh_and_publish, sync
from pipelines.warehouse import Warehouse
from tests.support.expected import assert_rows_equal, comparable, expected_row
from tests.support.hostile import HostileProxy
from tests.support.lake import lake_dataset, lake_file, lake_keys
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

REPO = Path(__file__).resolve().parents[2]
DAYS = 20
FIRST_DAY = (SIM_NOW - timedelta(days=DAYS + 1)).date()

# (crash point, what the run had done when it died)
CRASH_POINTS = [
    "fetched",  # a window fetched and absorbed; nothing written
    "before_flush",  # the first buffer is about to be applied
    "before_flush:2",  # between flushes: the first project's changes committed, the second's not
    "apply_before_commit",  # inside the DuckDB transaction, every write done, COMMIT not issued
    "apply_before_commit:2",  # second transaction of the run, first one committed
    "apply_after_commit",  # committed, lake export not started (partitions stay marked dirty)
    "lake_tmp_written",  # a parquet temp file written, not renamed into place
    "lake_replaced",  # a parquet file in place, its dirty mark not cleared
    "lake_exported",  # the lake written, the run not recorded as finished
    "watermark_committed",  # the watermark transaction committed
    "run_finished",  # run recorded as succeeded, SQL models not refreshed
    "models_refreshed",  # models rebuilt, serving snapshot not published
    "serving_copying",  # the serving snapshot copy half written
    "serving_replaced",  # serving.duckdb swapped in, process not yet done
]
# The points where the lake is being written, run again with the lake on an S3 server.
LAKE_CRASH_POINTS = ["apply_after_commit", "lake_tmp_written", "lake_replaced", "lake_exported"]
CASES = [(point, "local") for point in CRASH_POINTS] + [(point, "s3") for point in LAKE_CRASH_POINTS]


def _key(row: dict) -> tuple[str, str]:
    return row["project_id"], row["job_id"]


def _content(row: dict) -> dict:
    row = comparable(row)
    row.pop("synced_at", None)
    row.pop("deleted_at", None)
    return row


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_module_simulator):
    """A simulator, a committed baseline warehouse, and the simulator moved on afterwards."""
    server = make_module_simulator(jobs=500, seed=23, days=DAYS, projects=PROJECTS, now=SIM_NOW)
    baseline = tmp_path_factory.mktemp("baseline")
    settings = sim_settings(server, baseline, first_day=FIRST_DAY)
    sync(settings, mode="incremental", warehouse=Warehouse(baseline))
    refresh_and_publish(Warehouse(baseline), settings)
    before = {_key(r): r for r in Warehouse(baseline).jobs_table().to_pylist()}
    changes = server.state.advance(3 * 86400)
    assert changes["created"] and changes["transitioned"] and changes["deleted"]
    yield server, baseline, before


def _env(server, data_dir: Path, **extra: str) -> dict[str, str]:
    config = server.state.config
    ak, sk = next(iter(config.credentials.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_"))}
    env.update(
        METASTUDIO_ENDPOINT=server.url,
        HUAWEICLOUD_SDK_AK=ak,
        HUAWEICLOUD_SDK_SK=sk,
        HUAWEICLOUD_SDK_PROJECT_ID=",".join(config.projects),
        VOICEJOBS_DATA_DIR=str(data_dir),
        VOICEJOBS_FIRST_DAY=FIRST_DAY.isoformat(),
        VOICEJOBS_SAFETY_LAG_SECONDS="0", VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0",
        VOICEJOBS_MAX_ATTEMPTS="3",
        VOICEJOBS_TIMEOUT_SECONDS="10",
    )
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _assert_consistent(data_dir: Path, before: dict, truth: dict, **lake) -> None:
    """The warehouse opens; each job once; each row the old or the new version; the lake readable.

    ``lake``: where the lake is, as Warehouse takes it (lake_uri, object_store); default local."""
    warehouse = Warehouse(data_dir, **lake)
    rows = warehouse.jobs_table().to_pylist()
    keys = [_key(r) for r in rows]
    assert len(keys) == len(set(keys)), "a job is stored twice"
    for row in rows:
        key = _key(row)
        versions = []
        if key in before:
            versions.append(_content(before[key]))
        if key in truth:
            versions.append(truth[key])
        assert versions, f"{key} is neither in the earlier warehouse nor in the source"
        assert _content(row) in versions, f"{key} is neither its old nor its new version"
    # Every job of the earlier warehouse is still there (a crash never loses committed rows).
    assert before.keys() <= set(keys)
    for key in lake_keys(warehouse):
        if key.endswith(".parquet"):
            assert lake_file(warehouse, key).num_rows > 0, f"{key} is empty"
    if warehouse.serving_path.exists():
        with duckdb.connect(str(warehouse.serving_path), read_only=True) as con:
            assert con.execute("select count(*) from voice_training_jobs").fetchone()[0] > 0


def _assert_repaired(server, data_dir: Path, **lake) -> None:
    warehouse = Warehouse(data_dir, **lake)
    live = warehouse.jobs_table(include_deleted=False).drop_columns(["synced_at", "deleted_at"]).to_pylist()
    truth = {pid: server.state.truth(pid) for pid in server.state.config.projects}
    assert_rows_equal(live, truth, personal_data="mask")
    table = warehouse.jobs_table().sort_by([("project_id", "ascending"), ("job_id", "ascending")])
    files = lake_dataset(warehouse).to_table()
    files = files.select(table.column_names).cast(table.schema)
    files = files.sort_by([("project_id", "ascending"), ("job_id", "ascending")])
    assert files.equals(table), "the lake differs from the jobs table"
    assert not [key for key in lake_keys(warehouse) if key.endswith(".tmp")], "temporary parquet files were left behind"
    with duckdb.connect(str(warehouse.db_path), read_only=True) as con:
        assert con.execute("select count(*) from lake_dirty").fetchone()[0] == 0
        statuses = dict(con.execute("select status, count(*) from sync_runs group by 1").fetchall())
    assert statuses.get("succeeded", 0) >= 1
    assert "running" not in statuses, "a killed run was left 'running'"


def _truth_rows(server) -> dict:
    return {
        (pid, job["job_id"]): expected_row(job, pid, "mask")
        for pid in server.state.config.projects
        for job in server.state.truth(pid)
    }


@pytest.mark.parametrize(("point", "lake_at"), CASES, ids=[f"{p}-{at}" for p, at in CASES])
def test_sigkill_at_a_crash_point_leaves_a_consistent_warehouse(world, tmp_path, request, point, lake_at):
    server, baseline, before = world
    data_dir = tmp_path / "data"
    shutil.copytree(baseline, data_dir)
    lake, lake_env = {}, {}
    if lake_at == "s3":
        # The baseline's lake moves to a fresh prefix on the S3 server; the sync writes there.
        s3 = request.getfixturevalue("s3_lake")
        lake = {"lake_uri": s3.uri, "object_store": s3.server.access()}
        lake_env = s3.server.env(s3.uri)
        shutil.rmtree(data_dir / "lake")
        assert Warehouse(data_dir, **lake).rebuild_lake() > 0
        assert not (data_dir / "lake").exists()

    proc = _cli(_env(server, data_dir, VOICEJOBS_CRASHPOINT=point, **lake_env), "sync")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"{point} was not reached: rc={proc.returncode}\n{out}\n{err}"

    _assert_consistent(data_dir, before, _truth_rows(server), **lake)

    proc = _cli(_env(server, data_dir, **lake_env), "sync")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    _assert_repaired(server, data_dir, **lake)
    assert (data_dir / "lake").exists() == (lake_at == "local")


def _runs(data_dir: Path) -> dict[str, tuple]:
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("select run_id, status, started_at, finished_at, stats from sync_runs").fetchall()
    return {run_id: rest for run_id, *rest in rows}


def test_the_next_run_marks_a_killed_run_abandoned(world, tmp_path):
    server, baseline, _ = world
    data_dir = tmp_path / "data"
    shutil.copytree(baseline, data_dir)
    proc = _cli(_env(server, data_dir, VOICEJOBS_CRASHPOINT="apply_after_commit"), "sync")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"rc={proc.returncode}\n{out}\n{err}"
    killed = [run_id for run_id, (status, *_) in _runs(data_dir).items() if status == "running"]
    assert len(killed) == 1  # the killed process could not record how its run ended

    proc = _cli(_env(server, data_dir), "sync")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    runs = _runs(data_dir)
    status, _, finished_at, stats = runs[killed[0]]
    assert status == "abandoned"
    stats = json.loads(stats)
    finder = runs[stats["found_by_run"]]
    assert finder[0] == "succeeded"
    assert finished_at == finder[1]  # closed when the next run started and found it
    assert stats["found_abandoned_at"] == finished_at.isoformat()
    assert stats["abandoned"].startswith(f"found abandoned at {finished_at.isoformat()}")
    assert [s for s, *_ in runs.values()].count("running") == 0


def _lake_files(warehouse: Warehouse) -> dict[str, bytes]:
    return {str(p.relative_to(warehouse.lake_dir)): p.read_bytes() for p in sorted(warehouse.lake_dir.rglob("*.parquet"))}


def _dirty(data_dir: Path) -> set[tuple[str, str]]:
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        return {(p, d.isoformat()) for p, d in con.execute("select project_id, create_day from lake_dirty").fetchall()}


def _partition_of(relative: str) -> tuple[str, str]:
    day, project = Path(relative).parts[-3:-1]
    return project.partition("=")[2], day.partition("=")[2]


def test_sigkill_in_the_recovery_export_from_the_table(world, tmp_path):
    """A run killed after its commit leaves partitions marked; the next run exports those from the
    table with its own when it finishes, and is killed right after the first file lands there."""
    server, baseline, before = world
    data_dir = tmp_path / "data"
    shutil.copytree(baseline, data_dir)
    proc = _cli(_env(server, data_dir, VOICEJOBS_CRASHPOINT="apply_after_commit"), "sync")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"rc={proc.returncode}\n{out}\n{err}"
    marked = _dirty(data_dir)
    assert marked  # committed, not exported: the recovery export has work to do
    files_before = _lake_files(Warehouse(data_dir))

    proc = _cli(_env(server, data_dir, VOICEJOBS_CRASHPOINT="lake_replaced:1"), "sync")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"lake_replaced was not reached: rc={proc.returncode}\n{out}\n{err}"

    warehouse = Warehouse(data_dir)
    files_after = _lake_files(warehouse)
    replaced = {name for name in files_after.keys() | files_before.keys()
                if files_after.get(name) != files_before.get(name)}
    # The kill landed in the export: the partitions the killed run left marked are still marked,
    # and so is each file just rewritten (two writers side by side may both have finished) ...
    still_marked = _dirty(data_dir)
    assert marked <= still_marked
    assert replaced and {_partition_of(name) for name in replaced} <= still_marked
    # ... and each file it put in place is that partition exported from the table.
    table = warehouse.jobs_table()
    for name in replaced:
        project, day = _partition_of(name)
        rows = [r for r in table.to_pylist()
                if r["project_id"] == project and r["create_time"].date().isoformat() == day]
        lake = pq.read_table(warehouse.lake_dir / name).select(table.column_names).cast(table.schema)
        assert lake.to_pylist() == sorted(rows, key=lambda r: r["job_id"]), name
    _assert_consistent(data_dir, before, _truth_rows(server))

    proc = _cli(_env(server, data_dir), "sync")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    _assert_repaired(server, data_dir)


def test_successive_runs_sigkilled_at_seeded_moments(tmp_path, make_simulator):
    """Kills at moments the sync does not choose, drawn from a seeded RNG and never timed."""
    server = make_simulator(jobs=4000, seed=29, days=DAYS, projects=PROJECTS, now=SIM_NOW)
    rng = random.Random(5)
    data_dir = tmp_path / "data"
    days = ("--since", FIRST_DAY.isoformat(), "--until", SIM_NOW.date().isoformat())
    with HostileProxy(server.url) as proxy:
        truth = _truth_rows(server)

        def env(directory: Path, **extra: str) -> dict[str, str]:
            return _env(server, directory, METASTUDIO_ENDPOINT=proxy.url, **extra)

        # What one whole run does here, counted rather than timed: its pages and its lake files.
        pages = {"seen": 0}

        def count(target: str, page: dict) -> dict:
            pages["seen"] += 1
            return page

        proxy.page_hook = count
        probe = _cli(env(tmp_path / "probe"), "sync", *days)
        _, err = probe.communicate(timeout=120)
        assert probe.returncode == 0, err
        whole_run_pages = pages["seen"]
        lake_files = len(list(Warehouse(tmp_path / "probe").lake_dir.rglob("*.parquet")))
        assert whole_run_pages > 20 and lake_files > 20

        plans = [
            ("page", rng.randint(whole_run_pages // 4, whole_run_pages - 1)),  # nothing committed yet
            ("lake_tmp_written", rng.randint(1, lake_files)),  # committed, lake half written
            ("page", rng.randint(whole_run_pages // 4, whole_run_pages - 1)),  # the half-written lake waits
            ("lake_replaced", rng.randint(1, lake_files)),  # the run's lake export, mid-way
        ]
        for how, nth in plans:
            if how == "page":
                started = threading.Event()
                running: dict[str, subprocess.Popen] = {}
                pages["seen"] = 0

                def kill_at_the_nth_page(target: str, page: dict, nth: int = nth, started: threading.Event = started,
                                         running: dict = running) -> dict:
                    pages["seen"] += 1
                    if pages["seen"] == nth:
                        started.wait()
                        running["proc"].send_signal(signal.SIGKILL)  # while this page is still unanswered
                    return page

                proxy.page_hook = kill_at_the_nth_page
                running["proc"] = proc = _cli(env(data_dir), "sync", *days)
                started.set()
            else:
                proxy.page_hook = None
                proc = _cli(env(data_dir, VOICEJOBS_CRASHPOINT=f"{how}:{nth}"), "sync", *days)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == -signal.SIGKILL, f"{how} {nth} did not kill: rc={proc.returncode}\n{out}\n{err}"
            if (data_dir / "warehouse.duckdb").exists():
                _assert_consistent(data_dir, {}, truth)

        proxy.page_hook = None
        proc = _cli(env(data_dir), "sync", *days)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        _assert_repaired(server, data_dir)
