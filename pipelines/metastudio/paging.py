"""Closed time windows over the job listing, paged so that a moving set is read exactly.

Plain offset paging over a listing that changes while it is read skips or
repeats jobs: a deletion before the current offset shifts every later job one
place forward. Here the sort order plus the window's lower bound form a keyset
cursor: after each page the lower bound moves to the last job's timestamp
(floored to the second, the resolution of the wire format) and the next request
starts again at offset 0. Jobs of that boundary second come again and are
de-duplicated by ``job_id``. Offsets are used only inside one second that holds
a full page or more of jobs.

After a pass, the number of distinct jobs is compared with the server's
``count``; a disagreement may mean the set moved during the pass, so the window
is paged again (a bounded number of times). A pass that ended on a short page
listed the window completely, whatever ``count`` says: the disagreement is
recorded and the window is not split, so a server whose ``count`` ignores the
filters cannot make a sync split windows down to the second. Splitting (up front
for windows whose first page is full and whose count is over the threshold) draws
on a :class:`SplitBudget` shared by a run; a run that exhausts it stops.

A caller that passes a ``sink`` receives the jobs while the window is still being listed, in
chunks of about :data:`SINK_ROWS`, so a burst day of 50,000 jobs is never held whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from pipelines.contract import PAGE_LIMIT, full_record, newer_update_wins
from pipelines.metastudio.errors import MetaStudioError
from pipelines.metastudio.windows import (  # noqa: F401  (names callers import from paging)
    ONE_SECOND,
    Window,
    _epoch_millis,
    day_window,
    day_windows,
    epoch_seconds,
    floor_second,
    format_time,
)

if TYPE_CHECKING:
    from pipelines.metastudio.client import MetaStudioClient, Page

log = logging.getLogger("voicejobs.paging")


#: Jobs handed to a ``sink`` at a time (at most a page more): about 1.5 MB of decoded JSON.
#: At 1,000,000 lumpy jobs the fetch peaked at 393 MB with 2,000 and 362 MB with 500, as fast.
SINK_ROWS = 500

#: Receives a window's jobs while it is listed (the covered window, the chunk's jobs).
Sink = Callable[[Window, list[dict]], Awaitable[None]]

#: Window splits one sync may make. A legitimate backfill splits a few times per burst day
#: (a day of 50,000 jobs splits about 8 times at the default threshold); only a server whose
#: counts ignore the filters needs more.
DEFAULT_SPLIT_BUDGET = 2_000


class SplitBudgetExceeded(MetaStudioError):
    """A run asked for more window splits than its budget allows."""

    def __init__(self, limit: int, window: Window) -> None:
        super().__init__(
            f"the source's counts asked for more than {limit:,} window splits (last at {window}); its "
            "'count' may ignore the filters. Nothing more is fetched; the warehouse keeps what was "
            "committed. Check METASTUDIO_ENDPOINT points at the MetaStudio API, or raise "
            "VOICEJOBS_SPLIT_THRESHOLD if the source really holds that many jobs per day"
        )
        self.limit = limit


class SplitBudget:
    """How many window splits a run may still make (shared by every window of the run)."""

    def __init__(self, limit: int = DEFAULT_SPLIT_BUDGET) -> None:
        if limit < 0:
            raise ValueError("a split budget cannot be negative")
        self.limit = limit
        self.used = 0

    def take(self, window: Window) -> None:
        if self.used >= self.limit:
            raise SplitBudgetExceeded(self.limit, window)
        self.used += 1


@dataclass
class LeafStat:
    """One window that was paged (not split further): the server's count against what was fetched."""

    window: Window
    api_count: int
    fetched: int
    pages: int
    repaged: int


