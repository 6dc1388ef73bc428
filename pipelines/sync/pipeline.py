"""The async pipeline of a sync: windows fetched concurrently, absorbed, applied in batches.

Bounded stages, so memory does not grow with the history: a window's jobs reach the consumer
in chunks while it is listed (a burst day is never held whole), a window holds its slot from
its first request until it is absorbed, and one batch at a time is applied to the warehouse in
a worker thread while the next is fetched. Deletions need evidence (:func:`listed_completely`,
:func:`check_deletions`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.crashpoints import crashpoint
from pipelines.ingest import JOBS_SCHEMA, Normalized, normalize_windows, screen
from pipelines.metastudio.client import MetaStudioClient
from pipelines.metastudio.errors import MetaStudioError
from pipelines.metastudio.paging import SplitBudget, Window, WindowResult, fetch_window
from pipelines.settings import Settings
from pipelines.sync.plan import Task
from pipelines.sync.report import WRITING, SyncProgress, SyncReport
from pipelines.sync.stage_thread import StageThread
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
#: A reconciling window that would mark more than this share of its range's live jobs
#: deleted (and at least MASS_DELETION_MIN jobs) is listed again before it is believed.
MASS_DELETION_SHARE = 0.5
MASS_DELETION_MIN = 10


class SourceDisagreementError(MetaStudioError):
    """Two listings of the same range disagree where a sync would mark many jobs deleted."""


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


async def check_deletions(client: MetaStudioClient, run: Run, task: Task, result: WindowResult,
                          not_after: datetime) -> None:
    """Re-list a reconciling window whose listing would delete an unusual share of its live jobs.

    One listing can be wrong in ways its own count does not show (a server answering from an
    empty replica, a proxy serving a stale page). Before believing that more than
    MASS_DELETION_SHARE of a range's live jobs are gone, the range is listed again; the run
    stops unless both listings hold the same jobs."""
    if not listed_completely(result):
        return
    stored, missing = run.would_delete(task, result)
    if missing < MASS_DELETION_MIN or missing <= MASS_DELETION_SHARE * stored:
        return
    log.warning("The listing of %s %s lacks %d of its %d live jobs: listing it again before marking them deleted.",
                task.project_id, result.window, missing, stored)
    again = await fetch_window(client, task.project_id, task.window, kind=task.kind, not_after=not_after,
                               split_threshold=run.settings.split_threshold, split_budget=run.split_budget)
    run.report.relisted_ranges += 1
    first_ids, again_ids = set(result.ids()), set(again.ids())
    if not listed_completely(again) or again_ids != first_ids:
        raise SourceDisagreementError(
            f"two listings of {task.project_id} creation times {result.window} disagree ({len(first_ids)} then "
            f"{len(again_ids)} jobs) where the warehouse holds {stored} live jobs; nothing there was marked "
            "deleted. The source may be unstable: run the sync again later"
        )


@dataclass
class _Part:
    """Jobs of a window still being listed, on their way to the consumer."""

    window: Window
    jobs: list[dict]


#: What travels to the consumer: the task, then its parts, its finished result (or the
#: exception that ended it, with no event), and the event that frees the sender once absorbed.
_Finished = tuple[Task, _Part | WindowResult | Exception, asyncio.Event | None]


async def _fetch(client: MetaStudioClient, run: Run, task: Task, not_after: datetime,
                 slots: asyncio.Semaphore, finished: asyncio.Queue[_Finished]) -> None:
    """One task's window, fetched (and for a reconciling task checked) into ``finished``.

    Its jobs go to the consumer in chunks while it is listed, each awaited until absorbed, so
    a window holds a few MB of decoded JSON however many jobs its day has."""

    async def sink(window: Window, jobs: list[dict]) -> None:
        absorbed = asyncio.Event()
        finished.put_nowait((task, _Part(window, jobs), absorbed))
        await absorbed.wait()

    async with slots:
        try:
            result = await fetch_window(
                client, task.project_id, task.window, kind=task.kind, not_after=not_after,
                split_threshold=task.split_threshold or run.settings.split_threshold, split_budget=run.split_budget,
                sink=sink,
            )
            if task.reconcile:
                await check_deletions(client, run, task, result, not_after)
        except Exception as exc:  # handed to the consumer, which raises it
            finished.put_nowait((task, exc, None))
            return
        absorbed = asyncio.Event()
        finished.put_nowait((task, result, absorbed))
        del result
        await absorbed.wait()  # the slot is held until the window is absorbed


async def run_tasks(client: MetaStudioClient, run: Run, tasks: Sequence[Task], not_after: datetime) -> None:
    """Fetch every task's window concurrently; absorb windows as they finish, apply batches behind.

    A pipeline with bounded stages, so memory does not grow with the history:
    a window's jobs are absorbed in chunks while it is listed, a window holds its slot until
    it is absorbed (fetched jobs never pile up when normalizing is the slower stage), and one
    batch at a time is applied in a thread of its own while the next is fetched and normalized
    (DuckDB and Parquet writing release the GIL). A batch is applied only after the previous
    one committed, so transactions keep their order; meanwhile the next batch may fill past
    FLUSH_ROWS by COMMIT_SLACK, so the windows' requests go on. Normalizing runs in another
    thread, one group at a time, so the event loop goes on reading answers and sending requests.
    """
    run.progress.windows_total += len(tasks)
    with StageThread("normalize") as normalizer, StageThread("transactions") as writer:
        await _run_stages(client, run, tasks, not_after, normalizer, writer)


async def _run_stages(client: MetaStudioClient, run: Run, tasks: Sequence[Task], not_after: datetime,
                      normalizer: StageThread, writer: StageThread) -> None:
    # Keyset paging reads a window one page after another, so max_in_flight windows keep every
    # request slot busy; two more keep the pipe full while one is normalized.
    window_slots = asyncio.Semaphore(run.settings.max_in_flight + 2)
    # Finished windows travel through a queue, not as task results: a finished asyncio task
    # keeps its result for as long as the task is referenced, which would hold every page.
    finished: asyncio.Queue[_Finished] = asyncio.Queue()
    applying: asyncio.Future | None = None
    pending = [asyncio.ensure_future(_fetch(client, run, task, not_after, window_slots, finished)) for task in tasks]
    try:
        done = 0
        while done < len(tasks):
            task, result, absorbed = await finished.get()
            if absorbed is None:
                raise result
            if isinstance(result, _Part):
                run.absorb_part(task, result.window, result.jobs, datetime.now(UTC))
            else:
                run.absorb(task, result, datetime.now(UTC), client.server_now())
                done += 1
            del result
            absorbed.set()
            if run.settle_due:
                # In a worker thread: the event loop meanwhile reads the answers that arrive and
                # sends the next pages. Normalizing on it held every window for 40-60 ms at a
                # time; at 20 ms latency a million-job sync took 89 s instead of 94-97 s.
                await normalizer.run(run.settle)
            if run.buffer_full:
                if applying is not None and not applying.done() and not run.buffer_at_limit:
                    continue  # the batch before is committing: absorb meanwhile, up to the limit
                if applying is not None:
                    await applying
                batch = run.take()
                if batch is not None:
                    applying = asyncio.ensure_future(
                        writer.run(run.apply, batch, deleted_at=client.server_now()))
        run.settle()  # the last windows' rows into the buffer, and their newest update times noted
        if applying is not None:
            run.announce(WRITING)
            await applying
            applying = None
    finally:
        for fut in pending:
            fut.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if applying is not None:  # a failure elsewhere: let the transaction in flight end first
            await asyncio.gather(applying, return_exceptions=True)
