"""Known AK, SK, security-token and IAM-token values never leave the process.

Syncs run with distinctive credential values (verbose logging on), through the CLI and
through a Dagster materialization on a persistent temporary instance, plus runs that
fail on a wrong secret. None of the values may appear in stdout/stderr, exception texts,
the Dagster event log (every record, serialized) or any byte of any file under the data
directory or the Dagster home (warehouse.duckdb, serving.duckdb, Parquet, SQLite).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from assets.jobs import voice_training_jobs
from pipelines.metastudio.errors import AuthenticationError
from pipelines.resources import MetaStudioResource, WarehouseResource
from pipelines.simulator import SimulatorConfig, SimulatorServer
from pipelines.sync import sync
from tests.conftest import PROJECTS, SIM_NOW, sim_settings

REPO = Path(__file__).resolve().parent.parent
AK = "AKLEAKCANARY7Q2W9E"
SK = "sk-leak-canary-5f3a9d1e"
TEMP_AK = "TEMPAKCANARY4R8T6Y"
TEMP_SK = "temp-sk-canary-0b7e2c"
SECURITY_TOKEN = "security-token-canary-93d1f7a0"
IAM_TOKEN = "iam-token-canary-6c2e8b41"
WRONG_SK = "wrong-sk-canary-1a4c7e"
SECRETS = (AK, SK, TEMP_AK, TEMP_SK, SECURITY_TOKEN, IAM_TOKEN, WRONG_SK)
SINCE = (SIM_NOW - timedelta(days=8)).date()
UNTIL = SIM_NOW.date()


@pytest.fixture(scope="module")
def server():
    config = SimulatorConfig(
        jobs=400, seed=17, days=8, projects=PROJECTS, now=SIM_NOW,
        credentials={AK: SK}, tokens=frozenset({IAM_TOKEN}),
        temporary_credentials={TEMP_AK: (TEMP_SK, SECURITY_TOKEN)},
        # a few retries, so that retry logging is exercised as well
        fault_rate=0.1, faults=("500", "502", "truncated"),
    )
    with SimulatorServer(config) as sim:
        yield sim


def assert_clean(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in SECRETS:
        assert secret.encode() not in data, f"{secret!r} found in {where}"


def assert_files_clean(root: Path) -> int:
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        assert_clean(path.read_bytes(), str(path))
    return len(files)


def cli(server, data_dir, **credentials) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_"))}
    env.update(METASTUDIO_ENDPOINT=server.url, HUAWEICLOUD_SDK_PROJECT_ID=",".join(PROJECTS),
               VOICEJOBS_DATA_DIR=str(data_dir), VOICEJOBS_SAFETY_LAG_SECONDS="0", VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0", **credentials)
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "-v", "sync", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat()],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("credentials", [
    {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK},
    {"HUAWEICLOUD_SDK_AK": TEMP_AK, "HUAWEICLOUD_SDK_SK": TEMP_SK, "HUAWEICLOUD_SDK_SECURITY_TOKEN": SECURITY_TOKEN},
    {"METASTUDIO_AUTH_TOKEN": IAM_TOKEN},
], ids=["aksk", "temporary-aksk", "token"])
def test_cli_sync_leaks_no_credential(server, tmp_path, credentials):
    result = cli(server, tmp_path, **credentials)
    assert result.returncode == 0, result.stderr
    assert "retries" in result.stdout  # the summary, with its retry line
    assert_clean(result.stdout + result.stderr, "CLI output")
    assert assert_files_clean(tmp_path) >= 3  # warehouse, serving snapshot, parquet files


@pytest.mark.parametrize("credentials", [
    {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": WRONG_SK},
    {"HUAWEICLOUD_SDK_AK": TEMP_AK, "HUAWEICLOUD_SDK_SK": TEMP_SK, "HUAWEICLOUD_SDK_SECURITY_TOKEN": WRONG_SK},
    {"METASTUDIO_AUTH_TOKEN": WRONG_SK},
], ids=["wrong-sk", "wrong-security-token", "wrong-token"])
def test_failing_cli_sync_leaks_no_credential(server, tmp_path, credentials):
    result = cli(server, tmp_path, **credentials)
    assert result.returncode == 1 and "voicejobs sync:" in result.stderr
    assert_clean(result.stdout + result.stderr, "CLI output")
    assert_files_clean(tmp_path)


def test_exception_texts_leak_no_credential(server, tmp_path):
    settings = sim_settings(server, tmp_path, ak=AK, sk=WRONG_SK)
    with pytest.raises(AuthenticationError) as info:
        sync(settings, mode="days", since=SINCE, until=UNTIL)
    exc = info.value
    assert_clean(" ".join([str(exc), repr(exc), exc.message, repr(exc.args), repr(settings)]), "exception")
    assert_files_clean(tmp_path)


def test_dagster_event_log_and_storage_leak_no_credential(server, tmp_path, caplog):
    home, data_dir = tmp_path / "dagster_home", tmp_path / "data"
    home.mkdir()
    resources = {
        "metastudio": MetaStudioResource(endpoint=server.url, ak=TEMP_AK, sk=TEMP_SK, security_token=SECURITY_TOKEN,
                                         project_ids=",".join(PROJECTS), safety_lag_seconds=0, max_clock_skew_seconds=0,
                                         first_day=SINCE.isoformat()),
        "warehouse": WarehouseResource(data_dir=str(data_dir)),
    }
    bad = dict(resources, metastudio=MetaStudioResource(endpoint=server.url, ak=AK, sk=WRONG_SK,
                                                        project_ids=",".join(PROJECTS), safety_lag_seconds=0, max_clock_skew_seconds=0,
                                                        first_day=SINCE.isoformat()))
    caplog.set_level("DEBUG")
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        good = dg.materialize([voice_training_jobs], partition_key=UNTIL.isoformat(), resources=resources,
                              instance=instance)
        assert good.success
        failed = dg.materialize([voice_training_jobs], partition_key=UNTIL.isoformat(), resources=bad,
                                instance=instance, raise_on_error=False)
        assert not failed.success
        records = []
        for run in (good, failed):
            records += instance.all_logs(run.run_id)
        assert len(records) > 10
        failure_texts = [serialize_value(e) for e in failed.all_events if e.is_failure]
        assert failure_texts and any("rejected" in t for t in failure_texts)
        for entry in records:
            assert_clean(serialize_value(entry), f"event log record {entry.dagster_event_type}")
            assert_clean(entry.user_message or "", "event log message")
    assert_clean("\n".join(r.getMessage() for r in caplog.records), "logs")
    assert_files_clean(home)
    assert_files_clean(data_dir)
