"""The apply transaction: one batch of jobs, windows, quarantined records and deletions, atomically.

``apply()`` is one DuckDB transaction; on any error it rolls back and nothing of the batch
remains. Inside it: the upsert (per key the newest lastupdate_time wins; the jobs row is the
history's current version, and a version it replaces moves to the past versions), deletion
marks (explicit, and for ranges the source listed completely), the window log, the quarantine,
the watermarks, and the lake partitions the batch touched, marked dirty. After the commit the
lake export writes those partitions (see lake.py).

Uniqueness of (project_id, job_id) is maintained by the upsert, not by a PRIMARY KEY: a
stored job's row is found by a join with the batch's keys and replaced in place, and DuckDB
would hold such an index in memory for every key of the history.
A batch of jobs never seen is checked against the key hashes (job_keys, migration 006), which
this transaction appends to with the jobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.crashpoints import crashpoint
from pipelines.ingest.schema import JOBS_SCHEMA, Quarantined
from pipelines.warehouse.deletions import Deletions, ReconciledRange
from pipelines.warehouse.lake import Lake
from pipelines.warehouse.marks import mark_lake, mark_lake_sql, mark_model_days_sql, mark_model_jobs
from pipelines.warehouse.records import Records, WindowRecord
from pipelines.warehouse.tables import (
    _COLS,
    JOB_COLUMNS,
    JOBS_TABLE,
    KEYS_TABLE,
    PAST_VERSIONS_TABLE,
    WarehouseError,
    _aware,
    _hash_expr,
    _is_disk_error,
    first_row,
    key_hash_expr,
    utc_day,
)


@dataclass
class ApplyStats:
    """What one apply() changed. `updated` counts replaced rows (also identical re-syncs);
    `stale` counts incoming rows older than the stored ones (ignored)."""

    incoming: int = 0
    inserted: int = 0
    updated: int = 0
    stale: int = 0
    undeleted: int = 0
    history_versions: int = 0
    deleted: int = 0
    windows: int = 0
    quarantined: int = 0
    partitions_written: int = 0
    partitions_failed: int = 0  # lake partitions left marked: they could not be written


class Apply(Lake, Records, Deletions):
    """Writing one batch: the transaction, then the export of the partitions it touched."""

    def apply(
        self,
        run_id: str,
        *,
        jobs: pa.Table,
        windows: Sequence[WindowRecord] = (),
        quarantine: Sequence[Quarantined] = (),
        deleted: Sequence[tuple[str, str]] = (),
        deleted_at: datetime | None = None,
        watermarks: Mapping[str, datetime] | None = None,
        reconciled: Sequence[ReconciledRange] = (),
        export: bool = True,
    ) -> ApplyStats:
        """Write one batch atomically, then (with ``export``) export the lake partitions marked.

        - jobs (JOBS_SCHEMA): per (project_id, job_id) the newest lastupdate_time wins (NULL is
          oldest; an equal time replaces); a listed job is never deleted. History gets a
          version when a row's content (all but synced_at) differs from the current one and is
          not older: the current one moves to the past versions.
        - deleted, and stored live jobs in ``reconciled`` ranges (listed completely) that the
          listing lacked: deleted_at set on the jobs row (the current version).
        - watermarks: sync_state.watermark only moves forward.

        The partitions the batch touched are marked in ``lake_dirty``. A sync passes
        ``export=False`` and exports once, when the run finishes (finish_run); with ``export``
        they are written after COMMIT. A partition that cannot be written keeps its mark
        (``stats.partitions_failed``); later exports of the run skip it and finish_run() tries
        it once more, failing the run if it still cannot be written.
        """
        now = datetime.now(UTC)
        deleted_at = _aware(deleted_at, "deleted_at") if deleted_at is not None else now
        # The lake and jobs_table() carry millisecond timestamps like JOBS_SCHEMA.
        deleted_at = deleted_at.replace(microsecond=deleted_at.microsecond // 1000 * 1000)
        jobs = self._conform(jobs)
        stats = ApplyStats(incoming=jobs.num_rows, windows=len(windows), quarantined=len(quarantine))
        appended_only = False
        with self._cursor() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                if jobs.num_rows:
                    appended_only = self._upsert(con, jobs, stats)
                if windows:
                    self._insert_windows(con, run_id, windows, now)
                if quarantine:
                    self._insert_quarantine(con, run_id, quarantine, now)
                if reconciled:
                    deleted = [*deleted, *self._unlisted(con, reconciled)]
                if deleted:
                    marked = self._mark_deleted(con, deleted, deleted_at)
                    self._taint_spools((project_id, day) for project_id, day, _ in marked)
                    stats.deleted = len(marked)
                if watermarks:
                    self._advance_watermarks(con, watermarks, now)
                crashpoint("apply_before_commit")
                con.execute("COMMIT")
            except BaseException as exc:
                with suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                if _is_disk_error(exc) and not isinstance(exc, WarehouseError):
                    raise self._batch_not_kept(exc) from exc
                raise
        # The transaction's registered Arrow tables and temp tables (_incoming, _known, ...) went
        # with its cursor, a connection of its own.
        crashpoint("apply_after_commit")
        spool = self._spools.get(run_id)
        if appended_only and spool is not None:
            spool.add(jobs)
        if export:
            self.export_for_run(run_id, stats)
        return stats

    def _batch_not_kept(self, exc: BaseException) -> WarehouseError:
        return WarehouseError(
            f"writing {self.db_path} failed ({exc}); nothing of this batch was kept. "
            f"Free space on the disk holding {self.data_dir} and run the sync again"
        )

    def export_for_run(self, run_id: str, stats: ApplyStats | None = None) -> None:
        """Export the partitions marked, leaving out those that already failed in this run;
        remember the ones that fail now for the run's end (finish_run)."""
        with self._lock:
            stuck = frozenset(self._stuck.get(run_id, ()))
        written, failures = self._export_dirty(skip=stuck)
        if stats is not None:
            stats.partitions_written, stats.partitions_failed = written, len(failures)
        if failures:
            with self._lock:
                self._stuck.setdefault(run_id, set()).update(key for key, _, _ in failures)
        crashpoint("lake_exported")

    @staticmethod
    def _conform(jobs: pa.Table) -> pa.Table:
        if jobs.schema.names != JOBS_SCHEMA.names:
            raise ValueError(f"jobs must have the columns of JOBS_SCHEMA in order, got {jobs.schema.names}")
        if not jobs.schema.equals(JOBS_SCHEMA):
            jobs = jobs.cast(JOBS_SCHEMA)
        if jobs.num_rows and (jobs["project_id"].null_count or jobs["job_id"].null_count):
            raise ValueError("jobs has NULL project_id or job_id")
        return jobs

    def _upsert(self, con: duckdb.DuckDBPyConnection, jobs: pa.Table, stats: ApplyStats) -> bool:
        """The newest version of each incoming job into the table (the history's current version).

        Jobs the warehouse has never seen (most of a backfill) are appended; only jobs it holds
        already go through the comparisons with the stored version. Returns whether the batch
        was appended as it is, every row a job never seen (what the run's spool may keep)."""
        incoming = jobs.append_column("_ord", pa.array(range(jobs.num_rows), type=pa.int64()))
        con.register("_incoming", incoming)
        distinct = _distinct_keys(jobs)
        known = _find_known(con, jobs, distinct)
        if distinct and not known:
            # None of the batch's jobs is known (most of a backfill): appended straight from the
            # batch. Staging it first cost 2.4 s of the 6.8 s of CPU that 30 batches of 10,000
            # new jobs took on a million-job table.
            _append_first_versions(con, "_incoming", _hash_expr())
            stats.inserted = stats.history_versions = stats.incoming
            return True
        # One row per key (newest lastupdate_time, then the later row), with its content hash
        # and what the table holds for that key (_known, for every later step).
        # A batch of distinct keys (the usual one) skips the ranking, a sort of whole rows.
        newest = "" if distinct else (
            "QUALIFY row_number() OVER (PARTITION BY project_id, job_id"
            " ORDER BY lastupdate_time DESC NULLS LAST, _ord DESC) = 1")
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _stage AS
            SELECT s.*, j.job_id IS NOT NULL AS existed, j.lastupdate_time AS old_lastupdate_time,
                   {utc_day('j.create_time')} AS old_day, j.deleted_at IS NOT NULL AS was_deleted,
                   j.valid_from AS old_valid_from, j.observed_at AS old_observed_at, j.row_hash AS old_row_hash,
                   j.old_rowid
            FROM (SELECT {_COLS}, {_hash_expr()} AS row_hash, _ord FROM _incoming {newest}) s
            LEFT JOIN _known j ON j.project_id = s.project_id AND j.job_id = s.job_id"""
        )
        staged, existed = first_row(con, "SELECT count(*), count(*) FILTER (existed) FROM _stage")
        stats.inserted = staged - existed
        _append_first_versions(con, "_stage WHERE NOT existed", "row_hash")
        stats.history_versions = stats.inserted
        if existed:
            self._replace_known(con, stats)
        return False

    def _replace_known(self, con: duckdb.DuckDBPyConnection, stats: ApplyStats) -> None:
        """Jobs the table holds already: the newer version wins; a changed one moves the
        version it replaces to the past versions."""
        oldest = "'-infinity'::TIMESTAMPTZ"
        if self._spools:
            # Every partition a stored job of the batch is in, or moves to, changes in place.
            self._taint_spools(con.execute(
                f"""SELECT project_id, old_day FROM _stage WHERE existed AND old_day IS NOT NULL
                UNION SELECT project_id, {utc_day('create_time')} FROM _stage WHERE existed AND create_time IS NOT NULL"""
            ).fetchall())
        # A winner whose content differs is a new version. valid_from: its lastupdate_time;
        # without one, create_time for a first version and the observation time for a later
        # one (so versions do not overlap). A view of _stage, which nothing changes after: each
        # statement below reads the few columns it needs, where copying the winners' whole rows
        # into a table took 30-45 ms of a million-job change capture's update window.
        con.execute(
            f"""CREATE OR REPLACE TEMP VIEW _win AS
            SELECT *, old_row_hash IS DISTINCT FROM row_hash AS new_version,
                   coalesce(lastupdate_time, CASE WHEN old_row_hash IS NULL THEN create_time ELSE synced_at END)
                       AS new_valid_from
            FROM _stage
            WHERE existed AND coalesce(lastupdate_time, {oldest}) >= coalesce(old_lastupdate_time, {oldest})"""
        )
        winners, versions = first_row(con, "SELECT count(*), count(*) FILTER (new_version) FROM _win")
        existed, undeleting = first_row(
            con, "SELECT count(*), count(*) FILTER (was_deleted) FROM _stage WHERE existed")
        stats.updated = winners
        stats.stale = existed - winners
        stats.history_versions += versions
        # The replaced versions go to the history first: the columns some new version changes
        # say what its partition's file changes in (and which columns the UPDATE below sets).
        changed = self._replace_versions(con) if versions else []
        # Lake partitions. A new version in the creation day of the row it replaces leaves that
        # partition the same jobs, changed in place: its changed columns are spliced into the
        # file with the stamps (see lake.py). One whose creation day moved changes which jobs
        # two partitions hold: both are written whole. A winner that is no new version changes
        # only its synced_at, in its day: its partition is marked for its stamps alone.
        # The models read no synced_at: for them only new versions change anything.
        moved = f"new_version AND {utc_day('create_time')} IS DISTINCT FROM old_day"
        mark_lake(con, f"SELECT project_id, {utc_day('create_time')} FROM _win WHERE {moved}"
                       f" UNION ALL SELECT project_id, old_day FROM _win WHERE {moved}")
        mark_lake(con, f"SELECT project_id, old_day FROM _win WHERE new_version AND NOT ({moved})",
                  stamps_only=True, in_place=changed)
        mark_lake(con, "SELECT project_id, old_day FROM _win WHERE NOT new_version", stamps_only=True)
        mark_model_jobs(con, "SELECT project_id, job_id FROM _win WHERE new_version")
        # A stale row still proves the job is listed: clear its deletion mark.
        if undeleting:
            # One _stage row per key, each on the row it read: the count is exact. (With
            # RETURNING the same UPDATE of 50 jobs took 0.14 s at a million jobs, without 4 ms.)
            con.execute(
                f"""UPDATE {JOBS_TABLE} j SET deleted_at = NULL FROM _stage s
                WHERE s.existed AND s.was_deleted AND j.rowid = s.old_rowid"""
            )
            stats.undeleted = undeleting
            mark_lake(con, "SELECT project_id, old_day FROM _stage WHERE existed AND was_deleted", stamps_only=True)
            mark_model_jobs(con, "SELECT project_id, job_id FROM _stage WHERE existed AND was_deleted")
        # The winners replace their rows in place, in the columns some winner changes (only
        # synced_at when no winner is a new version). Deleted and re-appended instead, 14,000
        # changed jobs of a million left deletions in every row group, and the checkpoint after
        # took 4.3 s instead of 0.1 s (rows also stay in creation order, which the lake export's
        # create_time filter skips row groups by); setting every column of 7,000 rows took
        # 0.7-0.9 s, the few a change capture changes 0.08 s. The rows are found by the rowid
        # _known read: the statements before this one set scalar columns only, which DuckDB
        # updates in place, keeping rowids (it re-inserts a row whose LIST column is set, as this
        # statement may). Joined on the key instead, it read every key of the table: 40 ms for
        # a day's 3,990 jobs at a million, 5 ms by rowid.
        columns = [f"{c} = w.{c}" for c in changed]
        con.execute(
            f"""UPDATE {JOBS_TABLE} AS j SET {", ".join([*columns, "synced_at = w.synced_at"])}, deleted_at = NULL,
                valid_from = CASE WHEN w.new_version THEN w.new_valid_from ELSE w.old_valid_from END,
                observed_at = CASE WHEN w.new_version THEN w.synced_at ELSE w.old_observed_at END,
                row_hash = w.row_hash
            FROM _win AS w WHERE j.rowid = w.old_rowid"""
        )

    @staticmethod
    def _replace_versions(con: duckdb.DuckDBPyConnection) -> list[str]:
        """For the winners that are new versions: copy the rows they replace to the past
        versions, and return the content columns some of them change (_changed_columns).

        The replaced rows are fetched once, by the rowid _stage read (this transaction only
        updates rows in place): a join on the key read every column of the whole table, 0.59 s
        per 7,000 changed jobs at a million, the rowids 0.30 s. A winner that is no new version
        changes nothing but synced_at, and is not fetched. The rowids' range, given as constants,
        lets DuckDB skip the row groups outside it: the jobs a change capture changes are mostly
        recent ones, and at a million jobs it read 2 row groups of 9 (80 ms instead of 138 ms)."""
        lo, hi = first_row(con, "SELECT min(old_rowid), max(old_rowid) FROM _win WHERE new_version")
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _old AS
            SELECT rowid AS old_rowid, * FROM {JOBS_TABLE}
            WHERE rowid BETWEEN $lo AND $hi AND rowid IN (SELECT old_rowid FROM _win WHERE new_version)""",
            {"lo": lo, "hi": hi},
        )
        # The version a new one replaces, as the history showed it: synced when first observed,
        # valid until the new one, not deleted (the job is listed).
        con.execute(
            f"""INSERT INTO {PAST_VERSIONS_TABLE} ({_COLS}, valid_from, valid_to, observed_at, deleted_at, row_hash)
            SELECT {_PAST_COLS}, j.valid_from, w.new_valid_from, j.observed_at, NULL, j.row_hash
            FROM _old j JOIN _win w ON j.old_rowid = w.old_rowid
            WHERE w.old_row_hash IS NOT NULL"""
        )
        return _changed_columns(con)


