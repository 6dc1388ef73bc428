"""What a sync run holds between the fetch and the warehouse: the jobs listed and not yet
written, normalized and screened together (settle), written in batches of about FLUSH_ROWS, one
warehouse transaction each (flush, apply); and the live jobs stored before the run wrote any,
which a reconciling window's listing is held against (load_live, would_delete).

The async stages that feed it, and the evidence a deletion needs: :mod:`.pipeline`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.crashpoints import crashpoint
from pipelines.ingest import JOBS_SCHEMA, Normalized, normalize_windows, screen
from pipelines.metastudio.paging import SplitBudget, Window, WindowResult
from pipelines.settings import Settings
from pipelines.sync.plan import Task
from pipelines.sync.report import WRITING, SyncProgress, SyncReport
from pipelines.warehouse import ReconciledRange, Warehouse, WindowRecord, count_in_ranges

log = logging.getLogger("voicejobs.sync")

US = timedelta(microseconds=1)
# Rows per warehouse transaction: bounds memory, amortises commits. Each transaction pays about
# a dozen statements and a WAL write whatever its size, in a thread that waits for the GIL
# between statements: in a million-job backfill at 0 ms the transactions were busy for 33 of
# the fetch's 36 s (0.34 s each, against 0.11-0.13 s alone), and the consumer waited 10.5 s for
# them. 20,000 rows with NORMALIZE_ROWS at 2,000 and DuckDB capped at 80 MB (DUCKDB_MEMORY_LIMIT)
# took such syncs 44.7-45.2 s against 48.1-48.2 s for 10,000, 4,000 and 96 MB, at the same peak
# (325-329 MB against 327 MB; two runs each, alternated). At 100,000 jobs, where DuckDB does not
# fill its cap, the peak rose from 266 MB to 290-296 MB (benchmarks/run.py).
# With normalizing and the transactions on a thread each and Arrow's C++ pool on malloc, the
# fetch became the run's only height, and the batches in flight the part of it that moves: a
# million-job sync at 0 ms (in-process, RSS sampled every 20 ms, one run each unless said)
# peaked at 301-308 MB with 20,000 rows, 292-300 MB with 16,000 and 286-292 MB with 12,000 (seven
# runs), DuckDB at its cap in each; a checkpoint every 16 or 24 MB of WAL instead of 32 lowered
# nothing (DuckDB kept other blocks up to its cap) and made the file larger.
FLUSH_ROWS = 12_000
FLUSH_BYTES = 64 << 20  # ... or this much Arrow data, whichever comes first (huge fields)
#: While a batch commits, the next one goes on filling past FLUSH_ROWS by this share of it before
#: the consumer waits for the commit (a batch of FLUSH_BYTES always waits). A consumer that waited
#: at FLUSH_ROWS stopped absorbing, so the windows stopped requesting: in a million-job backfill
#: at 20 ms latency it waited on commits 7-9% of the fetch with 3 requests in flight on average
#: (of 8; none a quarter of that time), 2% with this slack. The fetch and write took 38.8-43.9 s
#: against 43.6-47.3 s (four runs each, alternated), and peaked 3-7 MB higher. A quarter of a
#: batch fetched as fast and gave back most of that: three alternated pairs of 20 ms backfills
#: (the fetch and write alone, in-process) took 48.7-49.7 s and peaked at 282-286 MB against
#: 47.9-51.1 s and 288-292 MB with half a batch, whose peak reached 300.1 MB in a benchmark run.
COMMIT_SLACK = 0.25
# Records of finished windows normalized together. The consumer absorbs nothing while a group is
# normalized, and the windows wait for it; with 20,000-row transactions, 2,000 instead of 4,000
# took a million-job sync's peak from 339-344 MB to 325-329 MB, in the same time.
NORMALIZE_ROWS = 2_000


@dataclass
class _Batch:
    """What one warehouse transaction writes."""

    tables: list[pa.Table]
    windows: list[WindowRecord]
    quarantine: list
    reconciled: list[ReconciledRange] = field(default_factory=list)


def listed_completely(result: WindowResult) -> bool:
    """Positive evidence that the source listed a window: it was paged (a window after the
    source's clock never is) and every part's distinct jobs agree with its count."""
    return bool(result.leaves) and all(leaf.fetched == leaf.api_count for leaf in result.leaves)


class Run:
    """The state of one sync run: buffers, counters and the warehouse it writes."""

    def __init__(self, settings: Settings, warehouse: Warehouse, run_id: str, report: SyncReport,
                 progress: Callable[[SyncProgress], None] | None) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.run_id = run_id
        self.report = report
        self.progress_cb = progress
        self.progress = SyncProgress()
        self.tables: list[pa.Table] = []
        self.buffered = 0
        self.windows: list[WindowRecord] = []
        self.quarantine: list = []
        self.reconciled: list[ReconciledRange] = []
        self.newest_update: dict[str, datetime] = {}
        self.buffered_bytes = 0
        self.split_budget = SplitBudget()
        # Finished windows waiting to be normalized together: (task, window, records, synced_at).
        self.pending: list[tuple[Task, Window, list, datetime]] = []
        self.pending_rows = 0
        # Creation times (epoch us, sorted) of each project's live jobs in the windows it lists
        # next, before this run wrote any there: what a reconciling window's listing is held
        # against (see load_live, check_deletions).
        self.live_before: dict[str, np.ndarray] = {}

    def load_live(self, project_id: str, windows: Sequence[Window], times: np.ndarray | None = None) -> None:
        """Read the live creation times ``windows`` span, before the run writes any there: what
        their listings are held against (see check_deletions), in place of what was read for
        the project's earlier windows (a change capture's gap days, then its disagreeing
        ranges). ``times``: read already, over a span that holds the windows."""
        if not windows:
            return
        if times is None:
            since, until = min(w.since for w in windows), max(w.until for w in windows)
            times = self.warehouse.live_creation_times(project_id, since, until)
        self.live_before[project_id] = times

    def would_delete(self, task: Task, result: WindowResult) -> tuple[int, int]:
        """(live jobs stored in the task's owner range, how many of them the listing lacks at least)."""
        times = self.live_before.get(task.project_id)
        if times is None or task.owner_since is None:
            return 0, 0
        # The owner range is half-open; count_in_ranges counts closed ranges.
        [stored] = count_in_ranges(times, [(task.owner_since, task.owner_until - US)])
        return stored, max(0, stored - result.listed)

    def absorb_part(self, task: Task, window: Window, jobs: list[dict], synced_at: datetime) -> None:
        """Take jobs of a window still being listed (see fetch_window's sink); its record and
        its deletions come with the finished window (absorb()). They wait to be normalized
        with others (settle(), once settle_due)."""
        self.pending.append((task, window, jobs, synced_at))
        self.pending_rows += len(jobs)

    @property
    def settle_due(self) -> bool:
        """Enough rows wait to be normalized together."""
        return self.pending_rows >= NORMALIZE_ROWS

    def absorb(self, task: Task, result: WindowResult, synced_at: datetime, listed_at: datetime | None = None) -> None:
        """Take one finished window: what it listed and what it proves deleted now; its rows
        wait to be normalized with others (see absorb_part())."""
        if result.jobs:  # a result fetched without a sink carries its jobs
            self.absorb_part(task, result.window, result.jobs, synced_at)
        for leaf in result.leaves:
            self.windows.append(
                WindowRecord(task.project_id, task.kind, leaf.window.since, leaf.window.until,
                             leaf.api_count, leaf.fetched, leaf.pages, listed_at)
            )
        if not listed_completely(result):
            self.report.mismatched_windows += bool(result.leaves)
        if task.reconcile and task.owner_since is not None:
            if listed_completely(result):
                owner_until = min(task.owner_until, result.window.until)
                # The stored jobs it did not list are marked deleted inside the batch's transaction.
                self.reconciled.append(ReconciledRange(task.project_id, task.owner_since, owner_until, result.ids()))
            elif result.leaves:
                log.warning("Window %s..%s of %s did not reconcile with its count; deletions not marked there.",
                            task.window.since, task.window.until, task.project_id)
        self.report.windows += 1
        self.report.jobs_fetched += result.listed
        crashpoint("fetched")
        self.progress.windows_done += 1
        self.progress.jobs += result.listed
        self.progress.retrying = None
        if self.progress_cb:
            self.progress_cb(self.progress)

    def settle(self) -> None:
        """Normalize and screen the windows absorbed since the last call, into the buffer.

        Windows of one project are normalized together (a window's fixed cost is paid once
        for many small windows); each keeps its own rows and its own screening."""
        pending, self.pending, self.pending_rows = self.pending, [], 0
        if not pending:
            return
        by_project: dict[str, list[int]] = {}
        for i, (task, *_rest) in enumerate(pending):
            by_project.setdefault(task.project_id, []).append(i)
        normalized: list = [None] * len(pending)
        for project_id, indexes in by_project.items():
            group = normalize_windows([pending[i][2] for i in indexes], project_id, pending[indexes[-1]][3],
                                      personal_data=self.settings.personal_data)
            for i, rows in zip(indexes, group, strict=True):
                normalized[i] = rows
        # Windows normalized together are slices of one table: its size and its oversized check
        # are taken once, not per window. A table's nbytes costs 0.3-0.4 ms (5 us a column),
        # and it was taken twice per window under the GIL the event loop needs: the demo's 366
        # windows fetched in 1.9 s instead of 2.1 s without it. The bytes are counted before
        # screening (a flush trigger: a quarantined row only brings the flush forward).
        together = {id(rows.slice_of): rows.slice_of for rows in normalized if rows.slice_of is not None}
        fits = {key for key, table in together.items() if screen.oversized(table) is None}
        alone = [rows.table for rows in normalized if rows.slice_of is None]
        self.buffered_bytes += sum(table.nbytes for table in [*together.values(), *alone])
        for (task, window, jobs, _synced_at), rows in zip(pending, normalized, strict=True):
            self._screen(task, window, jobs, rows, fits=id(rows.slice_of) in fits)  # a lone window's is id(None)

    def _screen(self, task: Task, window: Window, jobs: list, normalized: Normalized, *, fits: bool = False) -> None:
        """One window's normalized rows into the buffer: its own, not a neighbour's; what no table
        should hold quarantined; the newest update time noted. ``fits``: no row is oversized
        (known of the table the rows are a slice of). settle() counts the bytes."""
        personal_data = self.settings.personal_data
        table = normalized.table
        quarantine = list(normalized.quarantine)
        raw: dict | None = None
        if task.owner_since is not None and table.num_rows:
            table, outside = screen.split_owned(table, (window.since, window.until), (task.owner_since, task.owner_until))
            if outside.num_rows:
                raw = screen.raw_index(jobs)
                quarantine += screen.quarantine_rows(
                    outside, raw, task.project_id,
                    f"create_time: outside the creation window {window} it was listed in", personal_data)
                self.report.out_of_window += outside.num_rows
        too_big = None if fits else screen.oversized(table)
        if too_big is not None:
            raw = raw if raw is not None else screen.raw_index(jobs)
            quarantine += screen.quarantine_rows(
                table.filter(too_big), raw, task.project_id,
                f"record: more than {screen.MAX_RECORD_BYTES:,} bytes of text", personal_data)
            table = table.filter(pc.invert(too_big))
        if table.num_rows:
            newest = pc.max(table["lastupdate_time"]).as_py()
            if newest is not None:
                prev = self.newest_update.get(task.project_id)
                self.newest_update[task.project_id] = max(prev, newest) if prev else newest
        self.tables.append(table)
        self.buffered += table.num_rows
        self.quarantine.extend(quarantine)
        self.report.quarantined += len(quarantine)

    def retrying(self, note: str) -> None:
        """Show the latest retry on the progress line (the summary counts them all)."""
        self.progress.retrying = note
        if self.progress_cb:
            self.progress_cb(self.progress)

    def announce(self, phase: str) -> None:
        """Tell the progress display that a new phase starts (once)."""
        if self.progress.phase == phase:
            return
        self.progress.phase = phase
        if self.progress_cb:
            self.progress_cb(self.progress)

    def _buffer_holds(self, rows: float) -> bool:
        """The buffer (normalized and pending) holds ``rows`` rows, or FLUSH_BYTES of data."""
        return self.buffered + self.pending_rows >= rows or self.buffered_bytes >= FLUSH_BYTES

    @property
    def buffer_full(self) -> bool:
        return self._buffer_holds(FLUSH_ROWS)

    @property
    def buffer_at_limit(self) -> bool:
        """Full past the slack a commit in progress allows (COMMIT_SLACK): the consumer must wait."""
        return self._buffer_holds(FLUSH_ROWS * (1 + COMMIT_SLACK))

    def flush(self, *, deleted_at: datetime | None, watermarks: dict[str, datetime] | None = None) -> None:
        """Apply the buffer in one warehouse transaction (also when empty, to record windows)."""
        batch = self.take()
        if batch is not None:
            self.announce(WRITING)
        if batch is not None or watermarks:
            self.apply(batch or _Batch([], [], []), deleted_at=deleted_at, watermarks=watermarks)

    def take(self) -> _Batch | None:
        """Hand over the buffer (None when empty) and start a new one, so absorbing can go on."""
        self.settle()
        if not (self.tables or self.windows or self.quarantine or self.reconciled):
            return None
        batch = _Batch(self.tables, self.windows, self.quarantine, self.reconciled)
        self.tables, self.buffered, self.windows, self.quarantine = [], 0, [], []
        self.reconciled, self.buffered_bytes = [], 0
        return batch

    def apply(self, batch: _Batch, *, deleted_at: datetime | None,
              watermarks: dict[str, datetime] | None = None) -> None:
        """One warehouse transaction for ``batch``; safe to run in a worker thread beside absorb()."""
        # The parts are slices of about 500 rows; DuckDB reads one chunk per column for less: a
        # million-job sync used 103-105 s of CPU against 108-110 s with the parts as they came.
        jobs = pa.concat_tables(batch.tables).combine_chunks() if batch.tables else JOBS_SCHEMA.empty_table()
        batch.tables = []  # the combined table is the only copy from here on
        crashpoint("before_flush")
        stats = self.warehouse.apply(
            self.run_id,
            jobs=jobs,
            windows=batch.windows,
            quarantine=batch.quarantine,
            deleted_at=deleted_at,
            watermarks=watermarks,
            reconciled=batch.reconciled,
            export=False,  # the lake is written once, when the run finishes (finish_run)
        )
        self.report.rows_written += jobs.num_rows
        self.report.deleted += stats.deleted
        if watermarks:
            crashpoint("watermark_committed")
