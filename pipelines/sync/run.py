"""One sync run from start to end: the source's clock, the plan of its mode, the pipeline,
and with ``refresh`` the models and the snapshot, all under one hold of the warehouse."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext, suppress
from datetime import date, datetime, timedelta

from pipelines.arrowpool import arrow_on_malloc
from pipelines.crashpoints import crashpoint
from pipelines.ingest.arrow import skip_pandas_probe
from pipelines.metastudio.bisection import find_disagreeing_windows
from pipelines.metastudio.client import MetaStudioClient
from pipelines.metastudio.paging import Window, day_window, floor_second
from pipelines.settings import Settings
from pipelines.source import claim, identity_of
from pipelines.sync.buffer import Run
from pipelines.sync.pipeline import run_tasks
from pipelines.sync.plan import (
    Mode,
    day_tasks,
    days_between,
    describe_days,
    gap_days,
    range_tasks,
    update_task,
)
from pipelines.sync.report import SyncProgress, SyncReport
from pipelines.warehouse import LakeExportError, Warehouse, count_in_ranges

log = logging.getLogger("voicejobs.sync")

#: The phase (SyncReport.phase_seconds) of a sync's serving snapshot and lake export, run together.
SNAPSHOT_PHASE = "snapshot and lake"


def refresh_and_publish(warehouse: Warehouse, settings: Settings,
                        phase: Callable[[str], None] | None = None, *, full: bool = False,
                        lake: Callable[[bool], bool] | None = None) -> dict[str, float]:
    """After a sync: rebuild the SQL models, publish the snapshot BI tools read, and with
    VOICEJOBS_POSTGRES_URL set, publish that snapshot into PostgreSQL.

    Runs on the warehouse's open connection when inside ``warehouse.connect()``, so the
    sync, the models and the snapshot hold the file's lock as one unit of work. ``phase``
    hears each step as it starts; returns the seconds of each. The models rebuild what changed
    since their last refresh (pipelines/incremental.py); with ``full``, everything.

    ``lake(alone)`` exports the lake: first in a thread beside the models (``alone`` False: it
    declines, returning False, an export too big to share the database's memory cap with
    them), else while the snapshot is written to disk, once the warehouse is copied. The
    models' phase is theirs; the rest of an export beside them counts in SNAPSHOT_PHASE."""
    from pipelines.models import refresh_models

    seconds: dict[str, float] = {}
    with warehouse.connect() as con:
        if phase:
            phase("building the SQL models")
        started = time.monotonic()
        with _beside(lake) as exported:
            refresh_models(con, allow_unmasked_personal_data=settings.personal_data == "raw", count_rows=False,
                           incremental=not full)
            built = time.monotonic()
        seconds["models"] = built - started
        crashpoint("models_refreshed")
        if phase:
            phase("publishing the serving snapshot")
        with warehouse.publishing_serving():
            if lake and not exported():
                lake(True)
        seconds[SNAPSHOT_PHASE if lake else "snapshot"] = time.monotonic() - built
    if settings.postgres_url:
        # BI servers on other hosts read PostgreSQL: it gets what the new snapshot holds.
        from pipelines.publish import publish

        if phase:
            phase("publishing to PostgreSQL")
        started = time.monotonic()
        publish(warehouse.serving_path, settings)
        seconds["postgres"] = time.monotonic() - started
    return seconds


@contextmanager
def _beside(work: Callable[[bool], bool] | None) -> Iterator[Callable[[], bool]]:
    """Run ``work(False)`` in a thread during the block; after it, whether it did its work.
    The block's error comes first: the thread's is raised only when the block ends well, and
    the block never ends before the thread (it shares the warehouse's connection)."""
    if work is None:
        yield lambda: False
        return
    with ThreadPoolExecutor(1, thread_name_prefix="lake-beside-models") as pool:
        future = pool.submit(work, False)
        try:
            yield future.result
        finally:
            wait([future])
    future.result()


def make_client(settings: Settings) -> MetaStudioClient:
    return MetaStudioClient(
        settings.base_url(),
        settings.auth(),
        app_user_id=settings.app_user_id,
        max_in_flight=settings.max_in_flight,
        max_requests_per_second=settings.max_rps,
        timeout=settings.timeout,
        max_attempts=settings.max_attempts,
        max_retry_seconds=settings.max_retry_seconds,
        max_clock_skew_seconds=settings.max_clock_skew_seconds or None,
        max_response_bytes=settings.max_response_bytes,
    )


