"""Data-quality checks on the warehouse table behind the `voice_training_jobs` asset.

Each check is a plain function `check_<name>(con) -> CheckOutcome` over a DuckDB connection,
so it can be tested and run without Dagster; the Dagster asset checks at the bottom only
open the warehouse and translate outcomes.

Two groups: `integrity` checks (unique key, non-null key and timestamps) block everything
downstream when they fail, because every aggregate would be wrong; `monitoring` checks
(timestamp order, documented enumerations, window reconciliation, freshness, personal data)
report without blocking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import dagster as dg
import duckdb

from assets.models import SOURCE_ASSET_KEYS, WAREHOUSE_POOL, WAREHOUSE_RESOURCE_KEY, warehouse_db_path
from pipelines.ingest.schema import (
    KNOWN_CHARGE_MODES,
    KNOWN_CREATE_TYPES,
    KNOWN_JOB_TYPES,
    KNOWN_SEXES,
    KNOWN_STATES,
    KNOWN_TAGS,
)
from pipelines.models import connect, unmasked_personal_data

JOBS_TABLE = "main.voice_training_jobs"
ASSET_KEY = SOURCE_ASSET_KEYS[0]
SAMPLE_SIZE = 20
FRESHNESS_LIMIT = timedelta(hours=26)
# The status pipelines.sync writes for a run that completed.
SUCCEEDED_STATUS = "succeeded"

# Column -> documented values. language is an open set and is not checked.
KNOWN_ENUMS: dict[str, frozenset[str]] = {
    "state": KNOWN_STATES,
    "job_type": KNOWN_JOB_TYPES,
    "tag": KNOWN_TAGS,
    "sex": KNOWN_SEXES,
    "create_type": KNOWN_CREATE_TYPES,
    "allocated_resource_charge_mode": KNOWN_CHARGE_MODES,
}

Severity = Literal["ERROR", "WARN"]


@dataclass(frozen=True)
class CheckOutcome:
    """Result of one check. `severity` applies when `passed` is False; `metadata` is plain data."""

    passed: bool
    severity: Severity
    metadata: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _verdict(found: Sized, severity: Severity, metadata: dict[str, Any], *, problem: str, fine: str) -> CheckOutcome:
    """A check passes when it found nothing; its description says what it found, or `fine`."""
    return CheckOutcome(passed=not found, severity=severity, metadata=metadata, description=problem if found else fine)


def _counted(counts: Mapping[str, int]) -> str:
    """``a (3), b (1)``: columns with their row counts."""
    return ", ".join(f"{c} ({n})" for c, n in counts.items())


def check_unique_keys(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """(project_id, job_id) identifies one row."""
    dups = _rows(
        con,
        f"""SELECT project_id, job_id, count(*) AS copies FROM {JOBS_TABLE}
            GROUP BY project_id, job_id HAVING count(*) > 1
            ORDER BY copies DESC, project_id, job_id""",
    )
    return _verdict(
        dups,
        "ERROR",
        {"duplicate_keys": len(dups), "sample": dups[:SAMPLE_SIZE]},
        problem=f"{len(dups)} (project_id, job_id) key(s) appear more than once",
        fine="keys unique",
    )


NOT_NULL_COLUMNS = ("project_id", "job_id", "create_time", "lastupdate_time")


def check_keys_and_timestamps_not_null(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """project_id, job_id, create_time and lastupdate_time are never NULL."""
    selects = ", ".join(f"count(*) FILTER (WHERE {c} IS NULL) AS {c}" for c in NOT_NULL_COLUMNS)
    counts = _rows(con, f"SELECT {selects} FROM {JOBS_TABLE}")[0]
    nulls = {c: int(n) for c, n in counts.items() if n}
    return _verdict(
        nulls,
        "ERROR",
        {"null_counts": nulls, "rows_with_nulls": sum(nulls.values())},
        problem="NULLs in " + _counted(nulls),
        fine="no NULLs",
    )


def check_update_not_before_create(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """lastupdate_time >= create_time wherever both are known."""
    bad = _rows(
        con,
        f"""SELECT project_id, job_id, create_time, lastupdate_time FROM {JOBS_TABLE}
            WHERE lastupdate_time < create_time ORDER BY project_id, job_id""",
    )
    return _verdict(
        bad,
        "ERROR",
        {
            "rows_updated_before_created": len(bad),
            "sample": [{k: _plain(v) for k, v in r.items()} for r in bad[:SAMPLE_SIZE]],
        },
        problem=f"{len(bad)} row(s) with lastupdate_time before create_time",
        fine="ordered",
    )


def check_known_enums(
    con: duckdb.DuckDBPyConnection, known: Mapping[str, frozenset[str]] = KNOWN_ENUMS
) -> CheckOutcome:
    """Enumerated columns hold documented values; undocumented ones are a warning, listed with counts.

    The source adds values without notice and the warehouse keeps them as sent, so an
    unknown value is news for whoever maintains the documented sets, not a broken table.
    """
    unknown: dict[str, dict[str, int]] = {}
    for column, values in known.items():
        found = _rows(
            con,
            f"""SELECT {column} AS value, count(*) AS n FROM {JOBS_TABLE}
                WHERE {column} IS NOT NULL AND NOT list_contains(?, {column})
                GROUP BY {column} ORDER BY n DESC, value""",
            [sorted(values)],
        )
        if found:
            unknown[column] = {r["value"]: int(r["n"]) for r in found}
    return _verdict(
        unknown,
        "WARN",
        {"unknown_values": unknown},
        problem="undocumented values: " + "; ".join(f"{c}: {', '.join(v)}" for c, v in unknown.items()),
        fine="all values documented",
    )


def check_window_reconciliation(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """In the latest sync run, every window fetched as many jobs as the API's count announced."""
    latest = con.execute(
        "SELECT run_id FROM main.sync_windows ORDER BY synced_at DESC NULLS LAST, run_id DESC LIMIT 1"
    ).fetchone()
    if latest is None:
        return CheckOutcome(True, "ERROR", {"windows": 0}, "no sync windows recorded yet")
    run_id = latest[0]
    windows = _rows(
        con,
        """SELECT project_id, kind, since, until, api_count, fetched FROM main.sync_windows
           WHERE run_id = ? ORDER BY project_id, since""",
        [run_id],
    )
    bad = [w for w in windows if w["fetched"] != w["api_count"]]
    return _verdict(
        bad,
        "ERROR",
        {
            "run_id": run_id,
            "windows": len(windows),
            "mismatched_windows": len(bad),
            "mismatches": [{k: _plain(v) for k, v in w.items()} for w in bad[:SAMPLE_SIZE]],
        },
        problem=f"{len(bad)} of {len(windows)} window(s) of run {run_id} fetched a different number of jobs "
        "than the API's count",
        fine=f"all {len(windows)} window(s) of run {run_id} reconcile",
    )


