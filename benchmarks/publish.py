"""Benchmark of the PostgreSQL publish: a full publish, a publish with nothing changed, and one
after a change capture that touched about 1% of the jobs.

    .venv/bin/python benchmarks/publish.py                    # 100,000 and 1,000,000 jobs
    .venv/bin/python benchmarks/publish.py --sizes 100000     # one size
    .venv/bin/python benchmarks/publish.py --postgres-url postgresql://u:pw@host:5432/db

For each size the embedded simulator (its own process, a fixed clock, one year of jobs) is
synced into a fresh data directory with the models and the serving snapshot, exactly as
`voicejobs sync` does; that part is set-up and not measured. Then the publish is timed into
a PostgreSQL database: a throwaway server started for the run (``tests/support/postgres.py``,
with PostgreSQL's default durability: fsync on), unless ``--postgres-url`` names one, in which
case the schema ``voicejobs_bench_<n>`` is used and left behind. The simulated clock is then
moved until about 1% of the jobs were created, moved through their states or deleted, a
change capture syncs them, and the publish is timed again.

Results are printed as a table and written to ``benchmarks/results/publish-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

SIM_NOW = datetime(2026, 1, 1, tzinfo=UTC)  # a fixed simulated clock: the same jobs on every run
SIM_DAYS = 365
PROJECT = "sim-project"
CHANGED_SHARE = 0.01
COLUMNS = ("jobs", "scenario", "seconds", "rows_sent", "rows_deleted", "tables_rewritten", "note")


def _settings(server, data_dir: Path):
    from pipelines.settings import Settings

    ak, sk = next(iter(server.state.config.credentials.items()))
    return Settings(endpoint=server.url, ak=ak, sk=sk, project_ids=(PROJECT,), data_dir=data_dir,
                    first_day=(SIM_NOW - timedelta(days=SIM_DAYS + 1)).date(), safety_lag_seconds=0,
                    max_clock_skew_seconds=0)


def _row(jobs: int, scenario: str, report, note: str = "") -> dict:
    return {"jobs": jobs, "scenario": scenario, "seconds": round(report.seconds, 2), "rows_sent": report.rows_sent,
            "rows_deleted": sum(t.rows_deleted for t in report.tables), "tables_rewritten": len(report.rewritten),
            "note": note, "tables": report.as_dict()["tables"]}


def bench_size(jobs: int, work: Path, postgres_url: str, echo) -> list[dict]:
    from pipelines.publish import publish
    from pipelines.simulator import SimulatorConfig, SimulatorServer
    from pipelines.sync import sync
    from pipelines.warehouse import Warehouse

    data_dir = work / f"data-{jobs}"
    config = SimulatorConfig(jobs=jobs, seed=7, days=SIM_DAYS, projects=(PROJECT,), now=SIM_NOW)
    rows: list[dict] = []
    with SimulatorServer(config) as server:
        # The sync's own settings name no PostgreSQL (a sync would publish itself); only the
        # measured publishes do.
        sync_settings = _settings(server, data_dir)
        settings = replace(sync_settings, postgres_url=postgres_url, postgres_schema=f"voicejobs_bench_{jobs}")
        started = time.perf_counter()
        sync(sync_settings, mode="incremental", warehouse=Warehouse(data_dir), refresh=True)
        print(f"  set-up: synced {jobs:,} jobs in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        serving = data_dir / "serving.duckdb"

        rows.append(echo(_row(jobs, "full", publish(serving, settings), "empty schema")))
        rows.append(echo(_row(jobs, "unchanged", publish(serving, settings), "same snapshot again")))

        changed = 0
        while changed < CHANGED_SHARE * jobs:
            moved = server.state.advance(4 * 3600)
            changed += moved["created"] + moved["transitioned"] + moved["deleted"]
        report = sync(sync_settings, mode="incremental", warehouse=Warehouse(data_dir), refresh=True)
        note = f"{changed:,} jobs changed ({changed / jobs:.1%}), {report.rows_written:,} rows synced"
        rows.append(echo(_row(jobs, "after 1% change", publish(serving, settings), note)))
    shutil.rmtree(data_dir, ignore_errors=True)
    return rows


def format_table(rows: list[dict]) -> str:
    table = [COLUMNS] + [tuple(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in COLUMNS) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    out = []
    for n, line in enumerate(table):
        out.append("  ".join(cell.ljust(w) if i in (1, 6) else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--postgres-url", help="publish here instead of a throwaway server")
    args = parser.parse_args(argv)

    rows: list[dict] = []

    def echo(row: dict) -> dict:
        print(f"  {row['jobs']:,} jobs, {row['scenario']}: {row['seconds']} s, {row['rows_sent']:,} rows sent"
              f" ({row['note']})", file=sys.stderr, flush=True)
        return row

    with tempfile.TemporaryDirectory(prefix="voicejobs-publish-bench-") as tmp:
        server = None
        url = args.postgres_url
        if url is None:
            from tests.support.postgres import TemporaryPostgres

            server = TemporaryPostgres(durable=True).start()
            server.create_database("bench")
            url = server.url(dbname="bench")
        try:
            for size in args.sizes:
                rows += bench_size(size, Path(tmp), url, echo)
        finally:
            if server is not None:
                server.stop()

    print(format_table(rows))
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"publish-{stamp}.json"
    path.write_text(json.dumps({"machine": {"python": platform.python_version(), "platform": platform.platform()},
                                "rows": rows}, indent=2))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
