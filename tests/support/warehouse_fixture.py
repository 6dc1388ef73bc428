"""A small warehouse with the product's own schema, and rows with known answers.

The analytics tests build the `main` tables here rather than through the sync, so each SQL
model is tested on rows chosen to exercise it: NULL groups, groups with no finished job,
deleted jobs, jobs with and without history. The tables and views are not written out by
hand: :func:`create_warehouse` replays the DDL that ``pipelines.warehouse.Warehouse`` leaves
after running its migrations, so a new column or a changed view reaches these tests as it
reaches a real data directory.

One product table is left out: ``warehouse_meta`` (facts about one file: which source filled
it, which DuckDB release hashed its history). A sync writes it when it claims a data directory;
tests that need it create and fill it themselves, as tests/test_report.py does.
"""

from __future__ import annotations

import functools
import random
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from pipelines.ingest import JOBS_SCHEMA
from pipelines.warehouse import HISTORY_TABLE, PAST_VERSIONS_TABLE, Warehouse

ASSESS_PARAMS = ("speed", "sound", "snr", "reverb", "dnsmos_ovrl", "dnsmos_bak")

_ARROW_TO_DUCKDB = {"string": "VARCHAR", "int32": "INTEGER", "bool": "BOOLEAN", "timestamp[ms, tz=UTC]": "TIMESTAMPTZ"}

#: The job columns of the product's contract (JOBS_SCHEMA), with the DuckDB type the warehouse
#: gives each; the keys are marked NOT NULL as the contract declares them.
JOB_COLUMNS: list[tuple[str, str]] = [
    (f.name, _ARROW_TO_DUCKDB[str(f.type)] + ("" if f.nullable else " NOT NULL")) for f in JOBS_SCHEMA
]
JOB_COLUMN_NAMES = [name for name, _ in JOB_COLUMNS]
HISTORY_EXTRA = ["valid_from", "valid_to", "observed_at", "deleted_at"]
#: Product tables create_warehouse() does not create (see the module docstring).
LEFT_OUT_TABLES = ("warehouse_meta",)


def _not_null_free(kind: str) -> str:
    # History rows repeat the job columns; only the job table enforces NOT NULL keys, so the
    # checks can be shown to catch a NULL key planted there.
    return kind.replace(" NOT NULL", "")


@functools.cache
def product_schema() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[Any, ...], ...]]:
    """((schema, DDL statement), ...) and the schema_migrations rows of a fresh product warehouse.

    Made once per process: a Warehouse is opened in a scratch directory (which runs every
    migration), and the catalog is read back: schemas, then tables (but LEFT_OUT_TABLES), then views.
    """
    with tempfile.TemporaryDirectory(prefix="warehouse-schema-") as scratch:
        with Warehouse(scratch).connect() as con:
            db = con.execute("SELECT current_database()").fetchone()[0]
            schemas = con.execute(
                "SELECT schema_name FROM duckdb_schemas() WHERE database_name = ? AND NOT internal"
                " ORDER BY schema_name", [db],
            ).fetchall()
            tables = con.execute(
                "SELECT schema_name, sql FROM duckdb_tables() WHERE database_name = ? AND NOT list_contains(?, table_name)"
                " ORDER BY schema_name, table_name", [db, list(LEFT_OUT_TABLES)],
            ).fetchall()
            views = con.execute(
                "SELECT schema_name, sql FROM duckdb_views() WHERE database_name = ? AND NOT internal"
                " ORDER BY schema_name, view_name", [db],
            ).fetchall()
            migrations = con.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()
    statements = [("main", f"CREATE SCHEMA IF NOT EXISTS {name}") for (name,) in schemas if name != "main"]
    statements += [(schema, sql) for schema, sql in (*tables, *views)]
    return tuple(statements), tuple(migrations)


