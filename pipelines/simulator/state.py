"""The simulated job store: all jobs of all hosted projects plus the simulated clock.

:class:`SimulatorState` composes the parts, each in its own module: the job table and its
caches (:mod:`.table`), generation of the initial history (:mod:`.data`), rendering rows
as served JSON (:mod:`.render`), list requests (:mod:`.listing`), the clock and what moving
it does (:mod:`.clock`) and hostile paging (:mod:`.hostile`). Everything random derives
from the configured seed, so the same configuration yields the same jobs byte for byte.
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

import numpy as np
import orjson

from . import data, listing
from .clock import Clock
from .config import SimulatorConfig
from .hostile import hostile_mutation
from .params import ListParams
from .render import Renderer
from .table import APP_USERS, DAY_MS, JobTable, datetime_to_ms, ms_to_datetime, rfc3339

__all__ = ["APP_USERS", "DAY_MS", "SimulatorState", "datetime_to_ms", "ms_to_datetime", "rfc3339"]


class SimulatorState:
    """All jobs of all hosted projects plus the simulated clock; thread-safe.

    ``truth()`` returns exactly the JSON objects the API serves; ``advance()`` moves
    the clock and the jobs along; ``hostile_mutation()`` is what hostile paging does.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self._lock = threading.RLock()
        self.config = config  # as generated; run-time behaviour lives on the server
        seed = config.seed % 2**63  # numpy seed sequences take non-negative entropy
        self.projects: tuple[str, ...] = tuple(config.projects)
        self._project_code = {p: i for i, p in enumerate(self.projects)}
        now = config.now or datetime.now(UTC).replace(microsecond=0)
        now_ms = datetime_to_ms(now.astimezone(UTC))
        self._table = JobTable()
        self._renderer = Renderer(self._table, self.projects)
        self._clock = Clock(
            now_ms, seed=seed, base_jobs=config.jobs, days=config.days, projects=len(self.projects)
        )
        self._hostile_rng = random.Random(config.seed * 1_000_003 + 17)
        self.hostile_mutations = 0
        self._table.append(
            data.generate(seed, config.jobs, now_ms, config.days, config.traffic, len(self.projects))
        )

    # ----------------------------------------------------------------- basics
    @property
    def now(self) -> datetime:
        """The simulated clock (UTC); it only moves through :meth:`advance`."""
        return self._clock.now

    @property
    def now_ms(self) -> int:
        return self._clock.now_ms

    def has_project(self, project_id: str) -> bool:
        return project_id in self._project_code

    def __len__(self) -> int:
        """Listed (not deleted) jobs across all projects."""
        with self._lock:
            return int(self._table.n - np.count_nonzero(self._table.col("deleted")))

    def warm(self, step: int = 2_000) -> None:
        """Serialize every job now rather than on first request (the demo, benchmarks), ``step``
        jobs per hold of the lock: a request served meanwhile waits for one step at most."""
        start = 0
        while True:
            with self._lock:
                if start >= self._table.n:
                    return
                self._renderer.blobs_for(list(range(start, min(start + step, self._table.n))))
            start += step

    # ------------------------------------------------------------------ query
    def list_page(self, project_id: str, params: ListParams, app_user: str | None = None) -> bytes:
        """The 200 body for one list request: ``{"count": N, "jobs": [...]}``."""
        with self._lock:
            count, rows = listing.select(self._table, self._project_code[project_id], params, app_user)
            blobs = self._renderer.blobs_for(rows.tolist())
        return listing.page_body(count, blobs)

    def truth(self, project_id: str | None = None) -> list[dict]:
        """Exactly the JSON objects the API currently lists (oldest first), deleted jobs excluded."""
        with self._lock:
            rows = self._listed_rows(project_id)
            return [orjson.loads(blob) for blob in self._renderer.blobs_for(rows.tolist())]

    def _listed_rows(self, project_id: str | None) -> np.ndarray:
        if project_id is None:
            return listing.listed_rows(self._table, None)
        code = self._project_code.get(project_id)
        if code is None:
            return np.zeros(0, dtype=np.int64)
        return listing.listed_rows(self._table, code)

    def deleted_ids(self, project_id: str | None = None) -> set[str]:
        """job_ids of deleted jobs (of one project, or of all)."""
        with self._lock:
            mask = self._table.col("deleted").copy()
            if project_id is not None:
                mask &= self._table.col("project") == self._project_code.get(project_id, -1)
            return set(self._table.job_ids(np.flatnonzero(mask)))

    def job_ids(self, project_id: str | None = None) -> list[str]:
        """job_ids of listed jobs, oldest first."""
        with self._lock:
            return self._table.job_ids(self._listed_rows(project_id))

    # -------------------------------------------------------------- mutations
    def move_created(self, job_id: str, create_ms: int) -> None:
        """Give one job another creation time (and an update time not before it), e.g. exactly
        on a midnight, where two creation-day windows meet."""
        with self._lock:
            rows = self._table.listed_rows_with_ids({job_id})
            if not len(rows):
                raise KeyError(job_id)
            self._table.recreate(rows, create_ms)

    def delete(self, job_ids: set[str]) -> int:
        """Delete the listed jobs among ``job_ids`` now (as a user would); returns how many."""
        with self._lock:
            rows = self._table.listed_rows_with_ids(job_ids)
            if len(rows):
                self._table.delete(rows)
            return len(rows)

    def advance(self, seconds: float, *, seed_step: int | None = None) -> dict:
        """Move the simulated clock forward and the jobs with it.

        Creates new jobs inside the advanced interval, walks in-progress jobs through
        the state machine (each change stamped with its event time, never later than
        the new now) and deletes a few jobs. Deterministic for a given seed and
        ``seed_step`` (default: the number of earlier advances).
        Returns ``{"created", "transitioned", "transitions", "deleted", "now"}``.
        """
        with self._lock:
            return self._clock.advance(self._table, seconds, seed_step)

    def hostile_mutation(
        self, project_id: str, params: ListParams, app_user: str | None = None
    ) -> dict | None:
        """Delete one listed job of the requested set and back-date a new one into its window
        (see :func:`.hostile.hostile_mutation`); None when the set is empty."""
        with self._lock:
            project = self._project_code[project_id]
            result = hostile_mutation(self._table, project, params, app_user, self.now_ms, self._hostile_rng)
            if result is not None:
                self.hostile_mutations += 1
            return result
