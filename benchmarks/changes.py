"""Changed jobs spread over the history: the memory and time of writing them.

    .venv/bin/python benchmarks/changes.py                       # 300,000 jobs, 3 rounds
    .venv/bin/python benchmarks/changes.py --jobs 5000 --batch 500 --batches 2 --rounds 1

A warehouse is filled once by a sync from the project's simulator (``benchmarks/lake.py``'s
``fill``, in a process of its own: a process's peak RSS is the floor of its children's, which
start as copies of it). Then each candidate, in a fresh process over a copy of it, reads ``--batches``
batches of ``--batch`` stored jobs picked at random over the whole table (a change capture
after a reclassification, or a backfill of corrections, touches jobs of every age) and gives
each job a new state and update time:

* ``read``   the batches are read and changed, nothing is written: the floor;
* ``apply``  each batch is also written by ``Warehouse.apply`` (the upsert that replaces a
  changed job's row and moves its old version to the history), without the lake export.

Printed per candidate: the peak RSS of its process and its wall time, medians of ``--rounds``
rounds that alternate the candidates, and the new versions it wrote (none for ``read``); then
``apply``'s figures over ``read``'s.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.run import run_child  # noqa: E402

CANDIDATES = ("read", "apply")


def _changes(data_dir: str, candidate: str, batch: int, batches: int) -> dict:
    """One candidate's batches, in this process: its peak RSS (MB) and wall seconds."""
    import pyarrow as pa

    from benchmarks.lake import SIM_NOW
    from pipelines.ingest.schema import JOBS_SCHEMA
    from pipelines.warehouse import Warehouse
    from pipelines.warehouse.tables import _COLS, JOBS_TABLE

    warehouse = Warehouse(Path(data_dir))
    started = time.perf_counter()
    with warehouse.connect() as con:
        run = warehouse.begin_run("incremental", {})
        (rows,) = con.execute(f"SELECT count(*) FROM {JOBS_TABLE}").fetchall()[0]
        picker = random.Random(7)
        versions = 0
        for number in range(batches):
            rowids = sorted(picker.sample(range(rows), min(batch, rows)))
            cursor = con.cursor()
            jobs = cursor.sql(f"SELECT {_COLS} FROM {JOBS_TABLE} WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
                              params=[rowids]).to_arrow_table().cast(JOBS_SCHEMA)
            cursor.close()
            later = pa.array([SIM_NOW + timedelta(hours=number + 1)] * jobs.num_rows, JOBS_SCHEMA.field("lastupdate_time").type)
            states = pa.array(["SUCCEED" if i % 2 else "FAILED" for i in range(jobs.num_rows)])
            jobs = jobs.set_column(jobs.schema.get_field_index("lastupdate_time"), "lastupdate_time", later)
            jobs = jobs.set_column(jobs.schema.get_field_index("state"), "state", states)
            if candidate == "apply":
                versions += warehouse.apply(run, jobs=jobs, export=False).history_versions
    return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall": time.perf_counter() - started,
            "rows": rows, "versions": versions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8_000, help="changed jobs per batch (default 8,000)")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        if "fill" in spec:  # in a child of its own: a process's peak RSS is its children's floor
            from benchmarks.lake import fill

            print("RESULT " + json.dumps({"rows": fill(Path(spec["fill"]), spec["jobs"], spec["days"], 1)}))
        else:
            print("RESULT " + json.dumps(_changes(spec["data_dir"], spec["candidate"], spec["batch"], spec["batches"])))
        return 0
    results: dict[str, list[dict]] = {name: [] for name in CANDIDATES}
    with tempfile.TemporaryDirectory(prefix="voicejobs-changes-") as tmp:
        filled = Path(tmp) / "filled"
        run_child(Path(__file__), {"fill": str(filled), "jobs": args.jobs, "days": args.days})
        for _ in range(args.rounds):
            for name in CANDIDATES:
                copy = Path(tmp) / name
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(filled, copy)
                spec = {"data_dir": str(copy), "candidate": name, "batch": args.batch, "batches": args.batches}
                results[name].append(run_child(Path(__file__), spec))
    print(f"{results['read'][0]['rows']:,} jobs stored; {args.batches} batches of {args.batch:,} changed jobs "
          f"picked over the whole table; median of {args.rounds}")
    medians = {name: (statistics.median(r["rss"] for r in runs), statistics.median(r["wall"] for r in runs))
               for name, runs in results.items()}
    for name, (rss, wall) in medians.items():
        print(f"  {name:<6} peak RSS {rss:6.0f} MB  {wall:6.2f} s  {results[name][0]['versions']:,} new versions")
    (read_rss, read_wall), (apply_rss, apply_wall) = medians["read"], medians["apply"]
    print(f"  apply over read: {apply_rss - read_rss:+.0f} MB, {apply_wall - read_wall:+.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