def create_warehouse(con: duckdb.DuckDBPyConnection, *, enforce_keys: bool = False) -> None:
    """Create the tables, views and schemas of a fresh product warehouse, empty.

    The schema is the one ``pipelines.warehouse`` migrates a data directory to (see
    :func:`product_schema`; LEFT_OUT_TABLES aside); schema_migrations holds its versions, so the product opening this
    database finds it current. enforce_keys: declare project_id/job_id NOT NULL on the jobs
    table. Off by default (the product does not declare them either) so tests can plant the bad
    rows the asset checks exist to catch.
    """
    statements, migrations = product_schema()
    try:
        for schema, sql in statements:
            con.execute(f"SET schema = '{schema}'")
            con.execute(sql)
    finally:
        con.execute("SET schema = 'main'")
    if migrations:
        con.executemany(
            f"INSERT INTO main.schema_migrations VALUES ({', '.join('?' for _ in migrations[0])})",
            [list(row) for row in migrations],
        )
    if enforce_keys:
        for name, kind in JOB_COLUMNS:
            if kind.endswith(" NOT NULL"):
                con.execute(f"ALTER TABLE main.voice_training_jobs ALTER COLUMN {name} SET NOT NULL")


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert dicts into `table`; columns a dict leaves out are NULL.

    Rows for the history view (``voice_training_job_history``) go to the table of past
    versions, which the view shows as they are: a test states a job's versions directly,
    whatever the jobs table holds (whose rows the view shows as current versions only when
    they carry a row_hash, as the product's do)."""
    rows = list(rows)
    if not rows:
        return 0
    if table.removeprefix("main.") == HISTORY_TABLE:
        table = f"main.{PAST_VERSIONS_TABLE}"
    columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
    unknown = {k for r in rows for k in r} - set(columns)
    if unknown:
        raise KeyError(f"{table} has no column(s) {sorted(unknown)}")
    placeholders = ", ".join("?" for _ in columns)
    con.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})",
        [[r.get(c) for c in columns] for r in rows],
    )
    return len(rows)


T0 = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)  # a Monday


