"""The async pipeline of a sync: windows fetched concurrently, absorbed, applied in batches.

Bounded stages, so memory does not grow with the history: a window's jobs reach the consumer
in chunks while it is listed (a burst day is never held whole), a window holds its slot from
its first request until it is absorbed, and one batch at a time is applied to the warehouse in
a worker thread while the next is fetched. Deletions need evidence (:func:`listed_completely`,
:func:`check_deletions`). What the stages fill and write, a run's buffer: :mod:`.buffer`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pipelines.metastudio.client import MetaStudioClient
from pipelines.metastudio.errors import MetaStudioError
from pipelines.metastudio.paging import Window, WindowResult, fetch_window
from pipelines.sync.buffer import Run, listed_completely
from pipelines.sync.plan import Task
from pipelines.sync.report import WRITING
from pipelines.sync.stage_thread import StageThread

log = logging.getLogger("voicejobs.sync")

#: A reconciling window that would mark more than this share of its range's live jobs
#: deleted (and at least MASS_DELETION_MIN jobs) is listed again before it is believed.
MASS_DELETION_SHARE = 0.5
MASS_DELETION_MIN = 10


class SourceDisagreementError(MetaStudioError):
    """Two listings of the same range disagree where a sync would mark many jobs deleted."""


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