async def _not_after(client: MetaStudioClient, settings: Settings, project_id: str) -> datetime:
    """The newest instant a window may reach: the source's now minus the safety lag."""
    await client.list_jobs(project_id, {"limit": 1})  # learns the source clock from its Date header
    return client.server_now() - timedelta(seconds=settings.safety_lag_seconds)


async def _capture_project(client: MetaStudioClient, run: Run, project_id: str,
                           not_after: datetime) -> datetime | None:
    """Change capture of one project: never-listed days first, then changes since the reference."""
    settings = run.settings
    gaps, reference = gap_days(run, project_id, not_after)
    if gaps:
        log.warning("Creation days %s of %s were never synced: backfilling %d day%s.",
                    describe_days(gaps), project_id, len(gaps), "s" if len(gaps) != 1 else "")
        tasks = day_tasks([project_id], gaps, reconcile=True)
        run.load_live(project_id, [t.window for t in tasks])
        await run_tasks(client, run, tasks, not_after)
    newest = run.newest_update.get(project_id)
    if reference is None:
        # Nothing was listed before: the backfill is the whole listing. Changes made while it
        # ran carry lastupdate_time >= its start, so the watermark is capped at the start.
        return min(newest, not_after) if newest else not_after
    since_t = reference - timedelta(seconds=settings.lookback_seconds)
    if since_t < not_after:
        update = update_task(project_id, Window(since_t, not_after), settings.split_threshold, settings.max_in_flight)
        await run_tasks(client, run, [update], not_after)
    newest = run.newest_update.get(project_id)
    # Deletions never show in an update window: find the days whose counts disagree.
    run.flush(deleted_at=client.server_now())
    since, until = day_window(settings.first_day).since, floor_second(not_after)  # as the source is asked
    # Nothing writes the warehouse during the bisection: its side is read once for every level.
    times = run.warehouse.live_creation_times(project_id, since, until) if since <= until else None

    def stored(ranges: list[Window]) -> list[int]:
        return count_in_ranges(times, [(w.since, w.until) for w in ranges])

    with run.warehouse.checkpointing():  # the bisection reads ``times``, not the warehouse
        found = await find_disagreeing_windows(client, project_id, since, until, stored)
    run.report.count_checks += found.requests
    if found.windows:
        log.info("Counts disagree on %d creation-time ranges of %s: paging them completely.",
                 len(found.windows), project_id)
        run.load_live(project_id, found.windows, times)  # nothing was written since they were read
        await run_tasks(client, run, range_tasks(project_id, found.windows), not_after)
    return newest if newest and newest > reference else reference