@dataclass
class WindowResult:
    """Jobs of one window (de-duplicated by job_id) and how they were obtained.

    ``window`` is the window actually covered: the requested one clamped to ``not_after``.
    ``pages`` counts listing pages read, ``requests`` every request (pages, count checks, split probes).
    ``mismatches`` counts passes whose distinct jobs disagreed with the server's count.
    With a ``sink`` the jobs went there and ``jobs`` is empty; ``job_ids`` then holds the
    job_ids of the listing that ``jobs`` would have held, and ``listed`` counts its jobs.
    """

    project_id: str
    kind: str
    window: Window
    jobs: list[dict] = field(default_factory=list)
    leaves: list[LeafStat] = field(default_factory=list)
    pages: int = 0
    requests: int = 0
    mismatches: int = 0
    job_ids: list[str] | None = None
    streamed: int = 0

    @property
    def listed(self) -> int:
        """Distinct jobs of the listing (whether returned in ``jobs`` or handed to a sink)."""
        return self.streamed if self.job_ids is not None else len(self.jobs)

    def ids(self) -> list[str]:
        """The job_ids of the listing (records without a string job_id have none)."""
        if self.job_ids is not None:
            return self.job_ids
        return [job_id for job in self.jobs if isinstance(job_id := job.get("job_id"), str)]

    @property
    def api_count(self) -> int:
        return sum(leaf.api_count for leaf in self.leaves)


@dataclass(frozen=True)
class _Kind:
    since_param: str
    until_param: str
    sort_key: str
    time_field: str


KINDS = {
    "create": _Kind("create_since", "create_until", "create_time", "create_time"),
    "update": _Kind("update_since", "update_until", "update_time", "lastupdate_time"),
}


def job_key(job: Mapping[str, object]) -> str:
    """De-duplication key: the job_id, or the record's own content when it has none."""
    job_id = job.get("job_id")
    if isinstance(job_id, str) and job_id:
        return job_id
    return "raw:" + orjson.dumps(full_record(job), option=orjson.OPT_SORT_KEYS, default=str).decode()