#: The jobs table's bookkeeping of the current version (see migration 004).
_VERSION_COLS = "valid_from, observed_at, row_hash"
#: A job's content: the columns a new version may change (not the key, not synced_at).
_CONTENT_COLS = [c for c in JOB_COLUMNS if c not in ("project_id", "job_id", "synced_at")]
#: A jobs row (alias j) as a history version: synced_at is when the version was first observed.
_PAST_COLS = ", ".join("j.observed_at" if c == "synced_at" else f"j.{c}" for c in JOB_COLUMNS)


def _changed_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The content columns in which some new version (_win) differs from the row it replaces
    (_old), compared in Arrow (NULL equal to NULL): the same in SQL, a FILTER or bool_or() per
    column, took 0.4 s for 7,000 rows, the Arrow comparison 0.1 s with the fetch.

    Each side is read from its own table in old_rowid order (_old holds exactly the rows the
    new versions replace, one per rowid), so row i of one is row i of the other. (Were they
    ever of different lengths, every column would differ and be set: slower, never wrong.)
    Joining them on old_rowid instead took the process from 250 MB to 920 MB for 8,000 changed
    jobs spread over a million-job table, outside DuckDB's memory cap."""
    columns = ", ".join(_CONTENT_COLS)
    olds = con.sql(f"SELECT {columns} FROM _old ORDER BY old_rowid").to_arrow_table()
    news = con.sql(f"SELECT {columns} FROM _win WHERE new_version ORDER BY old_rowid").to_arrow_table()
    return [c for c in _CONTENT_COLS if not olds.column(c).equals(news.column(c))]


