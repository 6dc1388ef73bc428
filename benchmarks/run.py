"""Benchmark suite: the sync against the project's simulator, next to a transport baseline.

    .venv/bin/python benchmarks/run.py            # full suite (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # 5,000 jobs, every scenario kind, seconds

The simulator runs as its own process (``python -m pipelines.simulator --warm``), and every
measured step (transport baseline, sync, model refresh) runs in a fresh child process, so the
peak RSS reported is that step's own (``ru_maxrss``), imports included, and nothing of the
simulator or of earlier steps is counted against it. The two processes share the machine's
cores, which is why the baseline is measured in the same run, against the same simulator,
and every sync figure is also shown as a ratio to it.

Scenarios, per history size:

* ``baseline``  every page of every creation day fetched concurrently (offset paging, as many
  requests in flight as the sync allows) and JSON-decoded; nothing else.
* ``full``      a backfill of every creation day into an empty warehouse.
* ``rate-cap``  the same under a 50 requests/s cap enforced by the simulator; the floor is
  pages / 50 s. Retries here are 429s the sync's own pacing caused.
* ``incremental`` change capture after the simulator's clock moved far enough to change
  about 1% of the jobs (the full 0 ms backfill's warehouse is reused).
* ``models``    refreshing every SQL model over the warehouse that sync left behind.

Results are printed as a table and written to ``benchmarks/results/<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

SIM_NOW = "2026-01-01T00:00:00Z"  # a fixed simulated clock: the same jobs on every run
SIM_DAYS = 365
AK, SK = "SIMULATORAK", "simulator-secret"
PROJECT = "sim-project"
RATE_CAP = 50.0
CHANGED_SHARE = 0.01

COLUMNS = ("scenario", "jobs", "latency_ms", "seconds", "jobs_per_s", "vs_baseline",
           "requests", "retries", "peak_rss_mb", "note")


@dataclass
class Result:
    scenario: str
    jobs: int
    latency_ms: float
    seconds: float
    jobs_per_s: float
    requests: int
    retries: int
    peak_rss_mb: float
    vs_baseline: float | None = None
    note: str = ""
    details: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------- child steps


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _first_day(days: int) -> date:
    now = datetime.fromisoformat(SIM_NOW.replace("Z", "+00:00"))
    return (now - timedelta(days=days + 1)).date()


def _settings(args: dict):
    from pipelines.settings import Settings

    return Settings(
        endpoint=args["url"], ak=AK, sk=SK, project_ids=(PROJECT,), data_dir=Path(args["data_dir"]),
        first_day=_first_day(args["days"]), safety_lag_seconds=0, max_clock_skew_seconds=0, max_rps=args.get("max_rps"),
    )


def _step_baseline(args: dict) -> dict:
    """Fetch every page of every creation day concurrently and decode it; nothing else."""
    import asyncio

    import httpx
    import orjson

    # The client module's import-time fix of httpcore's per-request sniffio import applies to
    # the baseline too, so the ratio compares the sync with the same transport.
    import pipelines.metastudio.client  # noqa: F401
    from pipelines.metastudio.auth import AKSKAuth, canonical_query
    from pipelines.metastudio.paging import day_windows, format_time
    from pipelines.settings import Settings

    in_flight = Settings().max_in_flight
    base = f"{args['url']}/v1/{PROJECT}/voice-training-manage/user/jobs"
    last = datetime.fromisoformat(SIM_NOW.replace("Z", "+00:00")).date()
    windows = day_windows(_first_day(args["days"]), last)
    counters = {"requests": 0, "jobs": 0}

    async def main() -> None:
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        async with httpx.AsyncClient(auth=AKSKAuth(AK, SK), limits=limits, timeout=60) as http:
            slots = asyncio.Semaphore(in_flight)

            async def page(window, offset: int) -> dict:
                pairs = [("create_since", format_time(window.since)), ("create_until", format_time(window.until)),
                         ("limit", "100"), ("offset", str(offset)), ("sort_dir", "asc")]
                async with slots:
                    response = await http.get(f"{base}?{canonical_query(pairs)}",
                                              headers={"X-Project-Id": PROJECT})
                response.raise_for_status()
                body = orjson.loads(response.content)
                counters["requests"] += 1
                counters["jobs"] += len(body["jobs"])
                return body

            async def window_pages(window) -> None:
                first = await page(window, 0)
                await asyncio.gather(*(page(window, off) for off in range(100, first["count"], 100)))

            await asyncio.gather(*(window_pages(w) for w in windows))

    started = time.perf_counter()
    asyncio.run(main())
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "jobs": counters["jobs"], "requests": counters["requests"], "retries": 0}


def _step_sync(args: dict) -> dict:
    """One sync (``mode``) against the simulator; the report plus this process's peak RSS."""
    from pipelines.sync import sync
    from pipelines.warehouse import Warehouse

    settings = _settings(args)
    warehouse = Warehouse(settings.data_dir)
    profile = args.get("profile")
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    if args["mode"] == "days":
        last = datetime.fromisoformat(SIM_NOW.replace("Z", "+00:00")).date()
        report = sync(settings, mode="days", since=_first_day(args["days"]), until=last, warehouse=warehouse)
    else:
        report = sync(settings, mode="incremental", warehouse=warehouse)
    seconds = time.perf_counter() - started
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    return {"seconds": seconds, "jobs": report.jobs_fetched, "requests": report.requests,
            "retries": report.retries_total, "report": report.as_dict()}


