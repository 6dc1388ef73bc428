"""Known AK, SK, security-token and IAM-token values never leave the process.

Syncs run with distinctive credential values (verbose logging on), through the CLI and
through a Dagster materialization on a persistent temporary instance, plus runs that
fail on a wrong secret. None of the values may appear in stdout/stderr, exception texts,
the Dagster event log (every record, serialized) or any file under the data directory or
the Dagster home (warehouse.duckdb, serving.duckdb, Parquet, SQLite).

Files are searched three ways, because a secret written into a column need not show in the
file's bytes (lake Parquet is zstd-compressed, DuckDB compresses strings at checkpoint):

- every byte of every file, for each secret in UTF-8, UTF-16 (LE and BE) and base64 (standard
  and URL-safe alphabets, at each of the three alignments it can have inside a longer text);
- every string column of every Parquet file, decoded with pyarrow;
- every text column of every table and view, in every schema, of every DuckDB file, opened
  read-only.

``test_the_scanner_finds_secrets_hidden_by_compression_and_encoding`` plants secrets where
only the decoded scans or the encoded forms can see them, so the scan cannot be blind.
"""

from __future__ import annotations

import base64
import os
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._serdes import serialize_value

from assets.jobs import voice_training_jobs
from pipelines.metastudio.errors import AuthenticationError
from pipelines.resources import MetaStudioResource, WarehouseResource
from pipelines.sync import sync
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

REPO = Path(__file__).resolve().parents[2]
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
def server(make_module_simulator):
    return make_module_simulator(
        jobs=400, seed=17, days=8, projects=PROJECTS, now=SIM_NOW,
        credentials={AK: SK}, tokens=frozenset({IAM_TOKEN}),
        temporary_credentials={TEMP_AK: (TEMP_SK, SECURITY_TOKEN)},
        # a few retries, so that retry logging is exercised as well
        fault_rate=0.1, faults=("500", "502", "truncated"),
    )


def _base64_forms(data: bytes) -> set[bytes]:
    """What ``data`` looks like inside base64 text, at each of its three possible alignments.

    Only the characters that depend on ``data`` alone are kept (those sharing bits with the
    bytes around it are cut off), in the standard and the URL-safe alphabet."""
    forms = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).rstrip(b"=")
        first = -(-8 * offset // 6)  # the first character holding no bit of the padding
        last = 8 * (offset + len(data)) // 6  # past the last one holding no bit of what follows
        core = encoded[first:last]
        forms |= {core, core.translate(bytes.maketrans(b"+/", b"-_"))}
    return forms


def secret_forms(secret: str) -> dict[bytes, str]:
    """Byte patterns of one secret -> the name of its encoding."""
    forms = {secret.encode(): "utf-8", secret.encode("utf-16-le"): "utf-16-le",
             secret.encode("utf-16-be"): "utf-16-be"}
    forms.update((form, "base64") for form in _base64_forms(secret.encode()))
    return forms


FORMS = {secret: secret_forms(secret) for secret in SECRETS}


def leaks_in_bytes(data: bytes, where: str) -> list[str]:
    return [f"{secret!r} ({encoding}) in {where}"
            for secret, forms in FORMS.items() for form, encoding in forms.items() if form in data]


def leaks_in_text(values, where: str) -> list[str]:
    found = []
    for value in values:
        if isinstance(value, str | bytes):
            found += leaks_in_bytes(value.encode() if isinstance(value, str) else value, where)
    return found


def _string_columns(table: pa.Table) -> list[str]:
    def textual(t: pa.DataType) -> bool:
        if pa.types.is_dictionary(t):
            return textual(t.value_type)
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)

    return [f.name for f in table.schema if textual(f.type)]


def leaks_in_parquet(path: Path) -> list[str]:
    """Every string column of one Parquet file, decoded (as a reader of the lake sees it)."""
    table = pq.read_table(path)
    assert table.num_rows > 0, f"{path} holds no rows: nothing was scanned"
    found = []
    for name in _string_columns(table):
        found += leaks_in_text(table[name].to_pylist(), f"{path} column {name}")
    return found


