"""The lake in object storage: VOICEJOBS_LAKE_URI=s3://bucket/prefix on a real S3 server.

The server is moto's, over HTTP on loopback, checking request signatures (tests/support/s3.py).
A sync leaves the S3 lake equal to the warehouse table, read back as any reader would
(pyarrow.dataset with hive partitioning); the secret key appears in no output and no file;
an unreachable store or a wrong key is one line naming the cause and the fix; and a write
that fails or is killed leaves the previous object readable.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from pipelines import cli
from pipelines.ingest import normalize
from pipelines.metastudio.errors import ConfigurationError
from pipelines.resources import WarehouseResource, warehouse_from_env
from pipelines.settings import Settings
from pipelines.sync import sync
from pipelines.warehouse import LakeExportError, S3LakeStore, Warehouse, WarehouseError
from pipelines.warehouse import s3store as s3store_module
from tests.support.lake import lake_file, lake_keys
from tests.support.s3 import S3Lake
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

REPO = Path(__file__).resolve().parents[2]
DAYS = 10
FIRST_DAY = (SIM_NOW - timedelta(days=DAYS + 1)).date()


@pytest.fixture(scope="module")
def simulator(make_module_simulator):
    return make_module_simulator(jobs=1500, seed=31, days=DAYS, projects=PROJECTS, now=SIM_NOW)


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("project_id", "ascending"), ("job_id", "ascending")])


def assert_lake_equals_table(lake: S3Lake, warehouse: Warehouse) -> None:
    table = _sorted(warehouse.jobs_table())
    read = lake.read()
    assert "create_day" in read.column_names  # the partition column comes from the object keys
    read = _sorted(read.select(table.column_names).cast(table.schema))
    assert read.num_rows == table.num_rows > 0
    assert read.equals(table), "the S3 lake differs from the jobs table"
    assert all(key.endswith("/data.parquet") for key in lake.keys()), lake.keys()


def test_a_sync_leaves_the_s3_lake_equal_to_the_warehouse_table(simulator, s3_lake: S3Lake, tmp_path):
    settings = sim_settings(simulator, tmp_path / "data", first_day=FIRST_DAY).with_(
        lake_uri=s3_lake.uri, object_store=s3_lake.server.access())
    warehouse = Warehouse.for_settings(settings)
    sync(settings, mode="days", since=FIRST_DAY, until=SIM_NOW.date(), warehouse=warehouse)
    assert warehouse.lake_dir is None and not (tmp_path / "data" / "lake").exists()
    assert_lake_equals_table(s3_lake, warehouse)
    # Change capture merges the batch into the partitions' old objects read back from S3.
    changes = simulator.state.advance(2 * 86400)
    assert changes["transitioned"]
    sync(settings, mode="incremental", warehouse=warehouse)
    assert_lake_equals_table(s3_lake, warehouse)


def _cli(env: dict[str, str], data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args, "--data-dir", str(data_dir)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def _env(simulator, **values: str) -> dict[str, str]:
    config = simulator.state.config
    ak, sk = next(iter(config.credentials.items()))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_", "AWS_"))}
    env.update(METASTUDIO_ENDPOINT=simulator.url, HUAWEICLOUD_SDK_AK=ak, HUAWEICLOUD_SDK_SK=sk,
               HUAWEICLOUD_SDK_PROJECT_ID=",".join(config.projects), VOICEJOBS_FIRST_DAY=FIRST_DAY.isoformat(),
               VOICEJOBS_SAFETY_LAG_SECONDS="0", VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0")
    env.update(values)
    return env


def test_the_secret_key_appears_in_no_output_and_no_file(simulator, s3_lake: S3Lake, tmp_path):
    secret = s3_lake.server.secret_access_key
    data_dir = tmp_path / "data"
    env = _env(simulator, **s3_lake.server.env(s3_lake.uri))
    result = _cli(env, data_dir, "-v", "sync", "--since", FIRST_DAY.isoformat(),
                  "--until", SIM_NOW.date().isoformat())
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "warehouse.duckdb" for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), f"the secret key is in {path}"
    assert not (data_dir / "lake").exists()  # the lake went to S3
    assert_lake_equals_table(s3_lake, Warehouse(data_dir, lake_uri=s3_lake.uri, object_store=s3_lake.server.access()))

    # A wrong key is refused by the store: one line, the cause and the fix, no key in it.
    wrong = "wrong-" + secret[::-1]
    result = _cli({**env, "AWS_SECRET_ACCESS_KEY": wrong}, data_dir, "sync")
    line = _one_clear_line(result)
    assert "refused the credentials" in line and "AWS_SECRET_ACCESS_KEY" in line
    assert wrong not in result.stdout + result.stderr and secret not in result.stdout + result.stderr


def _one_clear_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("voicejobs sync: "), result.stderr
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_store_is_one_line_naming_the_endpoint_and_the_fix(simulator, s3_lake: S3Lake, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = _env(simulator, **s3_lake.server.env(s3_lake.uri, AWS_ENDPOINT_URL=endpoint))
    result = _cli(env, tmp_path / "data", "sync")
    line = _one_clear_line(result)
    assert f"the object store at {endpoint} cannot be reached" in line
    assert "check AWS_ENDPOINT_URL" in line and s3_lake.uri in line
    assert simulator.state.config.projects[0] not in line  # it stopped before reading the source


def test_a_missing_bucket_and_a_foreign_scheme_say_what_to_write(s3_server, tmp_path):
    with pytest.raises(WarehouseError) as err:
        Warehouse(tmp_path / "d", lake_uri="s3://no-such-bucket/x", object_store=s3_server.access())
    assert "the bucket no-such-bucket does not exist" in str(err.value)
    assert str(err.value).endswith("create it, or point VOICEJOBS_LAKE_URI at an existing bucket")
    with pytest.raises(ConfigurationError, match="use a local directory or s3://bucket/prefix"):
        Settings.from_env({"VOICEJOBS_LAKE_URI": "gs://bucket/lake"})
    with pytest.raises(ConfigurationError, match="does not name a bucket"):
        Settings.from_env({"VOICEJOBS_LAKE_URI": "s3://Not_A_Bucket/lake"})
    with pytest.raises(ConfigurationError, match="AWS_SECRET_ACCESS_KEY is not set"):
        Settings.from_env({"VOICEJOBS_LAKE_URI": "s3://bucket/lake", "AWS_ACCESS_KEY_ID": "only-the-id"})
    # A local lake does not care about AWS_* variables meant for other tools.
    local = Settings.from_env({"VOICEJOBS_LAKE_URI": str(tmp_path / "lake"), "AWS_ACCESS_KEY_ID": "only-the-id"})
    assert Warehouse.for_settings(local).lake_dir == tmp_path / "lake" / "voice_training_jobs"


def _s3_warehouse(tmp_path: Path, lake: S3Lake) -> Warehouse:
    return Warehouse(tmp_path / "data", lake_uri=lake.uri, object_store=lake.server.access())


def _batch(state: str) -> pa.Table:
    """200 jobs of one project created on 2025-03-01, all in ``state``: one partition."""
    created = datetime(2025, 3, 1, tzinfo=UTC)
    records = [{"job_id": f"j{i:03d}", "state": state, "create_time": int(created.timestamp()) + i,
                "lastupdate_time": int((created + timedelta(minutes=i)).timestamp() * 1000)} for i in range(200)]
    return normalize(records, "p1", datetime(2025, 3, 5, tzinfo=UTC)).table


KEY = "create_day=2025-03-01/project_id=p1/data.parquet"


def test_a_large_file_is_copied_into_place_from_a_temporary_key(s3_lake: S3Lake, tmp_path, monkeypatch):
    wh = _s3_warehouse(tmp_path, s3_lake)
    run = wh.begin_run("days", {})
    wh.apply(run, jobs=_batch("CREATING"))
    monkeypatch.setattr(s3store_module, "SINGLE_PUT_BYTES", 1)  # every file counts as large
    wh.apply(run, jobs=_batch("SUCCEED"))
    assert set(lake_file(wh, KEY)["state"].to_pylist()) == {"SUCCEED"}
    assert lake_keys(wh) == [KEY]  # the temporary key is gone


def test_an_upload_that_fails_midway_leaves_the_old_object(s3_lake: S3Lake, tmp_path, monkeypatch):
    """pyarrow's S3 writer, closed after an error, completes the upload with what it has; the
    lake's writes must never let such a partial object replace a partition's file."""
    wh = _s3_warehouse(tmp_path, s3_lake)
    run = wh.begin_run("days", {})
    wh.apply(run, jobs=_batch("CREATING"))
    old = lake_file(wh, KEY)
    monkeypatch.setattr(s3store_module, "SINGLE_PUT_BYTES", 1)

    def half_then_fail(self: S3LakeStore, path: str, data: pa.Buffer) -> None:
        with self.filesystem.open_output_stream(path) as out:
            out.write(data[: data.size // 2])
            raise OSError("connection reset while uploading")

    monkeypatch.setattr(S3LakeStore, "_put", half_then_fail)
    assert wh.apply(run, jobs=_batch("SUCCEED")).partitions_failed == 1
    assert lake_file(wh, KEY).equals(old)
    assert lake_keys(wh) == [KEY]
    with pytest.raises(LakeExportError) as err:
        wh.export_dirty_partitions()
    assert f"{s3_lake.uri}/voice_training_jobs/{KEY}" in str(err.value)
    assert "check the object store" in str(err.value)
    monkeypatch.undo()
    assert wh.export_dirty_partitions() == 1
    assert set(lake_file(wh, KEY)["state"].to_pylist()) == {"SUCCEED"}


KILLED_UPLOAD = textwrap.dedent("""
    import sys
    from pathlib import Path

    from pipelines.settings import Settings
    from pipelines.warehouse import Warehouse, s3store
    from tests.integration.test_lake_s3 import _batch

    s3store.SINGLE_PUT_BYTES = int(sys.argv[2])
    wh = Warehouse.for_settings(Settings.from_env(data_dir=Path(sys.argv[1])))
    wh.apply(wh.begin_run("days", {}), jobs=_batch("SUCCEED"))