def _distinct_keys(jobs: pa.Table) -> bool:
    """Whether every (project_id, job_id) of ``jobs`` is there once."""
    projects = jobs["project_id"]
    if pc.count_distinct(projects).as_py() <= 1:
        return pc.count_distinct(jobs["job_id"]).as_py() == jobs.num_rows
    return jobs.group_by(["project_id", "job_id"]).aggregate([]).num_rows == jobs.num_rows


def _append_first_versions(con: duckdb.DuckDBPyConnection, rows: str, row_hash: str) -> None:
    """Jobs never seen (``rows``: a relation and its filter), appended as their first version,
    their key hashes kept and their lake partitions and model days marked. A first version's
    valid_from is its lastupdate_time, else its create_time; ``row_hash`` is the expression of
    its content hash over ``rows``.

    One script, one call: DuckDB's Python client takes the GIL back after every statement
    and between a statement's tasks, and while the event loop and the settling thread hold it
    each take can wait up to the interpreter's switch interval (5 ms). With a thread busy in
    Python beside it, 30 transactions of 10,000 new jobs at a million jobs took 414-427 ms each
    in one call against 456-498 ms in five (111-133 ms with nothing beside them)."""
    # The appended keys and days are read from ``rows`` once: a registered Arrow table is
    # handed to DuckDB through Python, once per statement that reads it.
    days = "SELECT DISTINCT project_id, create_day FROM _appended"
    con.execute(";\n".join([
        f"""INSERT INTO {JOBS_TABLE} ({_COLS}, deleted_at, {_VERSION_COLS})
        SELECT {_COLS}, NULL, coalesce(lastupdate_time, create_time), synced_at, {row_hash}
        FROM {rows}""",
        f"""CREATE OR REPLACE TEMP TABLE _appended AS
        SELECT {key_hash_expr()} AS key_hash, project_id, {utc_day('create_time')} AS create_day FROM {rows}""",
        f"INSERT INTO {KEYS_TABLE} SELECT key_hash FROM _appended",
        mark_lake_sql(days),
        mark_model_days_sql(days),
    ]))