def check_freshness(
    con: duckdb.DuckDBPyConnection, now: datetime | None = None, limit: timedelta = FRESHNESS_LIMIT
) -> CheckOutcome:
    """The last successful sync run finished within `limit` (26 hours) of the wall clock."""
    now = now or datetime.now(UTC)
    row = con.execute(
        "SELECT run_id, finished_at FROM main.sync_runs WHERE status = ? AND finished_at IS NOT NULL "
        "ORDER BY finished_at DESC LIMIT 1",
        [SUCCEEDED_STATUS],
    ).fetchone()
    if row is None:
        return CheckOutcome(False, "ERROR", {"last_success": None}, "no successful sync run recorded")
    run_id, finished_at = row
    age_hours = (now - finished_at).total_seconds() / 3600
    fresh = age_hours <= limit.total_seconds() / 3600
    return CheckOutcome(
        passed=fresh,
        severity="ERROR",
        metadata={
            "last_success_run_id": run_id,
            "last_success": finished_at.isoformat(),
            "age_hours": age_hours,
        },
        description=f"last successful sync finished {age_hours:.1f} h ago (limit {limit.total_seconds() / 3600:g} h)",
    )


def check_personal_data_masked(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """phone shows at most four digits and URL columns carry no query string or fragment.

    A warning, not an error: the raw policy is a legitimate, deliberate choice, but analytics
    views and the serving snapshot then expose those values as stored.
    """
    found = unmasked_personal_data(con, JOBS_TABLE)
    return _verdict(
        found,
        "WARN",
        {"unmasked_rows": found},
        problem="unmasked personal data in " + _counted(found),
        fine="personal data masked",
    )


# Check name -> (function, one-line description shown in the UI).
INTEGRITY_CHECKS: dict[str, tuple[Callable[[duckdb.DuckDBPyConnection], CheckOutcome], str]] = {
    "unique_job_keys": (check_unique_keys, "(project_id, job_id) is unique."),
    "keys_and_timestamps_not_null": (
        check_keys_and_timestamps_not_null,
        "project_id, job_id, create_time and lastupdate_time are never NULL.",
    ),
}
MONITORING_CHECKS: dict[str, tuple[Callable[[duckdb.DuckDBPyConnection], CheckOutcome], str]] = {
    "update_not_before_create": (check_update_not_before_create, "lastupdate_time >= create_time."),
    "known_enum_values": (
        check_known_enums,
        "Enumerated columns hold documented values (WARN, listing the others).",
    ),
    "windows_reconcile": (
        check_window_reconciliation,
        "In the latest sync run every window fetched the API's count.",
    ),
    "sync_freshness": (check_freshness, "The last successful sync finished within 26 hours."),
    "personal_data_masked": (
        check_personal_data_masked,
        "phone and URL columns are masked as ingestion's default policy masks them (WARN).",
    ),
}


def _metadata_value(value: Any) -> Any:
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, str):
        return dg.MetadataValue.text(value)
    if value is None:
        return dg.MetadataValue.null()
    return dg.MetadataValue.json(value)