@dataclass
class Dataset:
    """Rows of the jobs and history tables, plus sync bookkeeping rows."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def live_jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs if j.get("deleted_at") is None]

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        insert_rows(con, "main.voice_training_jobs", self.jobs)
        insert_rows(con, "main.voice_training_job_history", self.history)
        insert_rows(con, "main.sync_windows", self.windows)
        insert_rows(con, "main.sync_runs", self.runs)


STATES_IN_FLIGHT = ["WAITING", "PROCESSING", "AUDITING", "USER_REVIEW_REJECT", "SPLIT_FAILED"]
TAGS = ["ECOMMERCE", "NEWS", "MARKETING", None]
LANGUAGES = ["CN", "EN", None]
JOB_TYPES = ["BASIC", "MIDDLE", "ADVANCE", None]
CODES = [("MSS.00000001", "audio too noisy"), ("MSS.00000002", "speaker mismatch"), (None, None)]


def sample_dataset(seed: int = 7, n_jobs: int = 240, now: datetime | None = None) -> Dataset:
    """Deterministic jobs over two projects and ~40 days, with every edge the models meet.

    - NULL tag, language and job_type groups;
    - tag LIVE and language JA hold only in-progress jobs (failure_rate NULL);
    - about one job in ten deleted, including the only jobs of tag STORYTELLING;
    - finished jobs with history (first terminal version earlier than lastupdate_time) and without;
    - failed jobs with and without a code, and codes with several reasons.
    The sync bookkeeping describes one clean run that finished one hour before `now`.
    """
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    data = Dataset()
    for i in range(n_jobs):
        project = "p1" if i % 3 else "p2"
        job_id = f"job-{i:04d}"
        # Millisecond precision, as the contract's timestamp[ms] columns hold.
        created = T0 + timedelta(milliseconds=rng.randint(0, 40 * 86_400_000))
        roll = rng.random()
        if roll < 0.45:
            state = "SUCCEED"
        elif roll < 0.7:
            state = "FAILED"
        else:
            state = rng.choice(STATES_IN_FLIGHT)
        tag, language = rng.choice(TAGS), rng.choice(LANGUAGES)
        if state not in ("SUCCEED", "FAILED") and rng.random() < 0.15:
            tag = "LIVE"
        if state not in ("SUCCEED", "FAILED") and rng.random() < 0.1:
            language = "JA"
        duration = timedelta(seconds=rng.choice([30, 600, 3000, 5400, 90_000, 700_000, 3_000_000]) + i)
        updated = created + duration
        job = {
            "project_id": project,
            "job_id": job_id,
            "job_type": rng.choice(JOB_TYPES),
            "language": language,
            "tag": tag,
            "state": state,
            "sex": rng.choice(["FEMALE", "MALE"]),
            "create_type": "PACKAGE",
            "create_time": created,
            "lastupdate_time": updated,
            "phone": "*******" + f"{rng.randint(0, 9999):04d}",
            "voice_authorization_url": f"https://obs.example.com/auth/{job_id}.pdf",
            "synced_at": now,
        }
        if state == "FAILED":
            code, reason = rng.choice(CODES)
            if code == "MSS.00000002" and rng.random() < 0.3:
                reason = "no consent form"
            job["job_failed_code"], job["job_failed_reason"] = code, reason
        if rng.random() < 0.1:
            job["deleted_at"] = now - timedelta(hours=2)
        data.jobs.append(job)
        # Two jobs in three have history; for finished ones the terminal version started
        # before the last update (a later edit), so history and fallback give different answers.
        if i % 3 != 2:
            data.history.extend(_history_for(job, rng))
    # In-flight jobs at known ages against the source clock (newest lastupdate_time), one per bucket.
    clock = max(j["lastupdate_time"] for j in data.jobs if j.get("deleted_at") is None)
    for k, age in enumerate(
        [
            timedelta(minutes=30),
            timedelta(hours=5),
            timedelta(days=3),
            timedelta(days=10),
            timedelta(days=45),
            timedelta(hours=1),
        ]
    ):
        created = clock - age
        data.jobs.append(
            {
                "project_id": "p2",
                "job_id": f"aged-{k}",
                "job_type": "FLEXUS",
                "tag": "NEWS",
                "language": "EN",
                "state": "PROCESSING" if k % 2 else "WAITING",
                "create_time": created,
                "lastupdate_time": created + min(age, timedelta(minutes=10)),
                "synced_at": now,
            }
        )
    for k in range(3):
        data.jobs.append(
            {
                "project_id": "p1",
                "job_id": f"story-{k}",
                "job_type": "BASIC",
                "tag": "STORYTELLING",
                "language": "EN",
                "state": "FAILED",
                "job_failed_code": "MSS.00000009",
                "job_failed_reason": "deleted anyway",
                "create_time": T0,
                "lastupdate_time": T0 + timedelta(hours=1),
                "deleted_at": now - timedelta(days=1),
                "synced_at": now,
            }
        )
    run_id = "run-1"
    data.runs.append(
        {
            "run_id": run_id,
            "started_at": now - timedelta(hours=1, minutes=5),
            "finished_at": now - timedelta(hours=1),
            "status": "succeeded",
            "mode": "days",
            "rows": n_jobs,
            "requests": 10,
            "retries": 0,
        }
    )
    for p in ("p1", "p2"):
        count = sum(1 for j in data.jobs if j["project_id"] == p)
        data.windows.append(
            {
                "run_id": run_id,
                "project_id": p,
                "kind": "create",
                "since": T0,
                "until": T0 + timedelta(days=41),
                "api_count": count,
                "fetched": count,
                "pages": 1 + count // 100,
                "synced_at": now - timedelta(hours=1),
            }
        )
    return data


def _history_for(job: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    created, updated, state = job["create_time"], job["lastupdate_time"], job["state"]
    base = {k: v for k, v in job.items() if k != "deleted_at"}
    versions: list[tuple[str, datetime]] = [("WAITING", created)]
    if state in ("SUCCEED", "FAILED"):
        reached = created + (updated - created) * rng.uniform(0.3, 0.9)
        versions.append((state, reached))
        versions.append((state, updated))  # a later edit in the same terminal state
    elif state != "WAITING":
        versions.append((state, updated))
    rows = []
    for n, (s, start) in enumerate(versions):
        end = versions[n + 1][1] if n + 1 < len(versions) else None
        rows.append(
            {
                **base,
                "state": s,
                "lastupdate_time": start,
                "valid_from": start,
                "valid_to": end,
                "observed_at": start + timedelta(minutes=1),
                "deleted_at": None,
            }
        )
    return rows


def build_warehouse(db_path: Path, data: Dataset | None = None) -> Dataset:
    """Create a warehouse file at `db_path` holding `data` (default: sample_dataset())."""
    data = data if data is not None else sample_dataset()
    con = duckdb.connect(str(db_path))
    try:
        create_warehouse(con)
        data.load(con)
    finally:
        con.close()
    return data