#: What the upsert reads of a known job's stored row, besides its key and rowid (old_rowid).
_KNOWN_COLS = ("lastupdate_time", "create_time", "deleted_at", "valid_from", "observed_at", "row_hash")


def _find_known(con: duckdb.DuckDBPyConnection, jobs: pa.Table, distinct: bool) -> int:
    """The stored rows of the batch's jobs (``jobs``, registered as _incoming), into the temp
    table _known: key, old_rowid and _KNOWN_COLS. Returns how many; with none of a batch of
    ``distinct`` keys known, _known may be left unmade (the caller appends the batch as it is).

    Rows stay in creation order, so DuckDB reads only the row groups whose create_time range
    meets the batch's, and a job's create_time rarely changes: _known is read from there
    first. When that finds every key (a day listed again), it is complete. Otherwise the key
    hashes say whether a key it lacks may be stored elsewhere (_maybe_known); only then is
    _known read from the whole table. So a change capture's update window (new jobs among
    changed ones) reads the table once, not twice. At a million jobs, a day's 3,990 known jobs
    took 120-130 ms to apply instead of 245-260 ms, by this and the rowid joins; a batch of
    10,000 new jobs 44 ms to look for instead of 38 ms."""
    lo, hi = (v.as_py() for v in pc.min_max(jobs["create_time"]).values())
    keys = jobs.num_rows if distinct else jobs.group_by(["project_id", "job_id"]).aggregate([]).num_rows
    found = 0
    if lo is not None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _known AS {_KNOWN_ROWS} WHERE t.create_time BETWEEN $lo AND $hi",
                    {"lo": lo, "hi": hi})
        found = first_row(con, "SELECT count(*) FROM _known")[0]
        if found == keys:
            return found
    if _maybe_known(con, beyond_known=lo is not None):
        con.execute(f"CREATE OR REPLACE TEMP TABLE _known AS {_KNOWN_ROWS}")
        return first_row(con, "SELECT count(*) FROM _known")[0]
    if lo is None and not distinct:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _known AS {_KNOWN_ROWS} WHERE false")
    return found


