"""One warehouse, one source: demo data never mixes with real data, and simulated runs say so.

Each case runs ``voicejobs`` as a user would (a subprocess with environment variables) and
counts the requests each simulator saw, so "stopped before fetching" is a fact, not a hope.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from pipelines.source import SIMULATOR_ORIGIN, SourceIdentity, identity_of
from pipelines.warehouse import Warehouse
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

REPO = Path(__file__).resolve().parents[2]
SINCE = (SIM_NOW - timedelta(days=5)).date().isoformat()
UNTIL = SIM_NOW.date().isoformat()
DATES = ("--since", SINCE, "--until", UNTIL)


def _config(seed: int) -> dict:
    return dict(jobs=200, seed=seed, days=5, projects=PROJECTS, now=SIM_NOW)


@pytest.fixture(scope="module")
def servers(make_module_simulator):
    return make_module_simulator(**_config(3)), make_module_simulator(**_config(4))


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_"))}
    env.update(values)
    return env


def env_for(server, data_dir, projects=PROJECTS) -> dict[str, str]:
    ak, sk = next(iter(server.state.config.credentials.items()))
    return clean_env(METASTUDIO_ENDPOINT=server.url, HUAWEICLOUD_SDK_AK=ak, HUAWEICLOUD_SDK_SK=sk,
                     HUAWEICLOUD_SDK_PROJECT_ID=",".join(projects), VOICEJOBS_DATA_DIR=str(data_dir),
                     VOICEJOBS_SAFETY_LAG_SECONDS="0", VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0", VOICEJOBS_MAX_ATTEMPTS="2", VOICEJOBS_TIMEOUT_SECONDS="5")


def voicejobs(env, *args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def api_requests(server) -> int:
    return server.stats["requests"]


def recorded(data_dir: Path) -> SourceIdentity | None:
    con = duckdb.connect(str(Path(data_dir) / "warehouse.duckdb"), read_only=True)
    try:
        row = con.execute("SELECT value FROM warehouse_meta WHERE key = 'source'").fetchone()
    finally:
        con.close()
    return SourceIdentity.from_json(row[0]) if row else None


def test_the_origin_is_recorded_without_path_user_or_credentials(tmp_path, servers):
    first, _ = servers
    settings = sim_settings(first, tmp_path).with_(endpoint=first.url.replace("http://", "http://user:pw@") + "/v1/")
    identity = identity_of(settings)
    assert identity == SourceIdentity(first.url.rstrip("/"))
    assert "pw" not in identity.to_json() and "user" not in identity.to_json()
    assert identity_of(settings.with_(endpoint="HTTPS://MetaStudio.Example:443/x")).origin == "https://metastudio.example"


def test_a_sync_from_another_source_stops_before_fetching_and_names_both(tmp_path, servers):
    first, second = servers
    done = voicejobs(env_for(first, tmp_path), "sync", *DATES)
    assert done.returncode == 0, done.stderr
    assert recorded(tmp_path) == SourceIdentity(first.url)
    before_rows = Warehouse(tmp_path).jobs_table()
    requests_before = api_requests(second)

    refused = voicejobs(env_for(second, tmp_path), "sync", *DATES)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert first.url in lines[0] and second.url in lines[0] and "--data-dir" in lines[0]
    assert api_requests(second) == requests_before  # stopped before a single request
    assert Warehouse(tmp_path).jobs_table().equals(before_rows)  # nothing written
    assert recorded(tmp_path) == SourceIdentity(first.url)


def test_another_project_of_the_same_source_is_welcome(tmp_path, servers):
    first, _ = servers
    assert voicejobs(env_for(first, tmp_path, projects=PROJECTS[:1]), "sync", *DATES).returncode == 0
    again = voicejobs(env_for(first, tmp_path), "sync", *DATES)
    assert again.returncode == 0, again.stderr
    projects = set(Warehouse(tmp_path).jobs_table()["project_id"].to_pylist())
    assert projects == set(PROJECTS)


def test_nothing_configured_never_fills_a_real_warehouse_with_simulated_jobs(tmp_path, servers):
    first, _ = servers
    assert voicejobs(env_for(first, tmp_path), "sync", *DATES).returncode == 0
    rows = Warehouse(tmp_path).jobs_table()

    refused = voicejobs(clean_env(VOICEJOBS_DATA_DIR=str(tmp_path)), "sync", *DATES)
    assert refused.returncode == 1
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "embedded simulator" in line and "METASTUDIO_REGION" in line
    assert Warehouse(tmp_path).jobs_table().equals(rows)
    assert recorded(tmp_path) == SourceIdentity(first.url)


def test_nothing_configured_on_a_new_directory_syncs_the_simulator_and_says_so(tmp_path):
    done = voicejobs(clean_env(VOICEJOBS_DATA_DIR=str(tmp_path / "new")), "sync", *DATES)
    assert done.returncode == 0, done.stderr
    assert "SIMULATED DATA" in done.stdout.splitlines()[0]
    assert recorded(tmp_path / "new") == SourceIdentity(SIMULATOR_ORIGIN, simulated=True)
    # ... and it may do so again: the directory is simulated already
    again = voicejobs(clean_env(VOICEJOBS_DATA_DIR=str(tmp_path / "new")), "sync", *DATES)
    assert again.returncode == 0, again.stderr
    con = duckdb.connect(str(tmp_path / "new" / "warehouse.duckdb"), read_only=True)
    try:
        runs = con.execute("SELECT status, stats FROM sync_runs ORDER BY started_at").fetchall()
    finally:
        con.close()
    assert [status for status, _ in runs] == ["succeeded", "succeeded"]
    assert all('"simulated": true' in stats for _, stats in runs)


def test_the_demo_writes_its_own_directory_and_a_real_source_is_refused_there(tmp_path, servers):
    first, _ = servers
    demo = voicejobs(clean_env(), "demo", "--jobs", "300", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert not (tmp_path / "data").exists()  # the real syncs' default stays untouched
    assert recorded(tmp_path / "demo-data") == SourceIdentity(SIMULATOR_ORIGIN, simulated=True)
    assert "simulated" in demo.stdout.lower()

    refused = voicejobs(env_for(first, tmp_path / "demo-data"), "sync", *DATES)
    assert refused.returncode == 1
    assert "embedded MetaStudio simulator" in refused.stderr and first.url in refused.stderr


def test_the_simulator_on_request_is_refused_in_a_real_warehouse(tmp_path, servers):
    first, _ = servers
    assert voicejobs(env_for(first, tmp_path), "sync", *DATES).returncode == 0
    refused = voicejobs(env_for(first, tmp_path), "sync", "--simulator", *DATES)
    assert refused.returncode == 1
    assert first.url in refused.stderr and "simulator" in refused.stderr
