"""What a sync run reports: its progress while it runs and its summary when it ends.

The summary is the CLI's last words, the Dagster metadata and the ``sync_runs.stats`` JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date


@dataclass
class SyncProgress:
    """What a progress display shows: the phase, and while fetching windows, jobs and rates."""

    windows_total: int = 0
    windows_done: int = 0
    jobs: int = 0
    phase: str = "fetching windows"
    retrying: str | None = None  # the latest retry, until the next window is done
    clock: Callable[[], float] = time.monotonic
    started: float | None = None

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.jobs / elapsed if elapsed > 0 else 0.0

    @property
    def fraction(self) -> float:
        return self.windows_done / self.windows_total if self.windows_total else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Time left for the windows, at the pace so far; None before the first one."""
        if not self.windows_done or not self.windows_total:
            return None
        return self.elapsed / self.windows_done * (self.windows_total - self.windows_done)


WRITING = "writing the last windows to the warehouse and the lake"
#: What each mode is called where people read it.
MODE_NAMES = {"days": "backfill of creation days", "incremental": "change capture",
              "reconcile": "reconciliation of creation days"}


@dataclass
class SyncReport:
    """What one sync did; becomes Dagster metadata and the CLI summary."""

    run_id: str
    mode: str
    projects: tuple[str, ...]
    since: date | None = None
    until: date | None = None
    windows: int = 0
    jobs_fetched: int = 0
    rows_written: int = 0
    quarantined: int = 0
    deleted: int = 0
    mismatched_windows: int = 0
    count_checks: int = 0
    pages: int = 0
    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    wait_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    watermarks: dict[str, str] = field(default_factory=dict)
    source: str = ""
    simulated: bool = False
    clock_skew_seconds: float | None = None
    relisted_ranges: int = 0
    out_of_window: int = 0

    @property
    def retries_total(self) -> int:
        return sum(self.retries.values())

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "projects": list(self.projects),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "windows": self.windows,
            "jobs_fetched": self.jobs_fetched,
            "rows_written": self.rows_written,
            "quarantined": self.quarantined,
            "deleted": self.deleted,
            "mismatched_windows": self.mismatched_windows,
            "count_checks": self.count_checks,
            "pages": self.pages,
            "requests": self.requests,
            "retries": self.retries_total,
            "retries_by_cause": dict(self.retries),
            "api_wait_seconds": round(self.wait_seconds, 3),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "phase_seconds": {k: round(v, 3) for k, v in self.phase_seconds.items()},
            "watermarks": dict(self.watermarks),
            "source": self.source,
            "simulated": self.simulated,
            "clock_skew_seconds": self.clock_skew_seconds,
            "relisted_ranges": self.relisted_ranges,
            "out_of_window": self.out_of_window,
        }

    def summary(self) -> str:
        rate = self.jobs_fetched / self.elapsed_seconds if self.elapsed_seconds else 0.0
        causes = ", ".join(f"{k}: {v}" for k, v in sorted(self.retries.items())) or "none"
        origin = "the embedded MetaStudio simulator: SIMULATED DATA" if self.simulated else self.source
        phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.phase_seconds.items())
        lines = [
            f"{MODE_NAMES.get(self.mode, self.mode)} of {', '.join(self.projects)}"
            + (f", creation days {self.since} .. {self.until}" if self.since else "")
            + (f" from {origin}" if origin else ""),
            f"  windows {self.windows}, pages {self.pages}, requests {self.requests}",
            f"  jobs fetched {self.jobs_fetched:,}, rows written {self.rows_written:,}, "
            f"quarantined {self.quarantined}, marked deleted {self.deleted}",
            f"  retries {self.retries_total} ({causes}); request time summed over concurrent requests "
            f"{self.wait_seconds:.1f}s",
            f"  took {self.elapsed_seconds:.1f}s in all ({rate:,.0f} jobs/s)" + (f": {phases}" if phases else ""),
        ]
        if self.mismatched_windows:
            lines.append(f"  windows whose count never matched the pages: {self.mismatched_windows}")
        if self.out_of_window:
            lines.append(f"  quarantined as listed outside their window: {self.out_of_window}")
        if self.clock_skew_seconds is not None:
            lines.append(f"  the source's clock is {_skew_text(self.clock_skew_seconds)}: this machine's clock was used")
        if self.relisted_ranges:
            lines.append(f"  ranges listed twice before deletions were believed: {self.relisted_ranges}")
        return "\n".join(lines)


def _skew_text(seconds: float) -> str:
    direction = "ahead of" if seconds > 0 else "behind"
    return f"{abs(seconds):,.0f} s {direction} this machine's"