def _maybe_known(con: duckdb.DuckDBPyConnection, *, beyond_known: bool = False) -> bool:
    """Whether a key hash of the batch (_incoming; with ``beyond_known``, of its keys _known
    lacks) is among the stored ones (KEYS_TABLE, 8 bytes a job): when none is, the table holds
    none of those keys. A hash found (a job stored already, or two keys of one hash) is settled
    by reading _known from every stored key. Looking at the keys themselves took 21 ms a batch
    of 10,000 at a million jobs (3.4 ms for the hashes), and grows with the history."""
    keys = ("(SELECT * FROM _incoming i ANTI JOIN _known k ON i.project_id = k.project_id AND i.job_id = k.job_id)"
            if beyond_known else "_incoming")
    return bool(first_row(
        con, f"SELECT EXISTS (SELECT 1 FROM {KEYS_TABLE} t SEMI JOIN (SELECT {key_hash_expr()} AS key_hash FROM {keys}) k"
        " ON t.key_hash = k.key_hash)")[0])


#: The jobs rows whose key is among the batch's (_incoming), as _known holds them: a semi join
#: that hashes the batch's keys, not the table, so it holds memory for the batch only, however
#: large the history.
_KNOWN_ROWS = (f"SELECT t.project_id, t.job_id, t.rowid AS old_rowid, {', '.join(f't.{c}' for c in _KNOWN_COLS)}"
               f" FROM {JOBS_TABLE} t SEMI JOIN _incoming k ON t.project_id = k.project_id AND t.job_id = k.job_id")