def leaks_in_duckdb(path: Path) -> tuple[list[str], int]:
    """Every text column of every table and view, all schemas, of one DuckDB file opened read-only.

    Returns (leaks, text columns scanned)."""
    found, scanned = [], 0
    with duckdb.connect(str(path), read_only=True) as con:
        columns = con.execute(
            "SELECT schema_name, table_name, column_name FROM duckdb_columns()"
            " WHERE database_name = current_database() AND (data_type = 'VARCHAR' OR data_type = 'JSON')"
            " ORDER BY ALL"
        ).fetchall()
        for schema, relation, column in columns:
            scanned += 1
            where = f"{path} {schema}.{relation}.{column}"
            # Each secret in each text form a string column can hold; base64 forms as well.
            patterns = [form.decode("ascii") for forms in FORMS.values() for form, enc in forms.items()
                        if enc in ("utf-8", "base64")]
            quoted = f'"{schema}"."{relation}"'
            matches = " OR ".join(f'contains("{column}", ?)' for _ in patterns)
            rows = con.execute(f'SELECT DISTINCT "{column}" FROM {quoted} WHERE {matches}', patterns).fetchall()
            found += leaks_in_text([r[0] for r in rows], where)
    return found, scanned


def find_leaks(root: Path) -> tuple[list[str], dict[str, int]]:
    """Every leak under ``root`` (raw bytes, decoded Parquet, DuckDB columns) and what was scanned."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    found: list[str] = []
    scanned = {"files": len(files), "parquet": 0, "duckdb": 0, "duckdb_text_columns": 0}
    for path in files:
        found += leaks_in_bytes(path.read_bytes(), str(path))
        if path.suffix == ".parquet":
            found += leaks_in_parquet(path)
            scanned["parquet"] += 1
        elif path.suffix == ".duckdb":
            leaks, columns = leaks_in_duckdb(path)
            found += leaks
            scanned["duckdb"] += 1
            scanned["duckdb_text_columns"] += columns
    return found, scanned


def assert_clean(text: str | bytes, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    leaks = leaks_in_bytes(data, where)
    assert not leaks, leaks


def assert_files_clean(root: Path) -> dict[str, int]:
    leaks, scanned = find_leaks(root)
    assert not leaks, leaks
    return scanned


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
    scanned = assert_files_clean(tmp_path)
    # the warehouse and the serving snapshot, column by column, and every lake file decoded
    assert scanned["duckdb"] == 2 and scanned["duckdb_text_columns"] > 50
    assert scanned["parquet"] == len(list((tmp_path / "lake").rglob("*.parquet"))) > 0


@pytest.mark.parametrize("credentials, refusal", [
    ({"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": WRONG_SK}, "rejected the request signature (HTTP 401"),
    ({"HUAWEICLOUD_SDK_AK": TEMP_AK, "HUAWEICLOUD_SDK_SK": TEMP_SK, "HUAWEICLOUD_SDK_SECURITY_TOKEN": WRONG_SK},
     "rejected the temporary credentials' security token (HTTP 401"),
    ({"METASTUDIO_AUTH_TOKEN": WRONG_SK}, "rejected the IAM token as invalid or expired (HTTP 401"),
], ids=["wrong-sk", "wrong-security-token", "wrong-token"])
def test_failing_cli_sync_leaks_no_credential(server, tmp_path, credentials, refusal):
    result = cli(server, tmp_path, **credentials)
    # the run failed for the reason under test (the source refused the credential), not another
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"voicejobs sync: MetaStudio {refusal}"), result.stderr
    assert_clean(result.stdout + result.stderr, "CLI output")
    scanned = assert_files_clean(tmp_path)
    assert scanned["duckdb"] == 1  # the warehouse recording the failed run was scanned too
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("select status from sync_runs").fetchall() == [("failed",)]


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
    # The partition of UNTIL exists from the day after it on, whatever today's date is.
    with dg.DagsterInstance.local_temp(str(home)) as instance, \
            dg.partition_loading_context(effective_dt=SIM_NOW + timedelta(days=2)):
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
        # It failed because the source refused the wrong secret, not for any other reason.
        [failure] = [e for e in failed.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        cause = failure.step_failure_data.error
        while cause.cause is not None and cause.cls_name != "AuthenticationError":
            cause = cause.cause
        assert cause.cls_name == "AuthenticationError", failure.step_failure_data.error.to_string()
        assert "rejected the request signature" in cause.message
        for entry in records:
            assert_clean(serialize_value(entry), f"event log record {entry.dagster_event_type}")
            assert_clean(entry.user_message or "", "event log message")
    assert_clean("\n".join(r.getMessage() for r in caplog.records), "logs")
    assert_files_clean(home)
    assert_files_clean(data_dir)


def test_the_scanner_finds_secrets_hidden_by_compression_and_encoding(tmp_path):
    """Each place a secret can hide where a plain byte search does not look is searched."""
    rng = random.Random(3)
    noise = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz-0123456789") for _ in range(30)) for _ in range(3000)]
    # A zstd-compressed lake file whose string column holds SK once among realistic values.
    lake = tmp_path / "lake" / "create_day=2026-03-01" / "project_id=p" / "data.parquet"
    lake.parent.mkdir(parents=True)
    column = [*noise[:1500], f"phone {SK} end", *noise[1500:]]
    pq.write_table(pa.table({"job_id": [str(i) for i in range(len(column))], "voice_name": column}), lake,
                   compression="zstd", use_dictionary=False)
    # A checkpointed DuckDB file with the IAM token in a table of a schema other than main, and
    # AK in a view's text, as warehouse.duckdb and serving.duckdb hold the models.
    db = tmp_path / "serving.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE SCHEMA analytics")
        con.execute("CREATE TABLE analytics.notes AS SELECT 'note ' || i || ' ' || md5(i::VARCHAR) AS note"
                    " FROM range(20000) t(i)")
        con.execute("INSERT INTO analytics.notes VALUES (?)", [f"token={IAM_TOKEN}"])
        con.execute(f"CREATE VIEW main.headline AS SELECT 'x' || '{AK[:6]}' || '{AK[6:]}' AS label")
        con.execute("CHECKPOINT")
    # Raw files holding secrets in UTF-16 and inside base64 text at an odd offset.
    (tmp_path / "log.txt").write_bytes(b"..." + f"sk={TEMP_SK};".encode("utf-16-le") + b"...")
    (tmp_path / "dump.bin").write_bytes(f"x{SECURITY_TOKEN}".encode("utf-16-be"))
    (tmp_path / "config.b64").write_bytes(base64.b64encode(f"ab:{WRONG_SK}:cd".encode()))
    (tmp_path / "clean.txt").write_text("nothing to see")

    leaks, scanned = find_leaks(tmp_path)

    def hits(secret: str, where: str) -> list[str]:
        return [leak for leak in leaks if leak.startswith(repr(secret)) and where in leak]

    assert hits(SK, f"{lake} column voice_name")
    assert hits(IAM_TOKEN, f"{db} analytics.notes.note")
    assert hits(AK, f"{db} main.headline.label")
    assert hits(TEMP_SK, "(utf-16-le) in") and hits(SECURITY_TOKEN, "(utf-16-be) in")
    assert hits(WRONG_SK, "(base64) in")
    assert not [leak for leak in leaks if "clean.txt" in leak]
    assert scanned["parquet"] == 1 and scanned["duckdb"] == 1
    with pytest.raises(AssertionError):
        assert_files_clean(tmp_path)


@pytest.mark.parametrize("offset", range(3))
def test_base64_forms_match_the_secret_at_every_alignment(offset):
    for secret in SECRETS:
        text = base64.b64encode(b"p" * offset + secret.encode() + b"!s")
        assert leaks_in_bytes(text, "text"), (secret, offset)
        assert leaks_in_bytes(base64.urlsafe_b64encode(b"?>" * offset + secret.encode()), "text"), (secret, offset)
    assert not leaks_in_bytes(base64.b64encode(b"a harmless text of some length"), "text")
