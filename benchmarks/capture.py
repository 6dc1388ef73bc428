"""One change capture, measured again and again on the same warehouse and the same change.

    .venv/bin/python benchmarks/capture.py [--jobs 1000000] [--runs 5] [--other PATH]

Starts the lumpy simulator (as benchmarks/run.py does), backfills its history into a kept
warehouse, moves the simulated clock until about 1% of the jobs were created or changed state
(about 0.01% are deleted on the way), and then runs the change capture (``voicejobs sync``'s
incremental mode, models and snapshot included) ``--runs`` times, each in a fresh process on a
fresh copy of the kept warehouse. Each copy is made at the same path: a lake the warehouse
recorded writing elsewhere is written whole, which would measure something else. The simulator
is read-only meanwhile, so every run sees the same change.

With ``--other PATH`` (another checkout, such as ``git worktree add /tmp/before <commit>``), its
runs alternate with this checkout's, on the same simulator and warehouse, and the medians of
both are printed with their ratio: the way to tell a change of a few tenths of a second from
the noise of a shared 2-core machine (single runs of the same code vary by a third). The
backfill is then made by the other checkout: a newer one migrates its warehouse forward, an
older one could not read a newer warehouse.

Each run prints its wall time (what benchmarks/run.py's ``incremental`` figure is), its phases,
its requests and its peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.run import SIM_DAYS, TRAFFIC, Simulator, move_clock, run_child  # noqa: E402


def _step(checkout: Path, **args) -> dict:
    return run_child(checkout / "benchmarks" / "run.py", {"step": "sync", **args})


def _summary(out: dict) -> dict:
    phases = out["report"]["phase_seconds"]
    post = sum(seconds for name, seconds in phases.items() if name != "fetch and write")
    return {"seconds": out["seconds"], "fetch": phases.get("fetch and write", 0.0), "after": post,
            "requests": out["requests"], "rss": out["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="history size (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=5, help="change captures per checkout (default 5)")
    parser.add_argument("--other", type=Path, help="another checkout whose runs alternate with this one's")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    checkouts = {"this": ROOT}
    if args.other is not None:
        other = args.other.resolve()
        if not (other / "benchmarks" / "run.py").exists():
            parser.error(f"{other} is not a checkout of this project (no benchmarks/run.py)")
        checkouts = {"other": other, "this": ROOT}
    work = Path(tempfile.mkdtemp(prefix="voicejobs-capture-"))
    sim = Simulator(args.jobs, SIM_DAYS, TRAFFIC)
    try:
        kept, live = work / "kept", work / "data"
        sim.configure(latency_ms=0, rate_limit=None)
        first = next(iter(checkouts.values()))
        out = _step(first, url=sim.url, days=SIM_DAYS, data_dir=str(live), mode="incremental", refresh=True)
        print(f"backfill of {out['jobs']:,} jobs by {first}: {out['seconds']:.2f} s", flush=True)
        created, transitioned, deleted, _ = move_clock(sim, args.jobs)
        changed = created + transitioned
        print(f"the clock moved: {changed:,} jobs created or changed, {deleted:,} deleted", flush=True)
        shutil.copytree(live, kept)
        runs: dict[str, list[dict]] = {name: [] for name in checkouts}
        for n in range(args.runs):
            for name, checkout in checkouts.items():
                shutil.rmtree(live)
                shutil.copytree(kept, live)
                os.sync()  # the copy's writeback would otherwise land inside the run
                run = _summary(_step(checkout, url=sim.url, days=SIM_DAYS, data_dir=str(live),
                                     mode="incremental", refresh=True))
                runs[name].append(run)
                print(f"{name} {n + 1}: {run['seconds']:.2f} s (fetch and write {run['fetch']:.2f} s, after it "
                      f"{run['after']:.2f} s), {run['requests']:,} requests, {run['rss']:.0f} MB", flush=True)
        medians = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
        for name, m in medians.items():
            print(f"median {name}: {m['seconds']:.2f} s (fetch and write {m['fetch']:.2f} s, after it "
                  f"{m['after']:.2f} s), {m['rss']:.0f} MB")
        if "other" in medians:
            print(f"this / other: {medians['this']['seconds'] / medians['other']['seconds']:.2f}x")
    finally:
        sim.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
