"""Bad configuration: one clear line naming the cause and the fix, a non-zero exit, no traceback,
no retry storm, and the warehouse of earlier runs untouched.

Every case runs ``voicejobs sync`` as a user would (a subprocess with environment variables)
against the simulator on loopback, and counts the requests the simulator saw.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from pipelines.simulator import SimulatorConfig, SimulatorServer
from pipelines.warehouse import Warehouse
from tests.conftest import PROJECTS, SIM_NOW

REPO = Path(__file__).resolve().parent.parent
SINCE = (SIM_NOW - timedelta(days=10)).date().isoformat()
UNTIL = SIM_NOW.date().isoformat()
DATES = ("--since", SINCE, "--until", UNTIL)


@pytest.fixture(scope="module")
def server():
    config = SimulatorConfig(jobs=300, seed=3, days=10, projects=PROJECTS, now=SIM_NOW)
    with SimulatorServer(config) as sim:
        yield sim


def env_for(server, data_dir, **changes) -> dict[str, str]:
    ak, sk = next(iter(server.state.config.credentials.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_"))}
    env.update(METASTUDIO_ENDPOINT=server.url, HUAWEICLOUD_SDK_AK=ak, HUAWEICLOUD_SDK_SK=sk,
               HUAWEICLOUD_SDK_PROJECT_ID=",".join(PROJECTS), VOICEJOBS_DATA_DIR=str(data_dir),
               VOICEJOBS_SAFETY_LAG_SECONDS="0", VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0", VOICEJOBS_MAX_ATTEMPTS="3", VOICEJOBS_TIMEOUT_SECONDS="5")
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def voicejobs(env, *args, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn)


def assert_one_clear_line(result, *phrases: str, code: int = 1) -> str:
    """Exit ``code``, no traceback, and a last stderr line holding every phrase (any case)."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # Only retry warnings of a retryable cause may come before the one line that ends the run.
    assert lines and all("retrying in" in line for line in lines[:-1]), result.stderr
    assert lines[-1].startswith("voicejobs sync: "), result.stderr
    for phrase in phrases:
        assert phrase.lower() in lines[-1].lower(), lines[-1]
    return lines[-1]


def requests_during(server, fn):
    before = server.stats["requests"]
    result = fn()
    return result, server.stats["requests"] - before


def test_no_credentials(server, tmp_path):
    env = env_for(server, tmp_path, HUAWEICLOUD_SDK_AK=None, HUAWEICLOUD_SDK_SK=None)
    result, requests = requests_during(server, lambda: voicejobs(env, "sync", *DATES))
    assert_one_clear_line(result, "No credentials are configured", "HUAWEICLOUD_SDK_AK", "METASTUDIO_AUTH_TOKEN")
    assert requests == 0


def test_wrong_secret_key(server, tmp_path):
    env = env_for(server, tmp_path, HUAWEICLOUD_SDK_SK="not-the-right-secret")
    result, requests = requests_during(server, lambda: voicejobs(env, "sync", *DATES))
    line = assert_one_clear_line(result, "rejected the request signature", "HUAWEICLOUD_SDK_SK")
    assert "not-the-right-secret" not in line
    assert requests == 1  # a refusal is final: no retry


def test_unknown_access_key(server, tmp_path):
    env = env_for(server, tmp_path, HUAWEICLOUD_SDK_AK="NOSUCHACCESSKEY")
    result, requests = requests_during(server, lambda: voicejobs(env, "sync", *DATES))
    assert_one_clear_line(result, "HTTP 401", "HUAWEICLOUD_SDK_AK")
    assert requests == 1


def test_expired_token(server, tmp_path):
    env = env_for(server, tmp_path, HUAWEICLOUD_SDK_AK=None, HUAWEICLOUD_SDK_SK=None,
                  METASTUDIO_AUTH_TOKEN="expired-token")
    result, requests = requests_during(server, lambda: voicejobs(env, "sync", *DATES))
    assert_one_clear_line(result, "invalid or expired", "METASTUDIO_AUTH_TOKEN")
    assert requests == 1


def test_wrong_project_id(server, tmp_path):
    env = env_for(server, tmp_path, HUAWEICLOUD_SDK_PROJECT_ID="00000000000000000000000000000000")
    result, requests = requests_during(server, lambda: voicejobs(env, "sync", *DATES))
    assert_one_clear_line(result, "refused access to the project", "HUAWEICLOUD_SDK_PROJECT_ID")
    assert requests == 1


