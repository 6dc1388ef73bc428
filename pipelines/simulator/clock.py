"""The simulated clock: now, and what moving it forward does to the jobs.

Time only moves through :meth:`Clock.advance`, which creates the jobs of the advanced
interval, walks in-progress jobs through the state machine (each change stamped with its
event time, never later than the new now) and deletes a few jobs, deterministically for
the configured seed and the advance's step number.
"""

from __future__ import annotations

import random
from datetime import datetime

import numpy as np

from . import catalog as C
from .data import draw_attributes
from .table import DAY_MS, JobTable, ms_to_datetime, rfc3339

_IN_PROGRESS_CODES = np.array([C.STATE_CODE[s] for s in C.STATES if s not in C.TERMINAL], dtype=np.int8)
_WAITING_FOR_USER = frozenset({"AUDIT_FAILED", "SPLIT_FAILED", "USER_REVIEW_REJECT"})
_ABANDONED_AFTER_MS = 30 * DAY_MS


class Clock:
    """Simulated now (epoch ms) of a table whose ``base_jobs`` jobs span ``days`` days."""

    def __init__(self, now_ms: int, *, seed: int, base_jobs: int, days: int, projects: int) -> None:
        self.now_ms = now_ms
        self.advances = 0
        self._seed = seed
        self._per_day = max(base_jobs, 1) / days * 2.5  # the growth trend's recent rate
        self._projects = projects

    @property
    def now(self) -> datetime:
        return ms_to_datetime(self.now_ms)

    def advance(self, table: JobTable, seconds: float, seed_step: int | None = None) -> dict:
        """Move now forward by ``seconds`` and ``table``'s jobs with it (see the module doc);
        returns ``{"created", "transitioned", "transitions", "deleted", "now"}``."""
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
        step = self.advances if seed_step is None else seed_step
        self.advances += 1
        rng = np.random.default_rng([self._seed, 1, step])
        walker = random.Random(int(rng.integers(0, 2**62)))
        old_now, new_now = self.now_ms, self.now_ms + max(1, round(seconds * 1000))
        self.now_ms = new_now
        created = self._create(table, rng, old_now, new_now)
        moving = np.flatnonzero(~table.col("deleted") & np.isin(table.col("state"), _IN_PROGRESS_CODES))
        transitions, changed = walk(table, moving, old_now, new_now, walker)
        listed = np.flatnonzero(~table.col("deleted"))
        share = min(0.05, 0.0005 * (new_now - old_now) / DAY_MS)
        deleted = min(len(listed), max(1, int(rng.binomial(len(listed), share))))
        if deleted:
            table.delete(np.sort(rng.choice(listed, size=deleted, replace=False)))
        return {
            "created": created,
            "transitioned": changed,
            "transitions": transitions,
            "deleted": deleted,
            "now": rfc3339(new_now),
        }

    def _create(self, table: JobTable, rng: np.random.Generator, old_now: int, new_now: int) -> int:
        """Append the jobs created in (old_now, new_now], all still CREATING; returns how many."""
        created = max(1, int(rng.poisson(self._per_day * (new_now - old_now) / DAY_MS)))
        cols = draw_attributes(rng, created, self._projects)
        create = np.sort(rng.integers(old_now + 1, new_now + 1, size=created, dtype=np.int64))
        ceiled = -(-create // 1000) * 1000
        cols["secs"] &= ceiled <= new_now
        create = np.where(cols["secs"], ceiled, create)
        cols.update(
            create_ms=create,
            update_ms=create.copy(),
            state=np.full(created, C.STATE_CODE["CREATING"], dtype=np.int8),
            failure=np.full(created, -1, dtype=np.int8),
        )
        table.append(cols)
        return created


def walk(
    table: JobTable, rows: np.ndarray, old_now: int, new_now: int, walker: random.Random
) -> tuple[int, int]:
    """Run the state machine for ``rows`` up to ``new_now``; returns (events, jobs changed)."""
    events = 0
    touched: list[int] = []
    for row in rows.tolist():
        steps = _walk_row(table.cols, row, old_now, new_now, walker)
        if steps:
            events += steps
            touched.append(row)
    if touched:
        table.touch(np.array(touched, dtype=np.int64), updated=True)
    return events, len(touched)


def _walk_row(
    cols: dict[str, np.ndarray], row: int, old_now: int, new_now: int, walker: random.Random
) -> int:
    """Walk one job from its last change up to ``new_now``; returns how many steps it took."""
    state = C.STATES[int(cols["state"][row])]
    last = int(cols["update_ms"][row])
    secs = bool(cols["secs"][row])
    if state in _WAITING_FOR_USER and old_now - last > _ABANDONED_AFTER_MS:
        return 0  # users come back within weeks or never
    t = max(last, old_now)  # memoryless dwell: start counting where the last step left off
    steps = 0
    while state in C.TRANSITIONS:
        t += max(1, int(walker.expovariate(1.0 / C.MEAN_DWELL_SECONDS[state]) * 1000))
        if t > new_now:
            break
        stamp = t // 1000 * 1000 if secs else t
        if stamp <= last:
            stamp = last + (1000 if secs else 1)
            if stamp > new_now:
                break
        roll, nxt = walker.random(), None
        for candidate, probability in C.TRANSITIONS[state]:
            roll -= probability
            nxt = candidate
            if roll < 0:
                break
        state, last = nxt, stamp  # type: ignore[assignment]
        t = max(t, stamp)
        steps += 1
        if state == "USER_REVIEW_REJECT":
            cols["reject"][row] = min(10, int(cols["reject"][row]) + 1)
        if state == "FAILED":
            cols["failure"][row] = walker.randrange(len(C.FAILURES))
    if steps:
        cols["state"][row] = C.STATE_CODE[state]
        cols["update_ms"][row] = last
    return steps
