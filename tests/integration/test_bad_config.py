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
from datetime import date, timedelta
from pathlib import Path

import pytest

from pipelines.settings import Settings
from pipelines.warehouse import Warehouse
from tests.support.expected import assert_rows_equal, epoch
from tests.support.simulators import PROJECTS, SIM_NOW

REPO = Path(__file__).resolve().parents[2]
SINCE = (SIM_NOW - timedelta(days=10)).date().isoformat()
UNTIL = SIM_NOW.date().isoformat()
DATES = ("--since", SINCE, "--until", UNTIL)


@pytest.fixture(scope="module")
def server(make_module_simulator):
    return make_module_simulator(jobs=300, seed=3, days=10, projects=PROJECTS, now=SIM_NOW)


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


def assert_synced(server, data_dir, result, since: str = SINCE, until: str = UNTIL) -> None:
    """The run succeeded, said so, and the warehouse holds exactly the source's jobs of those days."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    first, last = (date.fromisoformat(d) for d in (since, until))
    truth = {pid: [j for j in server.state.truth(pid) if first <= epoch(j["create_time"]).date() <= last]
             for pid in PROJECTS}
    listed = sum(map(len, truth.values()))
    assert listed > 0
    assert f"jobs fetched {listed:,}, rows written {listed:,}, quarantined 0" in result.stdout, result.stdout
    live = Warehouse(data_dir).jobs_table(include_deleted=False).drop_columns(["synced_at", "deleted_at"])
    assert_rows_equal(live.to_pylist(), truth, personal_data="mask")


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
    assert result.stderr.strip() == line  # retries stay below the default level: one line in all
    # Verbose, each retry shows: the attempt budget (3), no storm.
    verbose = voicejobs(env, "-v", "sync", *DATES)
    assert assert_one_clear_line(verbose) == line
    retries = [ln for ln in verbose.stderr.splitlines() if "retrying in" in ln]
    assert [ln.split("); ")[1].split(",")[0] for ln in retries] == ["attempt 1 of 3", "attempt 2 of 3"]


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
    result, requests = requests_during(server, lambda: voicejobs(env_for(server, tmp_path / "data"), "sync", *args))
    assert_one_clear_line(result, *phrases, code=2)  # a usage error
    assert requests == 0
    assert not (tmp_path / "data").exists()  # nothing opened, nothing written


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
    assert_synced(server, tmp_path, voicejobs(env, "sync", *DATES))
    before = Warehouse(tmp_path).jobs_table().to_pylist()

    # A disk with (almost) no space left: no file may grow past 4 KiB, so the batch's commit
    # fails. (Its rows replace the stored ones in place, and DuckDB logs only the values that
    # change: re-synced jobs whose synced_at alone moved fit in 16 KiB.)
    result = voicejobs(env, "sync", "--since", (SIM_NOW - timedelta(days=12)).date().isoformat(),
                       "--until", UNTIL, preexec_fn=_file_size_limit(4 * 1024))
    assert_one_clear_line(result, "free space", str(tmp_path), "nothing of this batch was kept")

    after = Warehouse(tmp_path).jobs_table().to_pylist()
    assert after == before
    # and once space is back, the sync goes through: twelve days now, as the failed run asked
    wider = (SIM_NOW - timedelta(days=12)).date().isoformat()
    assert_synced(server, tmp_path, voicejobs(env, "sync", "--since", wider, "--until", UNTIL), since=wider)


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
    assert_synced(server, tmp_path, voicejobs(env, "sync", *DATES))
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
        [(status,)] = con.execute("select status from sync_runs order by started_at desc limit 1").fetchall()
    # Never recorded as succeeded; 'running' when the full disk refused even the record of the failure.
    assert status in ("failed", "running")
    assert_synced(server, tmp_path, voicejobs(env, "sync", *DATES))
    # the models are rebuilt and published: the snapshot readers open holds them, and no run is
    # left open (a failure the disk could not record is closed as abandoned by the next run)
    with duckdb.connect(str(tmp_path / "serving.duckdb"), read_only=True) as con:
        assert con.execute("select * from analytics.daily_job_stats order by all").fetchall() == daily_before
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        statuses = [s for (s,) in con.execute("select status from sync_runs order by started_at").fetchall()]
    assert statuses[0] == statuses[2] == "succeeded" and statuses[1] in ("failed", "abandoned"), statuses
    assert len(statuses) == 3


# The CLI, with the disk filling up once the warehouse is copied for the serving snapshot: the
# thread that strips and flushes the copy fails, while the lake is exported beside it.
_FULL_DISK_AT_SNAPSHOT = """
import resource, signal, sys
from pipelines.warehouse.serving import Serving
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (in the main thread: the strip runs in another)
strip = Serving._strip
def strip_on_a_full_disk(tmp):
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return strip(tmp)
Serving._strip = staticmethod(strip_on_a_full_disk)
from pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_while_the_serving_snapshot_is_written(server, tmp_path):
    import duckdb

    env = env_for(server, tmp_path)
    assert_synced(server, tmp_path, voicejobs(env, "sync", *DATES))
    serving_before = (tmp_path / "serving.duckdb").read_bytes()

    result = subprocess.run([sys.executable, "-c", _FULL_DISK_AT_SNAPSHOT, "sync", *DATES], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert_one_clear_line(result, "writing the serving snapshot", str(tmp_path / "serving.duckdb"), "free space")
    # Readers keep the previous snapshot, whole; no temporary copy is left; the run is not succeeded.
    assert (tmp_path / "serving.duckdb").read_bytes() == serving_before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".serving-")]
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        [(status,)] = con.execute("select status from sync_runs order by started_at desc limit 1").fetchall()
    assert status in ("failed", "running")
    assert_synced(server, tmp_path, voicejobs(env, "sync", *DATES))