async def fetch_window(
    client: MetaStudioClient,
    project_id: str,
    window: Window,
    *,
    kind: str = "create",
    filters: Mapping[str, object] | None = None,
    not_after: datetime | None = None,
    split_threshold: int = 10_000,
    max_repage: int = 2,
    split_budget: SplitBudget | None = None,
    sink: Sink | None = None,
) -> WindowResult:
    """Every job of ``project_id`` whose create (``kind="create"``) or update time lies in ``window``.

    The window is clamped to ``not_after`` (pass the source's now minus a safety
    lag, so no window reaches into time that is still being written); a window
    wholly after it returns no jobs and no leaves. Windows whose count exceeds
    ``split_threshold`` are split before paging, halves fetched concurrently.

    After each keyset pass the distinct jobs are compared with the server's count
    (asked again when they differ). A disagreement re-pages the window up to
    ``max_repage`` times, keeping the newest pass. A pass that ended on a short page
    listed the window completely: what still disagrees then is returned as fetched and
    shows as a leaf whose ``api_count != fetched``, never split. Only a pass cut short
    otherwise (the server's count said nothing lay beyond a full page) is split.
    Every split draws on ``split_budget`` (a fresh :class:`SplitBudget` when None);
    :class:`SplitBudgetExceeded` ends the call.

    With ``sink``, jobs are awaited into it in chunks as they are listed (a job again only in
    a newer version than the one handed before); the result then carries
    ``job_ids`` and ``listed`` instead of ``jobs``. A job the last pass no longer lists may
    already have been handed: the caller's listing evidence is ``job_ids``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'create' or 'update', got {kind!r}")
    if split_threshold < 1:
        raise ValueError("split_threshold must be at least 1")
    result = WindowResult(project_id=project_id, kind=kind, window=window)
    if not_after is not None:
        limit = floor_second(not_after)
        if window.since > limit:
            return result
        if window.until > limit:
            window = Window(window.since, limit)
            result.window = window
    fetcher = _Fetcher(client, project_id, KINDS[kind], dict(filters or {}), split_threshold, max_repage,
                       split_budget if split_budget is not None else SplitBudget(), sink, window)
    listed = await fetcher.fetch(window)
    if sink is None:
        result.jobs = [fetcher.chunk[key] for key in listed]
    else:
        await fetcher.hand()
        result.job_ids = [job_id for job_id in listed.values() if isinstance(job_id, str)]
        result.streamed = len(listed)
    result.leaves = sorted(fetcher.leaves, key=lambda leaf: leaf.window)
    result.pages = fetcher.pages
    result.requests = fetcher.requests
    result.mismatches = fetcher.mismatches
    log.debug(
        "%s window %s of %s: %d jobs, %d leaves, %d requests, %d mismatches",
        kind,
        window,
        project_id,
        result.listed,
        len(result.leaves),
        result.requests,
        result.mismatches,
    )
    return result


class _Fetcher:
    """State of one fetch_window call: shared counters of all (possibly concurrent) sub-windows."""

    def __init__(
        self,
        client: MetaStudioClient,
        project_id: str,
        kind: _Kind,
        filters: dict[str, object],
        split_threshold: int,
        max_repage: int,
        budget: SplitBudget,
        sink: Sink | None = None,
        covered: Window | None = None,
    ) -> None:
        self.client = client
        self.sink = sink
        self.covered = covered
        # Per key, the newest version not yet handed (without a sink: every job, never handed),
        # and the lastupdate_time (ms) of the version queued or handed last.
        self.chunk: dict[str, dict] = {}
        self.handed: dict[str, int | None] = {}
        self.budget = budget
        self.project_id = project_id
        self.kind = kind
        self.filters = filters
        self.split_threshold = split_threshold
        self.max_repage = max(0, max_repage)
        self.leaves: list[LeafStat] = []
        self.pages = 0
        self.requests = 0
        self.mismatches = 0

    async def _list(self, window: Window, lower: datetime, offset: int, limit: int) -> Page:
        params = dict(self.filters)
        params.update(
            {
                self.kind.since_param: format_time(lower),
                self.kind.until_param: format_time(window.until),
                "sort_key": self.kind.sort_key,
                "sort_dir": "asc",
                "offset": offset,
                "limit": limit,
            }
        )
        self.requests += 1
        # Jobs that go to a sink are normalized from their bytes (see metastudio/wire.py).
        return await self.client.list_jobs(self.project_id, params, lean=self.sink is not None)

    async def _count(self, window: Window) -> int:
        return (await self._list(window, window.since, 0, 1)).count

    async def _split(self, window: Window) -> dict[str, dict]:
        self.budget.take(window)
        halves = window.split()
        listed: dict[str, str | None] = {}
        for part in await asyncio.gather(*(self.fetch(half) for half in halves)):
            listed.update(part)
        return listed

    def offer(self, key: str, job: dict) -> None:
        """Keep ``job`` for the sink (or the result): a version fetched later replaces the kept
        one unless it is older (:func:`pipelines.contract.newer_update_wins`); once handed, a job
        goes again only in a newer version (the same lastupdate_time is the same version:
        keyset paging lists a boundary second twice)."""
        stamp = _epoch_millis(job.get("lastupdate_time"))
        if key in self.chunk:
            if not newer_update_wins(stamp, self.handed[key]):
                return
        elif key in self.handed and newer_update_wins(self.handed[key], stamp):  # not newer
            return
        self.handed[key] = stamp
        self.chunk[key] = job

    async def hand(self) -> None:
        """Await the queued jobs into the sink."""
        if self.chunk:
            chunk, self.chunk = list(self.chunk.values()), {}
            await self.sink(self.covered, chunk)

    async def fetch(self, window: Window) -> dict[str, str | None]:
        """The keys of the distinct jobs ``window`` lists (to their job_id), their versions offered:
        split when large, re-paged and then split while the count disagrees."""
        first = await self._list(window, window.since, 0, PAGE_LIMIT)
        # A short first page holds the whole window: nothing to gain from splitting, whatever count says.
        full = len(first.jobs) >= PAGE_LIMIT
        if full and first.count > self.split_threshold and window.can_split():
            log.debug("window %s holds %d jobs (> %d): splitting", window, first.count, self.split_threshold)
            return await self._split(window)
        repaged = 0
        pages = 0
        while True:
            self.pages += 1  # the first page of this pass
            jobs, pass_pages, ended_short = await self._pass(window, first)
            pages += pass_pages
            # A fresh pass is the truth at its moment (its keys); a job keeps its most recently
            # updated version (offer()).
            expected = first.count
            # One answer holding the whole window is a snapshot: its count and its jobs describe
            # the same moment, so a disagreement is the server's and neither re-paging nor
            # splitting can resolve it.
            snapshot = pass_pages == 1 and len(first.jobs) < PAGE_LIMIT
            if len(jobs) != expected and not snapshot:
                # The set may have moved during the pass; the truth is the count now.
                expected = await self._count(window)
            if len(jobs) == expected:
                break
            self.mismatches += 1
            log.warning(
                "window %s of %s: fetched %d distinct jobs but the server counts %d (pass %d)",
                window,
                self.project_id,
                len(jobs),
                expected,
                repaged + 1,
            )
            if snapshot:
                break
            if repaged >= self.max_repage:
                # Pages that came back short listed the window completely: the count is wrong.
                if not ended_short and window.can_split():
                    return await self._split(window)
                break
            repaged += 1
            first = await self._list(window, window.since, 0, PAGE_LIMIT)
        self.leaves.append(LeafStat(window, expected, len(jobs), pages, repaged))
        return jobs

    async def _pass(self, window: Window, first: Page) -> tuple[dict[str, str | None], int, bool]:
        """One keyset pass over ``window`` starting from its first page.

        Returns the keys of the distinct jobs listed (to their job_id; the jobs are offered), the
        pages read, and whether the pass ended on a short page (the listing said itself that
        nothing more lies in the window)."""
        seen: dict[str, str | None] = {}
        seconds_of: dict[str, int | None] = {}
        lower = floor_second(window.since)
        until = int(window.until.timestamp())
        offset = 0
        page = first
        pages = 1
        time_field = self.kind.time_field
        while True:
            stamps: list[int] = []  # the page's times (whole seconds), where a job has one
            for job in page.jobs:
                key = job_key(job)
                # A job listed twice in one pass (a boundary second, or a server repeating it)
                # keeps its most recently updated version, as everywhere else.
                self.offer(key, job)
                seen[key] = job.get("job_id")
                seconds_of[key] = second = epoch_seconds(job.get(time_field))
                if second is not None:
                    stamps.append(second)
            if self.sink is not None and len(self.chunk) >= SINK_ROWS:
                await self.hand()
            if len(page.jobs) < PAGE_LIMIT:
                return seen, pages, True
            lower_s = int(lower.timestamp())
            # The cursor moves only on times inside the window: a record whose time lies outside
            # it (a server bug, or a corrupt value) must not end the pass or move it past jobs.
            inside = [s for s in stamps if lower_s <= s <= until]
            last = max(inside) if inside else None
            if last is None and any(s > until for s in stamps):
                # The server listed only jobs beyond the window's end: nothing more inside it.
                log.warning("window %s: the server returned jobs after the window's end", window)
                return seen, pages, False
            if last is not None and last > lower_s:
                lower = datetime.fromtimestamp(last, UTC)
                offset = 0
            else:
                # A full page within one second: walk that second with offsets past the jobs seen there.
                at_lower = sum(1 for s in seconds_of.values() if s == lower_s)
                offset = max(offset + len(page.jobs), at_lower)
                if offset >= page.count:
                    # The server's own count from this bound says nothing lies beyond.
                    return seen, pages, False
            page = await self._list(window, lower, offset, PAGE_LIMIT)
            self.pages += 1
            pages += 1