""")


@pytest.mark.parametrize("large", [False, True], ids=["one-put", "temporary-key"])
def test_a_killed_upload_leaves_the_old_object_readable(s3_lake: S3Lake, tmp_path, large):
    wh = _s3_warehouse(tmp_path, s3_lake)
    wh.apply(wh.begin_run("days", {}), jobs=_batch("CREATING"))
    old = lake_file(wh, KEY)
    env = {**os.environ, "VOICEJOBS_CRASHPOINT": "lake_tmp_written"}
    proc = subprocess.run([sys.executable, "-c", KILLED_UPLOAD, str(tmp_path / "data"), "1" if large else str(1 << 30)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr
    assert lake_file(wh, KEY).equals(old)
    left = [key for key in lake_keys(wh) if key != KEY]
    assert len(left) == (1 if large else 0) and all(k.endswith(".parquet.tmp") for k in left)
    assert wh.rebuild_lake() == 1
    assert lake_keys(wh) == [KEY]
    assert set(lake_file(wh, KEY)["state"].to_pylist()) == {"SUCCEED"}


def test_the_cli_and_dagster_put_the_lake_in_the_same_place(s3_lake: S3Lake, tmp_path, monkeypatch):
    monkeypatch.setenv("VOICEJOBS_DATA_DIR", str(tmp_path / "data"))
    seen = []

    @dg.asset
    def probe(warehouse: WarehouseResource) -> None:
        seen.append(warehouse.warehouse().lake.root)

    assert dg.materialize([probe], resources={"warehouse": warehouse_from_env()}).success
    from_cli = Warehouse.for_settings(cli._settings(argparse.Namespace(data_dir=None))).lake.root
    assert seen == [from_cli] == [f"{s3_lake.uri}/voice_training_jobs"]


@pytest.mark.parametrize(("endpoint", "style", "virtual"), [
    ("https://obs.cn-north-4.myhuaweicloud.com", None, True),  # OBS answers path-style with VirtualHostDomainRequired
    ("http://127.0.0.1:9000", None, False),  # no bucket.<IP> host name can resolve
    ("http://localhost:9000", None, False),
    ("https://minio.example.internal", "path", False),
    ("http://10.0.0.5:9000", "vhost", True),
])
def test_the_bucket_goes_in_the_host_name_unless_the_endpoint_cannot_have_one(endpoint, style, virtual):
    from pipelines.settings import ObjectStoreAccess
    from pipelines.warehouse.s3store import _virtual_addressing

    assert _virtual_addressing(ObjectStoreAccess(endpoint_url=endpoint, url_style=style)) is virtual



def test_the_place_a_warehouse_records_for_its_lake_holds_no_credentials_of_the_endpoint():
    """The lake's place (kept in warehouse_meta, named in the warning when the lake moved) takes
    the endpoint's scheme, host and port, never a user or password written into its URL."""
    from pipelines.settings import ObjectStoreAccess
    from pipelines.warehouse.s3store import S3LakeStore

    access = ObjectStoreAccess(endpoint_url="http://lake-user:lake-password@127.0.0.1:9000/ignored?x=1")
    store = S3LakeStore("bucket", "prefix", access)
    assert store.place == "s3://bucket/prefix/voice_training_jobs at http://127.0.0.1:9000"
    assert S3LakeStore("bucket", "", ObjectStoreAccess()).place == "s3://bucket/voice_training_jobs at AWS"

def test_the_lake_benchmark_runs_at_its_smallest_size(tmp_path):
    """benchmarks/lake.py end to end (no timing is asserted): every lake is exported and reported."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lake.py"), "--jobs", "300", "--days", "4",
                           "--runs", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.split("runs (s)\n", 1)[1].splitlines()[:3]
    rows = {line.split()[0]: line.split() for line in table}
    assert set(rows) == {"none", "local", "s3"}
    assert rows["local"][1] == rows["s3"][1] == rows["none"][1] != "0"  # the same files everywhere
    assert rows["local"][2] == rows["s3"][2] != "0.0"  # and the same bytes
    assert "s3 / local:" in proc.stdout