def _step_models(args: dict) -> dict:
    """Refresh every SQL model over the warehouse a sync left behind."""
    import duckdb

    from pipelines.models import connect, refresh_models

    db = Path(args["data_dir"]) / "warehouse.duckdb"
    con = connect(db)
    try:
        jobs = con.execute("SELECT count(*) FROM main.voice_training_jobs").fetchone()[0]
        started = time.perf_counter()
        refresh_models(con)
        seconds = time.perf_counter() - started
        models = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'analytics'"
        ).fetchone()[0]
    finally:
        con.close()
    del duckdb
    return {"seconds": seconds, "jobs": jobs, "requests": 0, "retries": 0, "models": models}


STEPS = {"baseline": _step_baseline, "sync": _step_sync, "models": _step_models}


def _child_main(spec: str) -> int:
    args = json.loads(spec)
    out = STEPS[args["step"]](args)
    out["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(out, default=str))
    return 0


# ---------------------------------------------------------------------------------- driver


class Simulator:
    """``python -m pipelines.simulator`` as its own process, warmed before it listens."""

    def __init__(self, jobs: int, days: int) -> None:
        self.jobs = jobs
        self.days = days
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.simulator", "--jobs", str(jobs), "--warm", "--port", "0",
             "--now", SIM_NOW, "--days", str(days), "--projects", PROJECT],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"simulator did not start: {line!r} {self.proc.stderr.read()!r}")
        self.url = line.rsplit(" ", 1)[1].strip()
        # Admin calls that change state need the per-process token the banner prints.
        self.admin_token = ""
        while not self.admin_token:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.kill()
                raise RuntimeError(f"simulator printed no admin token: {self.proc.stderr.read()!r}")
            if line.startswith("  admin token: "):
                self.admin_token = line.split(":", 1)[1].strip()

    def admin(self, path: str, body: dict | None = None) -> dict:
        """POST an admin call (JSON body, the admin token in X-Sim-Admin-Token)."""
        data = json.dumps(body if body is not None else {}).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method="POST",
            headers={"Content-Type": "application/json", "X-Sim-Admin-Token": self.admin_token},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def configure(self, **changes) -> None:
        self.admin("/_sim/config", changes)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_step(**args) -> dict:
    """Run one measured step in a fresh Python process; its RESULT line as a dict."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(args, default=str)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"step {args['step']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def _result(scenario: str, out: dict, latency: float, baseline: Result | None = None, note: str = "") -> Result:
    seconds = out["seconds"]
    rate = out["jobs"] / seconds if seconds else 0.0
    return Result(
        scenario=scenario, jobs=out["jobs"], latency_ms=latency, seconds=round(seconds, 3),
        jobs_per_s=round(rate, 1), requests=out["requests"], retries=out["retries"],
        peak_rss_mb=round(out["peak_rss_mb"], 1),
        vs_baseline=round(rate / baseline.jobs_per_s, 3) if baseline and baseline.jobs_per_s else None,
        note=note, details={k: v for k, v in out.items() if k not in ("seconds", "jobs", "requests", "retries")},
    )


def bench_size(jobs: int, days: int, latencies: list[float], work: Path, results: list[Result], echo,
               profile_dir: Path | None = None) -> None:
    sim = Simulator(jobs, days)
    try:
        kept_dir: Path | None = None
        full_at_zero: Result | None = None
        for latency in latencies:
            sim.configure(latency_ms=latency, rate_limit=None)
            baseline = _result("baseline", run_step(step="baseline", url=sim.url, days=days), latency)
            echo(baseline, results)
            data_dir = work / f"full-{jobs}-{int(latency)}"
            # An incremental sync with no watermark is the full backfill of every creation day,
            # and leaves the watermark the change-capture scenario starts from.
            profile = str(profile_dir / f"full-{jobs}-{int(latency)}.prof") if profile_dir else None
            out = run_step(step="sync", url=sim.url, days=days, data_dir=str(data_dir), mode="incremental",
                           profile=profile)
            full = _result("full", out, latency, baseline)
            echo(full, results)
            if latency == 0:
                kept_dir, full_at_zero = data_dir, full
            else:
                shutil.rmtree(data_dir, ignore_errors=True)

        sim.configure(latency_ms=0, rate_limit=RATE_CAP)
        data_dir = work / f"capped-{jobs}"
        out = run_step(step="sync", url=sim.url, days=days, data_dir=str(data_dir), mode="days", max_rps=RATE_CAP)
        floor = out["requests"] / RATE_CAP
        capped = _result("rate-cap", out, 0, None,
                         note=f"floor {floor:.1f}s, {out['seconds'] / floor:.3f}x floor")
        capped.details["floor_seconds"] = round(floor, 3)
        echo(capped, results)
        shutil.rmtree(data_dir, ignore_errors=True)
        sim.configure(rate_limit=None)

        if kept_dir is not None and full_at_zero is not None:
            # Move the simulated clock until about 1% of the jobs were created, changed or deleted.
            # Steps of a few hours, so the change lands near 1% rather than overshooting it.
            changed, step_hours = 0, 4
            while changed < CHANGED_SHARE * jobs:
                moved = sim.admin(f"/_sim/advance?seconds={step_hours * 3600}")
                changed += moved["created"] + moved["transitioned"] + moved["deleted"]
            out = run_step(step="sync", url=sim.url, days=days, data_dir=str(kept_dir), mode="incremental")
            share = out["seconds"] / full_at_zero.seconds
            inc = _result("incremental", out, 0, None, note=f"{changed} changed, {share:.1%} of full")
            inc.details["changed"] = changed
            inc.details["share_of_full"] = round(share, 4)
            echo(inc, results)

            out = run_step(step="models", data_dir=str(kept_dir))
            echo(_result("models", out, 0, None, note=f"{out['models']} models"), results)
            shutil.rmtree(kept_dir, ignore_errors=True)
    finally:
        sim.close()


def format_table(results: list[Result]) -> str:
    rows = [COLUMNS]
    for r in results:
        rows.append((
            r.scenario, f"{r.jobs:,}", f"{r.latency_ms:g}", f"{r.seconds:.2f}", f"{r.jobs_per_s:,.0f}",
            f"{r.vs_baseline:.2f}" if r.vs_baseline is not None else "-", f"{r.requests:,}", str(r.retries),
            f"{r.peak_rss_mb:.0f}", r.note,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i in (0, len(COLUMNS) - 1) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small history (5,000 jobs): a smoke run")
    parser.add_argument("--sizes", help="comma-separated history sizes (default 100000,1000000)")
    parser.add_argument("--days", type=int, default=SIM_DAYS, help=f"days of history (default {SIM_DAYS})")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for the JSON")
    parser.add_argument("--profile", action="store_true", help="cProfile every full sync into the results dir")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args.child)

    # A terminated run still stops its simulator and the step in flight (finally blocks run).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([5_000] if args.quick else [100_000, 1_000_000])
    latencies = [0.0, 20.0]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results: list[Result] = []

    def echo(result: Result, into: list[Result]) -> None:
        into.append(result)
        print(f"  {result.scenario:<12} {result.jobs:>9,} jobs  {result.latency_ms:>4g} ms  "
              f"{result.seconds:8.2f} s  {result.jobs_per_s:>9,.0f}/s  rss {result.peak_rss_mb:.0f} MB  "
              f"{result.note}", flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="voicejobs-bench-") as tmp:
        for jobs in sizes:
            print(f"history of {jobs:,} jobs", flush=True)
            profile_dir = out_dir / f"profile-{stamp}" if args.profile else None
            if profile_dir:
                profile_dir.mkdir(parents=True, exist_ok=True)
            bench_size(jobs, args.days, latencies, Path(tmp), results, echo, profile_dir)
    total = time.perf_counter() - started

    print()
    print(format_table(results))
    print(f"\nsuite took {total:.0f}s on {os.cpu_count()} cores")
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps({
        "started": stamp, "suite_seconds": round(total, 1), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "machine": platform.machine(), "columns": list(COLUMNS),
        "results": [asdict(r) for r in results],
    }, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
