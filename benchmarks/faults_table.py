"""Per fault class: what a sync against the simulator did and the retries it took.

    .venv/bin/python -m benchmarks.faults_table
    .venv/bin/python -m benchmarks.faults_table --only 500,truncated   # the rows naming these

Each row is one days-sync of a small simulator (2 projects, 45 days, 1,200 jobs) with
one kind of fault served on 10% of requests (the rate cap row: none injected, the server
admits 20 requests/s and answers the excess 429 + Retry-After; the last row: the mix of
all of them together). The "equal" column compares the warehouse with the simulator's
truth field by field (tests/support/expected.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.simulator import SimulatorConfig, SimulatorServer  # noqa: E402
from pipelines.simulator.config import FAULT_KINDS  # noqa: E402
from pipelines.sync import sync  # noqa: E402
from pipelines.warehouse import Warehouse  # noqa: E402
from tests.support.expected import assert_rows_equal  # noqa: E402
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings, truth_by_project  # noqa: E402

DAYS = 45
CASES = [
    ("429 + Retry-After: 1", dict(faults=("429",))),
    ("500 JSON error", dict(faults=("500",))),
    ("502 HTML gateway page", dict(faults=("502",))),
    ("503 unavailable", dict(faults=("503",))),
    ("truncated JSON (200)", dict(faults=("truncated",))),
    ("stall 2.5 s (timeout 1.5 s)", dict(faults=("stall",))),
    ("rate cap 20 req/s", dict(fault_rate=0.0, rate_limit=20)),
    ("all of the above, 10% + cap", dict(faults=FAULT_KINDS, rate_limit=20)),
]


def run_case(changes: dict) -> dict:
    values = dict(jobs=1200, seed=5, days=DAYS, projects=PROJECTS, now=SIM_NOW, fault_rate=0.1,
                  latency_ms=5, stall_seconds=2.5)
    values.update(changes)
    with SimulatorServer(SimulatorConfig(**values)) as server, tempfile.TemporaryDirectory() as tmp:
        settings = sim_settings(server, Path(tmp), timeout=1.5, max_attempts=6, max_retry_seconds=30)
        started = time.monotonic()
        report = sync(settings, mode="days", since=(SIM_NOW - timedelta(days=DAYS + 1)).date(),
                      until=SIM_NOW.date())
        elapsed = time.monotonic() - started
        rows = Warehouse(tmp).jobs_table(include_deleted=False).drop_columns(["synced_at", "deleted_at"])
        try:
            assert_rows_equal(rows.to_pylist(), truth_by_project(server), personal_data="mask")
            equal = "yes"
        except AssertionError as exc:
            equal = f"NO: {exc}"[:40]
        faults = sum(server.stats["faults"].values())
    return dict(requests=report.requests, faults=faults, retries=report.retries_total,
                causes=", ".join(f"{k}: {v}" for k, v in sorted(report.retries.items())) or "-",
                rows=report.rows_written, equal=equal, seconds=elapsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated words: run the rows whose fault class names one")
    words = [w.strip().lower() for w in parser.parse_args(argv).only.split(",") if w.strip()]
    cases = [(name, changes) for name, changes in CASES if not words or any(w in name.lower() for w in words)]
    if not cases:
        parser.error(f"no fault class names any of {words}; the classes: {', '.join(name for name, _ in CASES)}")
    header = f"| {'fault class':<29} | requests | faults served | retries | by cause | rows | equal | seconds |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, changes in cases:
        r = run_case(changes)
        print(f"| {name:<29} | {r['requests']:>8} | {r['faults']:>13} | {r['retries']:>7} | {r['causes']} "
              f"| {r['rows']} | {r['equal']} | {r['seconds']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