def test_unreachable_endpoint(server, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = env_for(server, tmp_path, METASTUDIO_ENDPOINT=f"http://127.0.0.1:{port}")
    result = voicejobs(env, "sync", *DATES)
    line = assert_one_clear_line(result, "Cannot reach", "127.0.0.1", "after 3 attempts", "METASTUDIO_ENDPOINT")
    assert "refused" in line
    assert result.stderr.count("retrying in") == 2  # the attempt budget, no storm


def test_endpoint_that_is_not_a_url(server, tmp_path):
    env = env_for(server, tmp_path, METASTUDIO_ENDPOINT="metastudio.example.com")
    result = voicejobs(env, "sync", *DATES)
    assert_one_clear_line(result, "METASTUDIO_ENDPOINT", "not an http(s) URL")


@pytest.mark.parametrize(
    "args, phrases",
    [
        (("--since", "2026-02-30", "--until", UNTIL), ("--since", "not a valid date", "YYYY-MM-DD")),
        (("--since", "yesterday", "--until", UNTIL), ("--since", "not a valid date", "YYYY-MM-DD")),
        (("--since", UNTIL, "--until", SINCE), ("is before --since", "swap them")),
        (("--since", SINCE), ("give both --since and --until",)),
    ],
)
def test_bad_or_reversed_dates(server, tmp_path, args, phrases):
    result, requests = requests_during(server, lambda: voicejobs(env_for(server, tmp_path), "sync", *args))
    assert result.returncode != 0
    assert_one_clear_line(result, *phrases, code=result.returncode)
    assert requests == 0


def test_data_directory_that_cannot_be_written(server, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = env_for(server, blocker / "data")  # root ignores permissions, not a file in the way
    result, requests = requests_during(server, lambda: voicejobs(env, "sync", *DATES))
    assert_one_clear_line(result, "cannot create or write the data directory", "VOICEJOBS_DATA_DIR")
    assert requests == 0


def _file_size_limit(limit: int):
    def apply() -> None:
        # Writes past the limit then fail with EFBIG, as on a full disk, instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_keeps_the_previous_warehouse(server, tmp_path):
    env = env_for(server, tmp_path)
    assert voicejobs(env, "sync", *DATES).returncode == 0
    before = Warehouse(tmp_path).jobs_table().to_pylist()
    assert before

    # A disk with (almost) no space left: no file may grow past 64 KiB.
    result = voicejobs(env, "sync", "--since", (SIM_NOW - timedelta(days=12)).date().isoformat(),
                       "--until", UNTIL, preexec_fn=_file_size_limit(64 * 1024))
    assert_one_clear_line(result, "free space", str(tmp_path))

    after = Warehouse(tmp_path).jobs_table().to_pylist()
    assert after == before
    # and once space is back, the sync goes through
    assert voicejobs(env, "sync", *DATES).returncode == 0


# The CLI, with the disk filling up the moment the SQL models start to refresh: from then on
# no file may grow past 1 KiB (as test_full_disk_keeps_the_previous_warehouse, for the models).
_FULL_DISK_AT_MODEL_REFRESH = """
import resource, signal, sys
import pipelines.models as models
refresh = models.refresh_models
def refresh_on_a_full_disk(*args, **kwargs):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return refresh(*args, **kwargs)
models.refresh_models = refresh_on_a_full_disk
from pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_during_the_model_refresh(server, tmp_path):
    import duckdb

    env = env_for(server, tmp_path)
    assert voicejobs(env, "sync", *DATES).returncode == 0
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        daily_before = con.execute("select * from analytics.daily_job_stats order by all").fetchall()
    before = Warehouse(tmp_path).jobs_table().num_rows
    assert daily_before and before

    result = subprocess.run([sys.executable, "-c", _FULL_DISK_AT_MODEL_REFRESH, "sync", *DATES], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    line = assert_one_clear_line(result, "free space", str(tmp_path / "warehouse.duckdb"), "keeps its data")
    assert "SQL models" in line

    # The warehouse keeps its data and the models their previous state; with space back, all goes through.
    assert Warehouse(tmp_path).jobs_table().num_rows == before
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("select * from analytics.daily_job_stats order by all").fetchall() == daily_before
    assert voicejobs(env, "sync", *DATES).returncode == 0