#: The cyclic garbage collector's thresholds while a sync runs (Python's are 700, 10, 10).
SYNC_GC_THRESHOLDS = (20_000, 50, 20)


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The garbage collector runs less often during the run, as it was before after it.

    A sync allocates a few dicts and lists per job, all freed by reference counting (decoded
    JSON holds no cycles), yet each 700 of them set off a collection, and every tenth of those
    went through the whole interpreter's objects: 0.58 s of a 100,000-job backfill's main thread
    (timed with gc.callbacks), 0.15 s with these thresholds."""
    before = gc.get_threshold()
    gc.set_threshold(*SYNC_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def sync(
    settings: Settings,
    *,
    mode: Mode | str = Mode.DAYS,
    since: date | None = None,
    until: date | None = None,
    warehouse: Warehouse | None = None,
    progress: Callable[[SyncProgress], None] | None = None,
    refresh: bool = False,
    full_refresh: bool = False,
) -> SyncReport:
    """Run one sync to completion (blocking). ``mode``: days, incremental or reconcile.

    With ``refresh``, the SQL models and the serving snapshot are rebuilt in the same unit of
    work, under the same hold of the warehouse file: the run is recorded as succeeded only
    when all three are done, and no other process can take the file in between. The models
    rebuild what the run changed; with ``full_refresh``, all of them from the whole warehouse,
    and every lake partition is written again."""
    mode = Mode(mode)
    if mode.by_creation_day:
        if since is None or until is None:
            raise ValueError(f"a {mode} sync needs since and until")
        days_between(since, until)
    warehouse = warehouse or Warehouse.for_settings(settings)
    projects = settings.require_projects()
    identity = identity_of(settings)
    skip_pandas_probe()
    # One connection for the whole run: opening DuckDB per window costs more than paging it.
    with _fewer_collections(), arrow_on_malloc(), warehouse.connect():
        claim(warehouse, identity)
        report = SyncReport(run_id="", mode=mode, projects=projects, since=since, until=until,
                            source=identity.origin, simulated=identity.simulated)
        return _sync_run(settings, warehouse, report, progress, refresh, full_refresh)


def _sync_run(settings: Settings, warehouse: Warehouse, report: SyncReport,
              progress: Callable[[SyncProgress], None] | None, refresh: bool, full_refresh: bool) -> SyncReport:
    since, until = report.since, report.until
    report.run_id = run_id = warehouse.begin_run(report.mode, {
        "since": str(since) if since else None, "until": str(until) if until else None,
        "projects": list(report.projects), "source": report.source})
    run = Run(settings, warehouse, run_id, report, progress)
    started = time.monotonic()
    client = make_client(settings)
    client.on_retry = run.retrying
    try:
        # A publish at the end writes into a spare snapshot, copied while the sync fetches.
        with warehouse.spare_made_ahead() if refresh else nullcontext():
            asyncio.run(_sync(client, run, report.mode, since, until))
            report.phase_seconds["fetch and write"] = time.monotonic() - started
            if refresh:
                report.phase_seconds.update(refresh_and_publish(
                    warehouse, settings, run.announce, full=full_refresh,
                    lake=lambda alone: _export_lake(warehouse, whole=full_refresh, alone=alone)))
    except BaseException:
        report.elapsed_seconds = time.monotonic() - started
        _collect_client_stats(report, client)
        warehouse.finish_run(run_id, "failed", report.as_dict())
        raise
    report.elapsed_seconds = time.monotonic() - started
    _collect_client_stats(report, client)
    warehouse.finish_run(run_id, "succeeded", report.as_dict())
    crashpoint("run_finished")
    return report


def _export_lake(warehouse: Warehouse, *, whole: bool = False, alone: bool = True) -> bool:
    """The run's lake export; with ``whole`` (a full refresh: the warehouse may have been edited
    by hand, which marks nothing), every partition. ``alone`` False: beside the SQL models,
    declined (False, nothing written) when it is too big for that or ``whole``; else (True) the
    export is done. A partition that cannot be written keeps its mark: finish_run() tries it
    once more and records the failure."""
    if not alone and whole:
        return False
    if whole:
        warehouse.mark_every_partition()
    with suppress(LakeExportError):
        if not alone:
            return warehouse.export_small_dirty_partitions() is not None
        warehouse.export_dirty_partitions()
    return True


def _collect_client_stats(report: SyncReport, client: MetaStudioClient) -> None:
    stats = client.stats
    report.pages = stats.pages
    report.requests = stats.requests
    report.retries = dict(stats.retries)
    report.wait_seconds = stats.wait_seconds


async def _sync(client: MetaStudioClient, run: Run, mode: Mode, since: date | None, until: date | None) -> None:
    settings = run.settings
    projects = run.report.projects
    async with client:
        not_after = await _not_after(client, settings, projects[0])
        skew = getattr(client, "clock_skew", None)
        if skew is not None:
            run.report.clock_skew_seconds = skew.total_seconds()
        if mode.by_creation_day:
            tasks = day_tasks(projects, days_between(since, until), reconcile=True)
            for project_id in projects:
                run.load_live(project_id, [t.window for t in tasks])
            await run_tasks(client, run, tasks, not_after)
            run.flush(deleted_at=client.server_now())
            return
        # incremental: per project, backfill the creation days never listed, then change capture
        watermarks: dict[str, datetime] = {}
        for project_id in projects:
            mark = await _capture_project(client, run, project_id, not_after)
            if mark is not None:
                watermarks[project_id] = mark
        run.report.watermarks = {k: v.isoformat() for k, v in watermarks.items()}
        run.flush(deleted_at=client.server_now(), watermarks=watermarks or None)