def to_check_result(
    name: str, outcome: CheckOutcome, asset_key: dg.AssetKey = ASSET_KEY
) -> dg.AssetCheckResult:
    """The Dagster result of one outcome."""
    metadata = {k: _metadata_value(v) for k, v in outcome.metadata.items()}
    if outcome.description:
        metadata["summary"] = dg.MetadataValue.text(outcome.description)
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity[outcome.severity],
        metadata=metadata,
    )


def build_checks(
    name: str,
    checks: Mapping[str, tuple[Callable[[duckdb.DuckDBPyConnection], CheckOutcome], str]],
    *,
    blocking: bool,
    asset_key: dg.AssetKey = ASSET_KEY,
) -> dg.AssetChecksDefinition:
    """One op running `checks` over one warehouse connection."""
    specs = [
        dg.AssetCheckSpec(
            check_name,
            asset=asset_key,
            description=description,
            blocking=blocking,
            # The other sync assets write the same table: check after them when a run holds them.
            additional_deps=[k for k in SOURCE_ASSET_KEYS if k != asset_key],
        )
        for check_name, (_, description) in checks.items()
    ]

    @dg.multi_asset_check(
        name=name,
        specs=specs,
        can_subset=True,
        required_resource_keys={WAREHOUSE_RESOURCE_KEY},
        pool=WAREHOUSE_POOL,
    )
    def _run(context) -> Iterator[dg.AssetCheckResult]:
        # `context` stays unannotated: with postponed annotations Dagster sees the hint as a string.
        selected = {key.name for key in context.selected_asset_check_keys}
        con = connect(warehouse_db_path(getattr(context.resources, WAREHOUSE_RESOURCE_KEY)))
        try:
            for check_name, (fn, _) in checks.items():
                if check_name in selected:
                    yield to_check_result(check_name, fn(con), asset_key)
        finally:
            con.close()

    return _run


warehouse_integrity_checks = build_checks("warehouse_integrity_checks", INTEGRITY_CHECKS, blocking=True)
warehouse_monitoring_checks = build_checks("warehouse_monitoring_checks", MONITORING_CHECKS, blocking=False)
ASSET_CHECKS = (warehouse_integrity_checks, warehouse_monitoring_checks)
