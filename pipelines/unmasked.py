"""The refresh's gate on personal data: analytics views show phone and URL columns as stored,
so a refresh refuses to run over jobs that hold them in clear (ingestion masks them under the
default policy) unless the raw policy is intended. Each refresh looks only at the jobs synced
since the last clean check."""

from __future__ import annotations

from datetime import datetime

import duckdb

from pipelines.ingest.schema import PHONE_FIELD, URL_FIELDS
from pipelines.warehouse.tables import first_row, meta_value, put_meta

# Columns holding personal data that ingestion masks under the default policy.
PHONE_COLUMN = PHONE_FIELD
URL_COLUMNS = URL_FIELDS


class UnmaskedPersonalDataError(RuntimeError):
    """The warehouse holds personal data in clear while the analytics layer expects it masked."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts
        found = ", ".join(f"{column}: {n} rows" for column, n in counts.items())
        super().__init__(
            "main.voice_training_jobs holds unmasked personal data "
            f"({found}); analytics views would expose it as stored. Re-ingest with the 'mask' "
            "policy, or refresh with allow_unmasked_personal_data=True if the raw policy is intended."
        )


def unmasked_personal_data(
    con: duckdb.DuckDBPyConnection, relation: str = "main.voice_training_jobs", since: datetime | None = None
) -> dict[str, int]:
    """Rows per column whose personal data is not masked as ingestion's default policy masks it.

    phone: more than four digits visible. URL columns: a query string or fragment present
    (pre-signed URLs carry credentials there). Columns with no offending row are left out.
    With ``since``, only rows synced at or after it are looked at.
    """
    # Five digits anywhere, matched rather than counted: removing every other character first
    # built a new string per row (0.41 s over a million phones against 0.05 s), the longest
    # step of the first refresh after a backfill, which looks at every job.
    checks = {
        PHONE_COLUMN: f"regexp_matches({PHONE_COLUMN}, '[0-9](?:[^0-9]*[0-9]){{4}}')",
        **{c: f"(strpos({c}, '?') > 0 OR strpos({c}, '#') > 0)" for c in URL_COLUMNS},
    }
    selects = ", ".join(f"count(*) FILTER (WHERE {cond})" for cond in checks.values())
    where, params = ("WHERE synced_at >= ?", [since]) if since is not None else ("", [])
    row = first_row(con, f"SELECT {selects} FROM {relation} {where}", params)
    return {column: int(n) for column, n in zip(checks, row, strict=True) if n}


#: warehouse_meta key: every job synced before this time was found masked by an earlier refresh.
CHECKED_THROUGH = "personal_data_checked_through"


def _checked_through(con: duckdb.DuckDBPyConnection) -> tuple[datetime | None, bool]:
    """(the time every job synced before was found masked, whether the warehouse can record it)."""
    try:
        value = meta_value(con, CHECKED_THROUGH)
    except duckdb.CatalogException:
        return None, False  # not a warehouse of this program (a bare DuckDB file): check everything
    return (datetime.fromisoformat(value) if value is not None else None), True


def check_personal_data(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """Refuse (UnmaskedPersonalDataError) when jobs hold personal data in clear.

    Each refresh looks only at jobs synced since the last clean check: a stored row changes
    only by being synced again, which moves its synced_at. Returns the time the next check
    can start from (None when it cannot be recorded)."""
    since, recordable = _checked_through(con)
    found = unmasked_personal_data(con, since=since)
    if found:
        raise UnmaskedPersonalDataError(found)
    if not recordable:
        return None
    newest = first_row(con, "SELECT max(synced_at) FROM main.voice_training_jobs")[0]
    return newest if newest is not None else since


def record_checked(con: duckdb.DuckDBPyConnection, through: datetime | None) -> None:
    if through is None:
        return
    put_meta(con, CHECKED_THROUGH, through.isoformat())