# ---------------------------------------------------------------- settings refused before anything runs

_HEADER_RULE = ("must not contain control characters such as line breaks: it is sent in an HTTP header. "
                "Set it again without them.")
_PROJECT_RULE = ("is not valid; a project id is 1 to 64 ASCII letters, digits, '-' or '_' "
                 "(the 32-character id from the console's 'My Credentials' page).")


@pytest.mark.parametrize("name, value, message", [
    ("VOICEJOBS_PERSONAL_DATA", "plain", "VOICEJOBS_PERSONAL_DATA='plain' is not known; use 'mask' (default) or 'raw'."),
    ("VOICEJOBS_PERSONAL_DATA", "Masked", "VOICEJOBS_PERSONAL_DATA='masked' is not known; use 'mask' (default) or 'raw'."),
    ("METASTUDIO_APP_USER_ID", "用户42", "METASTUDIO_APP_USER_ID must not contain Chinese characters (an API rule)."),
    ("METASTUDIO_APP_USER_ID", "user-中", "METASTUDIO_APP_USER_ID must not contain Chinese characters (an API rule)."),
    ("METASTUDIO_APP_USER_ID", "user\r\nX-Injected: 1", f"METASTUDIO_APP_USER_ID {_HEADER_RULE}"),
    ("HUAWEICLOUD_SDK_SECURITY_TOKEN", "tok\nen", f"HUAWEICLOUD_SDK_SECURITY_TOKEN {_HEADER_RULE}"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", "proj.1", f"Project id 'proj.1' in HUAWEICLOUD_SDK_PROJECT_ID {_PROJECT_RULE}"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", "p 1", f"Project id 'p 1' in HUAWEICLOUD_SDK_PROJECT_ID {_PROJECT_RULE}"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", f"{PROJECTS[0]},../lake", f"Project id '../lake' in HUAWEICLOUD_SDK_PROJECT_ID {_PROJECT_RULE}"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", "项目", f"Project id '项目' in HUAWEICLOUD_SDK_PROJECT_ID {_PROJECT_RULE}"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", "ｐｒｏｊ", f"Project id 'ｐｒｏｊ' in HUAWEICLOUD_SDK_PROJECT_ID {_PROJECT_RULE}"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", "a" * 65, f"Project id {'a' * 32!r}... (65 characters) in HUAWEICLOUD_SDK_PROJECT_ID {_PROJECT_RULE}"),
], ids=["personal-data-plain", "personal-data-masked", "app-user-id-chinese", "app-user-id-mixed",
        "app-user-id-line-break", "security-token-line-break", "project-dot", "project-space", "project-path", "project-chinese", "project-fullwidth", "project-65-chars"])
def test_a_bad_setting_ends_the_run_with_one_line_before_any_request(server, tmp_path, name, value, message):
    data_dir = tmp_path / "data"
    result, requests = requests_during(server, lambda: voicejobs(env_for(server, data_dir, **{name: value}),
                                                                 "sync", *DATES))
    line = assert_one_clear_line(result, code=1)
    assert line == f"voicejobs sync: {message}"
    assert requests == 0
    assert not data_dir.exists()  # refused before the warehouse was opened


def test_the_app_user_id_rule_is_about_chinese_characters_only():
    assert Settings(app_user_id="user-é-42").app_user_id == "user-é-42"
    assert Settings.from_env({"METASTUDIO_APP_USER_ID": " app-user-0353 "}).app_user_id == "app-user-0353"
