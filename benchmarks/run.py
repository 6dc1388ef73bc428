"""Benchmark suite: the sync against the project's simulator, each figure next to its target.

    .venv/bin/python benchmarks/run.py                      # 100,000 and 1,000,000 jobs
    .venv/bin/python benchmarks/run.py --skip rate-cap      # the same without the rate-cap scenario
    .venv/bin/python benchmarks/run.py --sizes 100000       # one history size
    .venv/bin/python benchmarks/run.py --quick              # 5,000 jobs, every scenario
    .venv/bin/pip install -e ".[bench]"                     # dlt, for the "dlt" scenario (optional)

On 2 cores, with the sync of commit 1aa838d: 21 minutes without the rate cap (which adds about
5 at these sizes), 5 minutes for 100,000 jobs alone, 70 seconds for --quick; less as the sync
gets faster.

The simulator runs as its own process (``python -m pipelines.simulator --warm``), by default with
``--traffic lumpy --days 400`` (burst days at about 20x a usual day's volume, empty days,
business-hour peaks; a simulator without ``--traffic`` serves its steady history and the output
says so). Every measured step runs in a fresh child process, so the peak RSS reported is that
step's own (``ru_maxrss``), imports included, and nothing of the simulator or of earlier steps is
counted against it. The two processes share the machine's cores, which is why the transport
baseline is measured in the same run against the same simulator and every throughput is also
shown as a ratio to it.

What the targets are measured on. A user who runs ``voicejobs sync`` waits for the fetch, the
writes, the SQL models and the serving snapshot: the command returns only when all four are
done. So every target about a sync uses that whole unit, ``sync(..., refresh=True)`` (the
"sync+refresh" rows; the CLI scenarios run the command itself). The "sync" rows are the fetch
and write phase of the same run (its wall time up to the start of the models, and the peak RSS
up to then), shown beside it so the models' and the snapshot's share is visible; they are not
held to a target.

Scenarios, per history size:

* ``baseline``      every page of every creation day fetched concurrently (offset paging, as many
  requests in flight as the sync allows) and JSON-decoded; nothing else.
* ``sync``          the fetch and write phase of the full backfill below.
* ``sync+refresh``  a full backfill of every creation day into an empty warehouse, models and
  serving snapshot included (what ``voicejobs sync`` does); at 0 ms and 20 ms latency. With
  ``--full-runs N``, N baselines and backfills alternated at each latency, each backfill into an
  empty warehouse and compared with the baseline just before it; the targets take the median
  of the N ratios (the baseline's own time moves by a third from run to run on a shared machine).
* ``dlt``           the same listing loaded by dlt (a general-purpose loader: a ``@dlt.resource``
  paging every creation day with the same AK/SK signing and as many requests in flight, merged
  on ``job_id`` into DuckDB with Parquet loader files); skipped with a note without ``.[bench]``.
* ``rate-cap``      the sync (without refresh) under a 50 requests/s cap enforced by the
  simulator; the floor is pages / 50 s. Retries here are 429s the sync's own pacing caused.
* ``incremental``   change capture (with refresh) after the simulator's clock moved until about
  1% of the jobs were created or changed state (the clock's advance also deletes about 0.01%).
* ``incremental-later``  the same again, the clock moved as far once more: a nightly run's change
  capture, the serving snapshot's spare in place (the first one after a backfill has none: it
  copies the old snapshot into one while it fetches). Shown beside the target, which judges the first.
  With ``--full-runs N``, each change capture runs N times, each from the same warehouse (put
  back at its path between them), and its figures are the median run's: a single capture of a
  few seconds moved by a third from one suite to the next on a shared machine.
* ``models``        refreshing every SQL model over the warehouse the syncs left behind.
* ``one-day-cli``   ``voicejobs sync --since D --until D`` for the last whole day, a fresh
  process over the synced warehouse, against the same simulator; median of 5.

And once per suite: ``demo-cli``, ``voicejobs demo`` in a fresh directory, median of 3.

Targets (the "targets" table; ``met`` is yes or no):

1. full sync at 20 ms latency: >= 0.75x the baseline's jobs/s (set for 1,000,000 jobs);
2. full sync at 0 ms: >= 0.5x the baseline's jobs/s;
3. peak RSS of the sync process <= 300 MB (set for 1,000,000 jobs), and flat with history: the
   largest size's peak <= 1.25x the smallest's (needs two sizes);
4. a one-day ``voicejobs sync`` <= 1.5 s beyond its requests: wall time from process start to
   exit minus the request time the run reports (``api_wait_seconds`` in ``sync_runs.stats``,
   summed over concurrent requests, so capped at the run's fetch-and-write phase);
5. ``voicejobs demo`` <= 5 s;
6. change capture: requests <= pages of the changed jobs + 16 per deleted job + one count per
   creation day (from what the simulator reports it changed and deleted), and its time <= 5% of
   the full sync's (both with refresh, at 0 ms).

Results are printed as two tables (scenarios, targets) and written to
``benchmarks/results/<UTC timestamp>.json`` and, as Markdown, ``<UTC timestamp>.md``.
``benchmarks/reference-targets-2core.json`` and ``.md`` keep one full run (100,000 and 1,000,000
jobs, commit 3c88644, without the rate cap) for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

SIM_NOW = "2026-01-01T00:00:00Z"  # a fixed simulated clock: the same jobs on every run
SIM_DAYS = 400
TRAFFIC = "lumpy"
AK, SK = "SIMULATORAK", "simulator-secret"
PROJECT = "sim-project"
RATE_CAP = 50.0
CHANGED_SHARE = 0.01
PAGE_SIZE = 100
DAY_RUNS, DEMO_RUNS = 5, 3
VOICEJOBS = ROOT / ".venv" / "bin" / "voicejobs"

COLUMNS = ("scenario", "jobs", "latency_ms", "seconds", "jobs_per_s", "vs_baseline",
           "requests", "retries", "peak_rss_mb", "note")
TARGET_COLUMNS = ("figure", "jobs", "measured", "target", "met", "how")

# Every target row the suite prints, in order (the smoke test checks each is there).
TARGETS = {
    "full-20ms": "full sync at 20 ms, jobs/s vs baseline",
    "full-0ms": "full sync at 0 ms, jobs/s vs baseline",
    "peak-rss": "peak RSS of the sync process",
    "rss-flat": "peak RSS flat with history",
    "one-day": "one-day `voicejobs sync` beyond its requests",
    "demo": "`voicejobs demo`, whole command",
    "incremental-requests": "change capture requests",
    "incremental-time": "change capture time vs full sync",
}


@dataclass
class Result:
    scenario: str
    jobs: int | None
    latency_ms: float | None
    seconds: float | None
    jobs_per_s: float | None
    requests: int | None
    retries: int | None
    peak_rss_mb: float | None
    vs_baseline: float | None = None
    note: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class Target:
    key: str
    figure: str
    jobs: str
    measured: str
    target: str
    met: str  # "yes", "no", or "n/a" when it could not be measured in this run
    how: str
    value: float | None = None
    limit: float | None = None


# ---------------------------------------------------------------------------------- child steps


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sim_now() -> datetime:
    return datetime.fromisoformat(SIM_NOW.replace("Z", "+00:00"))


def _first_day(days: int) -> date:
    return (_sim_now() - timedelta(days=days + 1)).date()


def _settings(args: dict):
    from pipelines.settings import Settings

    return Settings(
        endpoint=args["url"], ak=AK, sk=SK, project_ids=(PROJECT,), data_dir=Path(args["data_dir"]),
        first_day=_first_day(args["days"]), safety_lag_seconds=0, max_clock_skew_seconds=0, max_rps=args.get("max_rps"),
    )


def _list_url(url: str) -> str:
    return f"{url}/v1/{PROJECT}/voice-training-manage/user/jobs"


def _page_query(window, offset: int) -> str:
    from pipelines.metastudio.auth import canonical_query
    from pipelines.metastudio.paging import format_time

    pairs = [("create_since", format_time(window.since)), ("create_until", format_time(window.until)),
             ("limit", str(PAGE_SIZE)), ("offset", str(offset)), ("sort_dir", "asc")]
    return canonical_query(pairs)


def _step_baseline(args: dict) -> dict:
    """Fetch every page of every creation day concurrently and decode it; nothing else."""
    import asyncio

    import httpx
    import orjson

    # httpx's own transport (httpcore) imports sniffio at every request to learn the async
    # library; where sniffio is not installed, each failed import searches all of sys.path again
    # (about 0.2 ms a request). Its absence is recorded once, so the baseline times httpx, not a
    # failed import. The sync's transport (pipelines/metastudio/transport.py) never asks.
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    from pipelines.metastudio.auth import AKSKAuth
    from pipelines.metastudio.paging import day_windows
    from pipelines.settings import Settings

    in_flight = Settings().max_in_flight
    base = _list_url(args["url"])
    windows = day_windows(_first_day(args["days"]), _sim_now().date())
    counters = {"requests": 0, "jobs": 0}

    async def main() -> None:
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        async with httpx.AsyncClient(auth=AKSKAuth(AK, SK), limits=limits, timeout=60) as http:
            slots = asyncio.Semaphore(in_flight)

            async def page(window, offset: int) -> dict:
                async with slots:
                    response = await http.get(f"{base}?{_page_query(window, offset)}",
                                              headers={"X-Project-Id": PROJECT})
                response.raise_for_status()
                body = orjson.loads(response.content)
                counters["requests"] += 1
                counters["jobs"] += len(body["jobs"])
                return body

            async def window_pages(window) -> None:
                first = await page(window, 0)
                await asyncio.gather(*(page(window, off) for off in range(PAGE_SIZE, first["count"], PAGE_SIZE)))

            await asyncio.gather(*(window_pages(w) for w in windows))

    started = time.perf_counter()
    asyncio.run(main())
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "jobs": counters["jobs"], "requests": counters["requests"], "retries": 0}


def _step_sync(args: dict) -> dict:
    """One sync (``mode``, with ``refresh`` the models and the snapshot) against the simulator.

    Besides the report: the wall time and the peak RSS up to the start of the models (the
    fetch and write phase), taken when the run announces its first refresh phase."""
    from pipelines.sync import sync
    from pipelines.warehouse import Warehouse

    settings = _settings(args)
    warehouse = Warehouse(settings.data_dir)
    refresh = bool(args.get("refresh"))
    at_refresh: dict[str, float] = {}

    def progress(state) -> None:
        if not at_refresh and state.phase.startswith(("building", "publishing")):
            at_refresh.update(seconds=time.perf_counter() - started, peak_rss_mb=_peak_rss_mb())

    census = _partition_census(warehouse) if args["mode"] != "days" else None
    profile = args.get("profile")
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    if args["mode"] == "days":
        report = sync(settings, mode="days", since=_first_day(args["days"]), until=_sim_now().date(),
                      warehouse=warehouse, refresh=refresh, progress=progress if refresh else None)
    else:
        report = sync(settings, mode="incremental", warehouse=warehouse, refresh=refresh,
                      progress=progress if refresh else None)
    seconds = time.perf_counter() - started
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    out = {"seconds": seconds, "jobs": report.jobs_fetched, "requests": report.requests,
           "retries": report.retries_total, "report": report.as_dict(),
           "fetch_and_write": at_refresh or {"seconds": seconds, "peak_rss_mb": _peak_rss_mb()}}
    if census is not None:
        out["lake_rewrites"] = _lake_rewrites(census, _partition_census(warehouse))
    return out


def _partition_census(warehouse) -> dict[tuple[str, date], tuple[int, int, int, datetime | None]]:
    """Per lake partition (project, creation day): its jobs, a fingerprint of their contents
    (row_hash, which leaves out synced_at and deleted_at), its deleted jobs and its newest
    synced_at. Taken before and after a change capture (outside its timing), to tell why the
    lake rewrote what it did."""
    from pipelines.warehouse.tables import JOBS_TABLE, utc_day

    with warehouse.connect() as con:
        rows = con.execute(
            f"SELECT project_id, {utc_day('create_time')}, count(*), bit_xor(hash(project_id, job_id, row_hash)),"
            f" count(deleted_at), max(synced_at) FROM {JOBS_TABLE} GROUP BY ALL").fetchall()
    return {(project, day): (jobs, print_, deleted, synced) for project, day, jobs, print_, deleted, synced in rows}


def _lake_rewrites(before: dict, after: dict) -> dict[str, int]:
    """The partitions a change capture changed; those among them holding as many jobs as before
    (the same jobs, changed in place: the columns they changed are spliced into the old file,
    see lake.py; the others are encoded whole); and those of these whose jobs kept their
    contents, rewritten only because jobs were marked deleted there (and synced again by the
    re-listing that found them)."""
    changed = {key: value for key, value in after.items() if before.get(key) != value}
    same_jobs = {key: value for key, value in changed.items() if key in before and before[key][0] == value[0]}
    deletions_only = {key: value for key, value in same_jobs.items()
                      if before[key][:2] == value[:2] and value[2] > before[key][2]}
    return {"partitions": len(changed), "rows": sum(v[0] for v in changed.values()),
            "same_jobs_partitions": len(same_jobs), "same_jobs_rows": sum(v[0] for v in same_jobs.values()),
            "deletion_partitions": len(deletions_only), "deletion_rows": sum(v[0] for v in deletions_only.values())}


def _step_models(args: dict) -> dict:
    """Refresh every SQL model over the warehouse a sync left behind."""
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
    return {"seconds": seconds, "jobs": jobs, "requests": 0, "retries": 0, "models": models}


def _step_dlt(args: dict) -> dict:
    """The same listing loaded by dlt: a resource paging every creation day (offset paging, the
    project's AK/SK signer on httpx, as many requests in flight as the sync), merged on job_id
    into DuckDB with Parquet loader files. Extract, normalize and load are timed apart."""
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")  # no calls home from a benchmark
    os.environ.setdefault("DLT_DATA_DIR", str(Path(args["data_dir"]) / "dlt-home"))
    try:
        import dlt
    except Exception as exc:  # not installed, or broken on this machine
        return {"unavailable": f"dlt cannot be imported ({type(exc).__name__}: {exc}); "
                               "install it with .venv/bin/pip install -e '.[bench]'"}
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import httpx
    import orjson

    from pipelines.metastudio.auth import AKSKAuth
    from pipelines.metastudio.paging import day_windows
    from pipelines.settings import Settings

    in_flight = Settings().max_in_flight
    base = _list_url(args["url"])
    windows = day_windows(_first_day(args["days"]), _sim_now().date())
    counters = {"requests": 0, "jobs": 0}
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    http = httpx.Client(auth=AKSKAuth(AK, SK), limits=limits, timeout=60)

    def page(window, offset: int) -> tuple[object, dict]:
        response = http.get(f"{base}?{_page_query(window, offset)}", headers={"X-Project-Id": PROJECT})
        response.raise_for_status()
        body = orjson.loads(response.content)
        with lock:
            counters["requests"] += 1
            counters["jobs"] += len(body["jobs"])
        return window, body

    @dlt.resource(name="voice_training_jobs", primary_key="job_id", write_disposition="merge")
    def voice_training_jobs():
        with ThreadPoolExecutor(in_flight) as pool:
            firsts = [pool.submit(page, w, 0) for w in windows]
            rest = []
            for done in as_completed(firsts):
                window, body = done.result()
                if body["jobs"]:
                    yield body["jobs"]
                rest += [pool.submit(page, window, off) for off in range(PAGE_SIZE, body["count"], PAGE_SIZE)]
            for done in as_completed(rest):
                yield done.result()[1]["jobs"]

    data_dir = Path(args["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    pipeline = dlt.pipeline(
        pipeline_name="voicejobs_bench", pipelines_dir=str(data_dir / "dlt-pipelines"),
        destination=dlt.destinations.duckdb(str(data_dir / "dlt.duckdb")), dataset_name="metastudio",
    )
    phases: dict[str, float] = {}
    started = time.perf_counter()
    try:
        pipeline.extract(voice_training_jobs(), loader_file_format="parquet")
        phases["extract"] = time.perf_counter() - started
        mark = time.perf_counter()
        pipeline.normalize()
        phases["normalize"] = time.perf_counter() - mark
        mark = time.perf_counter()
        pipeline.load()
        phases["load"] = time.perf_counter() - mark
    finally:
        http.close()
    seconds = time.perf_counter() - started
    import duckdb

    con = duckdb.connect(str(data_dir / "dlt.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT count(*) FROM metastudio.voice_training_jobs").fetchone()[0]
    finally:
        con.close()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "jobs": counters["jobs"], "requests": counters["requests"], "retries": 0,
            "rows": rows, "phases": {k: round(v, 3) for k, v in phases.items()},
            "dlt_version": dlt.__version__, "children_peak_rss_mb": children}


STEPS = {"baseline": _step_baseline, "sync": _step_sync, "models": _step_models, "dlt": _step_dlt}


def _child_main(spec: str) -> int:
    args = json.loads(spec)
    out = STEPS[args["step"]](args)
    out["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(out, default=str))
    return 0


# ---------------------------------------------------------------------------------- driver


def simulator_has_traffic() -> bool:
    """Whether ``python -m pipelines.simulator`` takes ``--traffic`` (steady or lumpy)."""
    from pipelines.simulator.cli import build_parser

    return any("--traffic" in action.option_strings for action in build_parser()._actions)


class Simulator:
    """``python -m pipelines.simulator`` as its own process, warmed before it listens."""

    def __init__(self, jobs: int, days: int, traffic: str | None = None) -> None:
        self.jobs = jobs
        self.days = days
        command = [sys.executable, "-m", "pipelines.simulator", "--jobs", str(jobs), "--warm", "--port", "0",
                   "--now", SIM_NOW, "--days", str(days), "--projects", PROJECT]
        if traffic:
            command += ["--traffic", traffic]
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    return run_child(Path(__file__), args)


def run_child(script: Path, args: dict) -> dict:
    """``script --child <args as JSON>`` in a fresh Python process: the dict its RESULT line holds."""
    proc = subprocess.run([sys.executable, str(script.resolve()), "--child", json.dumps(args, default=str)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"step {args.get('step', script.name)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


@dataclass
class Command:
    """One whole command, timed from process start to exit, with its own peak RSS."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float


def run_command(argv: list[str], *, env: dict, cwd: Path, timeout: float = 600) -> Command:
    """Start ``argv`` and wait for it with wait4, so the rusage (peak RSS) is this process's own.

    The gigabytes earlier scenarios wrote and removed are flushed first: otherwise the
    command's own fsyncs wait behind their write-back, a cost that is not the command's."""
    os.sync()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Command(seconds, proc.returncode, out.read().decode(errors="replace"),
                       err.read().decode(errors="replace"), usage.ru_maxrss / 1024)


def _clean_env() -> dict:
    """This environment without anything that would point a command at a real source, a Dagster
    instance or PostgreSQL: the command sees only what the benchmark gives it. The code it runs
    is this checkout's, even where the virtualenv's editable install points at another one."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_", "DAGSTER_", "AWS_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _voicejobs() -> list[str]:
    """The console script of this checkout's virtualenv, else the one beside this Python."""
    script = VOICEJOBS if VOICEJOBS.exists() else Path(sys.executable).with_name("voicejobs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipelines.cli"]


def _checkout() -> str:
    """The commit benchmarked, with '+changes' when the work tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipelines", "sql"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {commit}" + (" +changes" if dirty else "")


#: Steps of the pure-Python loop timed as the machine's speed (cpu_reference_seconds).
CPU_REFERENCE_STEPS = 5_000_000


def cpu_reference_seconds(runs: int = 3, *, timer: Callable[[], float] = time.perf_counter) -> float:
    """The median time of a fixed pure-Python loop: how fast this machine's cores are.

    The baseline at 20 ms waits mostly on the latency, the sync mostly on its cores, so the same
    commit measures a lower ratio on slower cores. Printed with every run, it tells which runs'
    figures compare. Rounded to the milliseconds the JSON keeps, so the header, the Markdown and
    the JSON read alike (0.18505 s printed 0.19 beside a kept 0.185)."""
    times = []
    for _ in range(runs):
        started = timer()
        total = 0
        for i in range(CPU_REFERENCE_STEPS):
            total += i
        times.append(timer() - started)
    return round(statistics.median(times), 3)


def run_context(checkout: str, traffic_note: str, days: int, sizes: list[int], cpu_reference: float,
                *, profiled: bool) -> str:
    """The line that heads a run's output and its Markdown: what was measured, on what."""
    context = (f"{checkout}; {traffic_note}, {days} days of history, sizes {', '.join(f'{s:,}' for s in sizes)}; "
               f"{os.cpu_count()} cores, Python {platform.python_version()}, CPU reference {cpu_reference:.2f} s "
               f"(a {CPU_REFERENCE_STEPS:,}-step Python loop: runs compare where it does)")
    if profiled:
        context += "; profiled with cProfile, which slows the syncs: their speed figures are not the targets'"
    return context


def _last_run_stats(data_dir: Path) -> dict:
    import duckdb

    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        row = con.execute("SELECT stats FROM sync_runs WHERE status = 'succeeded' "
                          "ORDER BY finished_at DESC LIMIT 1").fetchone()
    finally:
        con.close()
    return json.loads(row[0]) if row and row[0] else {}


def _result(scenario: str, out: dict, latency: float, baseline: Result | None = None, note: str = "",
            seconds: float | None = None, peak_rss_mb: float | None = None) -> Result:
    seconds = out["seconds"] if seconds is None else seconds
    rate = out["jobs"] / seconds if seconds else 0.0
    return Result(
        scenario=scenario, jobs=out["jobs"], latency_ms=latency, seconds=round(seconds, 3),
        jobs_per_s=round(rate, 1), requests=out["requests"], retries=out["retries"],
        peak_rss_mb=round(out["peak_rss_mb"] if peak_rss_mb is None else peak_rss_mb, 1),
        vs_baseline=round(rate / baseline.jobs_per_s, 3) if baseline and baseline.jobs_per_s else None,
        note=note, details={k: v for k, v in out.items() if k not in ("seconds", "jobs", "requests", "retries")},
    )


def share_of_full(seconds: float, fulls: list[Result]) -> float:
    """A change capture's ``seconds`` as a share of the median full sync of ``fulls``, both as the
    results keep them (to the millisecond), so the JSON's figures give the same share."""
    return round(seconds, 3) / statistics.median(r.seconds for r in fulls)


def _not_run(scenario: str, why: str, latency: float | None = None) -> Result:
    return Result(scenario, None, latency, None, None, None, None, None, note=why, details={"unavailable": why})


def _one_day_cli(sim: Simulator, data_dir: Path, days: int, runs: int, latency: float) -> Result:
    """``voicejobs sync --since D --until D`` for the last whole day before the simulator's now,
    ``runs`` times, each a fresh process over the synced warehouse; median wall time."""
    day = (_sim_now() - timedelta(days=1)).date().isoformat()
    env = _clean_env() | {
        "METASTUDIO_ENDPOINT": sim.url, "HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK,
        "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT, "VOICEJOBS_DATA_DIR": str(data_dir),
        "VOICEJOBS_FIRST_DAY": _first_day(days).isoformat(),
        # The simulated clock is fixed: believe its Date, and list the day up to its now.
        "VOICEJOBS_SAFETY_LAG_SECONDS": "0", "VOICEJOBS_MAX_CLOCK_SKEW_SECONDS": "0",
    }
    samples = []
    for _ in range(runs):
        done = run_command([*_voicejobs(), "sync", "--since", day, "--until", day], env=env, cwd=data_dir.parent)
        if done.returncode != 0:
            raise RuntimeError(f"voicejobs sync exited {done.returncode}:\n{done.stderr[-3000:]}")
        stats = _last_run_stats(data_dir)
        phases = stats.get("phase_seconds", {})
        fetch = phases.get("fetch and write", 0.0)
        requests_s = min(stats.get("api_wait_seconds", 0.0), fetch) if fetch else stats.get("api_wait_seconds", 0.0)
        samples.append({"wall": done.seconds, "request_seconds": requests_s, "beyond": done.seconds - requests_s,
                         "api_wait_seconds": stats.get("api_wait_seconds"), "phases": phases,
                         "jobs": stats.get("jobs_fetched", 0), "requests": stats.get("requests", 0),
                         "retries": stats.get("retries", 0), "peak_rss_mb": done.peak_rss_mb})
    wall = statistics.median(s["wall"] for s in samples)
    beyond = statistics.median(s["beyond"] for s in samples)
    requests_s = statistics.median(s["request_seconds"] for s in samples)
    last = samples[-1]
    rate = last["jobs"] / wall if wall else 0.0
    return Result(
        scenario="one-day-cli", jobs=last["jobs"], latency_ms=latency, seconds=round(wall, 3),
        jobs_per_s=round(rate, 1), requests=last["requests"], retries=last["retries"],
        peak_rss_mb=round(max(s["peak_rss_mb"] for s in samples), 1),
        note=f"day {day}; beyond requests {beyond:.2f}s (requests {requests_s:.2f}s); median of {runs}",
        details={"day": day, "runs": samples, "beyond_requests_seconds": round(beyond, 3),
                 "request_seconds": round(requests_s, 3)},
    )


def bench_demo(runs: int, work: Path) -> Result:
    """``voicejobs demo`` as a user runs it: a fresh directory each time, nothing configured."""
    samples: list[Command] = []
    jobs = 0
    for n in range(runs):
        cwd = work / f"demo-{n}"
        cwd.mkdir(parents=True)
        done = run_command([*_voicejobs(), "demo"], env=_clean_env(), cwd=cwd)
        if done.returncode != 0:
            raise RuntimeError(f"voicejobs demo exited {done.returncode}:\n{done.stderr[-3000:]}")
        samples.append(done)
        for line in done.stdout.splitlines():
            if line.startswith("Loaded "):
                jobs = int(line.split()[1].replace(",", ""))
        shutil.rmtree(cwd, ignore_errors=True)
    seconds = statistics.median(s.seconds for s in samples)
    return Result(
        scenario="demo-cli", jobs=jobs, latency_ms=0.0, seconds=round(seconds, 3),
        jobs_per_s=round(jobs / seconds, 1) if seconds else 0.0, requests=None, retries=None,
        peak_rss_mb=round(max(s.peak_rss_mb for s in samples), 1), note=f"median of {runs}",
        details={"runs": [round(s.seconds, 3) for s in samples]},
    )


def _full_pair(sim: Simulator, jobs: int, days: int, latency: float, data_dir: Path, echo, results: list[Result],
               profile_dir: Path | None, attempt: int) -> tuple[Result, Result]:
    """One baseline, then one full backfill with refresh into ``data_dir`` compared with it; both
    echoed (the backfill as its fetch-and-write part and as a whole)."""
    baseline = _result("baseline", run_step(step="baseline", url=sim.url, days=days), latency)
    echo(baseline, results)
    # An incremental sync with no watermark is the full backfill of every creation day,
    # and leaves the watermark the change-capture scenario starts from.
    suffix = f"-{attempt + 1}" if attempt else ""
    profile = str(profile_dir / f"full-{jobs}-{int(latency)}{suffix}.prof") if profile_dir else None
    out = run_step(step="sync", url=sim.url, days=days, data_dir=str(data_dir), mode="incremental",
                   refresh=True, profile=profile)
    phases = out["report"]["phase_seconds"]
    fetch = out["fetch_and_write"]
    echo(_result("sync", out, latency, baseline, seconds=fetch["seconds"], peak_rss_mb=fetch["peak_rss_mb"],
                 note="fetch and write: the run below up to its models"), results)
    # What sync() took past its own report: finishing the run log and closing the warehouse.
    # (The lake is exported while the snapshot is flushed to disk: one phase.)
    from pipelines.sync.run import SNAPSHOT_PHASE

    snapshot = phases.get(SNAPSHOT_PHASE, phases.get("snapshot", 0))
    closing = out["seconds"] - fetch["seconds"] - phases.get("models", 0) - snapshot
    full = _result("sync+refresh", out, latency, baseline,
                   note=f"models {phases.get('models', 0):.2f}s, snapshot and lake {snapshot:.2f}s, "
                        f"then {closing:.2f}s to return")
    echo(full, results)
    return baseline, full


def bench_size(jobs: int, days: int, traffic: str | None, latencies: list[float], work: Path,
               results: list[Result], echo, *, skip: set[str], day_runs: int,
               profile_dir: Path | None = None, full_runs: int = 1) -> None:
    """Every per-size scenario, each result echoed into ``results``."""
    sim = Simulator(jobs, days, traffic)
    try:
        kept_dir: Path | None = None
        zero_fulls: list[Result] = []
        for latency in latencies:
            sim.configure(latency_ms=latency, rate_limit=None)
            data_dir = work / f"full-{jobs}-{int(latency)}"
            for attempt in range(full_runs):
                shutil.rmtree(data_dir, ignore_errors=True)
                baseline, full = _full_pair(sim, jobs, days, latency, data_dir, echo, results, profile_dir,
                                            attempt)
                if latency == 0:
                    zero_fulls.append(full)
            if latency == 0:
                kept_dir = data_dir  # the last backfill at 0 ms: change capture starts from it
                if "dlt" in skip:
                    echo(_not_run("dlt", "skipped (--skip)", latency), results)
                else:
                    dlt_dir = work / f"dlt-{jobs}"
                    out = run_step(step="dlt", url=sim.url, days=days, data_dir=str(dlt_dir))
                    if "unavailable" in out:
                        echo(_not_run("dlt", out["unavailable"], latency), results)
                    else:
                        p = out["phases"]
                        echo(_result("dlt", out, latency, baseline,
                                     note=f"dlt {out['dlt_version']}: extract {p['extract']:.1f}s, normalize "
                                          f"{p['normalize']:.1f}s, load {p['load']:.1f}s; {out['rows']:,} rows"),
                             results)
                    shutil.rmtree(dlt_dir, ignore_errors=True)
            else:
                shutil.rmtree(data_dir, ignore_errors=True)

        if "rate-cap" in skip:
            echo(_not_run("rate-cap", "skipped (--skip)", 0.0), results)
        else:
            sim.configure(latency_ms=0, rate_limit=RATE_CAP)
            data_dir = work / f"capped-{jobs}"
            out = run_step(step="sync", url=sim.url, days=days, data_dir=str(data_dir), mode="days",
                           max_rps=RATE_CAP)
            floor = out["requests"] / RATE_CAP
            capped = _result("rate-cap", out, 0, None, note=f"floor {floor:.1f}s, {out['seconds'] / floor:.3f}x floor")
            capped.details["floor_seconds"] = round(floor, 3)
            echo(capped, results)
            shutil.rmtree(data_dir, ignore_errors=True)
        sim.configure(latency_ms=0, rate_limit=None)

        if kept_dir is not None and zero_fulls:
            # The first change capture after the backfill, then a later one: the first has no
            # spare snapshot yet and copies one while it fetches (Serving.spare_made_ahead), the
            # later one, as every nightly run after it, writes only what changed into its spare.
            moved = 0
            for scenario in ("incremental", "incremental-later"):
                result, moved = _change_capture(sim, kept_dir, jobs, days, zero_fulls, moved, scenario,
                                                profile_dir if scenario == "incremental" else None, full_runs)
                echo(result, results)

            # On a copy of the warehouse: the full rebuild rewrites every model table, which the
            # next two snapshots would copy again (each is written into the one two publishes
            # before it), and the one-day runs below measure nightly syncs, not that rewrite.
            models_dir = work / f"models-{jobs}"
            models_dir.mkdir(exist_ok=True)
            for name in ("warehouse.duckdb", "warehouse.duckdb.wal"):
                if (kept_dir / name).exists():
                    shutil.copy2(kept_dir / name, models_dir / name)
            out = run_step(step="models", data_dir=str(models_dir))
            shutil.rmtree(models_dir, ignore_errors=True)
            echo(_result("models", out, 0, None, note=f"{out['models']} models"), results)

            if "one-day" in skip:
                echo(_not_run("one-day-cli", "skipped (--skip)", 0.0), results)
            else:
                echo(_one_day_cli(sim, kept_dir, days, day_runs, 0.0), results)
            shutil.rmtree(kept_dir, ignore_errors=True)
    finally:
        sim.close()


#: The simulated clock moves in steps of this many hours until CHANGED_SHARE of the jobs changed.
#: The target is set at about 1% changed and 0.01% deleted: steps of 4 hours overshot it at a
#: million jobs (1.41% changed, 0.016% deleted); steps of one hour stop within an hour's changes
#: of it (1.16% and 0.0099% at a million jobs).
CLOCK_STEP_HOURS = 1


def move_clock(sim: Simulator, jobs: int) -> tuple[int, int, int, int]:
    """Move the simulated clock until about CHANGED_SHARE of ``jobs`` were created or changed
    state: (created, transitioned, deleted, seconds moved). Steps of a few hours, so the change
    lands near the share rather than overshooting it; each step also deletes about 0.05% of the
    jobs per simulated day."""
    created = transitioned = deleted = seconds = 0
    while created + transitioned < CHANGED_SHARE * jobs:
        moved = sim.admin(f"/_sim/advance?seconds={CLOCK_STEP_HOURS * 3600}")
        seconds += CLOCK_STEP_HOURS * 3600
        created += moved["created"]
        transitioned += moved["transitioned"]
        deleted += moved["deleted"]
    return created, transitioned, deleted, seconds


def _change_capture(sim: Simulator, data_dir: Path, jobs: int, days: int, zero_fulls: list[Result],
                    moved_before: int, scenario: str, profile_dir: Path | None, runs: int = 1) -> tuple[Result, int]:
    """Move the simulated clock until about 1% of the jobs were created or changed state, then
    ``runs`` change captures (with refresh) into ``data_dir``, each from the warehouse as it was
    before the first: the median run's result, and the seconds the clock has moved since the
    backfill (``moved_before`` before this one). ``data_dir`` is left as the last run left it."""
    created, transitioned, deleted, seconds = move_clock(sim, jobs)
    moved_seconds = moved_before + seconds
    changed = created + transitioned
    outs = _captures(sim.url, data_dir, days, runs,
                     str(profile_dir / f"{scenario}-{jobs}.prof") if profile_dir else None)
    out = sorted(outs, key=lambda o: o["seconds"])[(len(outs) - 1) // 2]
    share = share_of_full(out["seconds"], zero_fulls)
    # The bound: a page per 100 changed jobs, 16 count requests to find each deleted job,
    # and one count per creation day (the first day to the day the clock moved to).
    new_now = _sim_now() + timedelta(seconds=moved_seconds)
    creation_days = (new_now.date() - _first_day(days)).days + 1
    bound = math.ceil(changed / PAGE_SIZE) + 16 * deleted + creation_days
    result = _result(scenario, out, 0, None,
                     note=f"{changed:,} changed, {deleted:,} deleted; {out['requests']:,} requests "
                          f"(bound {bound:,}); {share:.1%} of full sync+refresh"
                          + (f" (median of {len(zero_fulls)})" if len(zero_fulls) > 1 else "")
                          + (f"; the median of {runs} captures from the same warehouse: "
                             + ", ".join(f"{o['seconds']:.2f}" for o in outs) + " s" if runs > 1 else ""))
    result.details.update(changed=changed, created=created, transitioned=transitioned, deleted=deleted,
                          creation_days=creation_days, request_bound=bound, share_of_full=round(share, 4),
                          capture_seconds=[round(o["seconds"], 3) for o in outs],
                          capture_requests=[o["requests"] for o in outs],
                          capture_lake_partitions=[o["lake_rewrites"]["partitions"] for o in outs])
    return result, moved_seconds


def _captures(url: str, data_dir: Path, days: int, runs: int, profile: str | None) -> list[dict]:
    """``runs`` change captures into ``data_dir``, each from the warehouse as it was before the
    first: put back at the same path (the warehouse records where its lake is; elsewhere, the
    lake would be written whole), and flushed to disk, as the backfill's files are by then.
    With ``profile``, each run is profiled into it (the last one's profile is kept)."""
    before = data_dir.with_name(data_dir.name + "-before-capture")
    if runs > 1:
        shutil.rmtree(before, ignore_errors=True)
        shutil.copytree(data_dir, before)
    outs = []
    try:
        for attempt in range(runs):
            if attempt:
                shutil.rmtree(data_dir)
                shutil.copytree(before, data_dir)
            os.sync()
            outs.append(run_step(step="sync", url=url, days=days, data_dir=str(data_dir), mode="incremental",
                                 refresh=True, profile=profile))
    finally:
        shutil.rmtree(before, ignore_errors=True)
    return outs


# ---------------------------------------------------------------------------------- targets


#: The packages whose releases move the figures: the baseline's HTTP stack (httpx, httpcore, h11)
#: as much as the sync's own.
MEASURED_PACKAGES = ("httpx", "httpcore", "h11", "httptools", "orjson", "pyarrow", "duckdb", "dlt")


def package_versions() -> dict[str, str]:
    """The installed version of each of MEASURED_PACKAGES ("absent" where it is not installed),
    kept with the results: two runs on different releases are not comparable."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in MEASURED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "no")


#: The targets a profiled run cannot judge: its full syncs and change capture ran under cProfile (change
#: capture's share is of the full syncs' time).
PROFILED_TARGETS = ("full-20ms", "full-0ms", "incremental-time")


def evaluate_targets(results: list[Result], sizes: list[int], *, profiled: bool = False) -> list[Target]:
    """Every target row, for every size measured (the size-dependent ones) and once for the rest.
    With ``profiled``, the PROFILED_TARGETS keep their figures but are not judged (met "n/a")."""
    targets = _judged_targets(results, sizes)
    if profiled:
        for t in targets:
            if t.key in PROFILED_TARGETS and t.met != "n/a":
                t.met = "n/a"
                t.how = "not judged: the full syncs ran under cProfile" + (f"; {t.how}" if t.how else "")
    return targets


def _incremental_phases(details: dict, *, lake: bool = True) -> str:
    """Where a change capture's time went: its phases, and (with ``lake``) what the lake rewrote."""
    phases = details.get("report", {}).get("phase_seconds", {})
    text = "; " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items()) if phases else ""
    rewrites = details.get("lake_rewrites") if lake else None
    if rewrites:
        text += (f"; {rewrites['partitions']:,} lake files rewritten ({rewrites['rows']:,} rows), "
                 f"{rewrites.get('same_jobs_partitions', 0):,} of them ({rewrites.get('same_jobs_rows', 0):,} rows) "
                 "holding the same jobs as before (the columns their jobs changed spliced into the old file; "
                 f"{rewrites['deletion_partitions']:,} only for jobs deleted there)")
    return text


def _judged_targets(results: list[Result], sizes: list[int]) -> list[Target]:
    targets: list[Target] = []

    def rows(scenario: str, jobs_size: int, latency: float | None = None) -> list[Result]:
        return [r for r in results if r.scenario == scenario and r.details.get("size") == jobs_size
                and (latency is None or r.latency_ms == latency)]

    peak_by_size: dict[int, float] = {}
    for size in sizes:
        label = f"{size:,}"
        for key, latency, limit in (("full-20ms", 20.0, 0.75), ("full-0ms", 0.0, 0.5)):
            full = [r for r in rows("sync+refresh", size, latency) if r.vs_baseline is not None]
            fetch = [r.vs_baseline for r in rows("sync", size, latency) if r.vs_baseline is not None]
            if full:
                ratio = statistics.median(r.vs_baseline for r in full)
                if len(full) == 1:
                    base = rows("baseline", size, latency)[0]
                    measured = f"{ratio:.2f}x ({full[0].jobs_per_s:,.0f} vs {base.jobs_per_s:,.0f} jobs/s)"
                else:
                    measured = (f"{ratio:.2f}x (median of {len(full)}: "
                                f"{', '.join(f'{r.vs_baseline:.2f}' for r in full)})")
                how = "sync+refresh, what `voicejobs sync` runs" + (
                    f"; fetch+write alone {statistics.median(fetch):.2f}x" if fetch else "")
                targets.append(Target(key, TARGETS[key], label, measured, f">= {limit:.2f}x", _met(ratio >= limit),
                                      how, ratio, limit))
            else:
                targets.append(Target(key, TARGETS[key], label, "not measured", f">= {limit:.2f}x", "n/a", "", None, limit))

        fulls = rows("sync+refresh", size)
        if fulls:
            peak = max(r.peak_rss_mb for r in fulls)
            peak_by_size[size] = peak
            fetch_peak = max((r.peak_rss_mb for r in rows("sync", size)), default=0.0)
            targets.append(Target("peak-rss", TARGETS["peak-rss"], label, f"{peak:.0f} MB", "<= 300 MB",
                                  _met(peak <= 300), f"max of the 0 and 20 ms sync+refresh processes, imports "
                                  f"included; {fetch_peak:.0f} MB before the models", peak, 300))
        else:
            targets.append(Target("peak-rss", TARGETS["peak-rss"], label, "not measured", "<= 300 MB", "n/a", ""))

        day = rows("one-day-cli", size)
        if day and day[0].seconds is not None:
            d = day[0].details
            beyond = d["beyond_requests_seconds"]
            targets.append(Target(
                "one-day", TARGETS["one-day"], label,
                f"{beyond:.2f} s (wall {day[0].seconds:.2f} s - requests {d['request_seconds']:.2f} s)", "<= 1.5 s",
                _met(beyond <= 1.5), f"median of {len(d['runs'])} fresh processes, models and snapshot included; "
                "requests = the run's api_wait_seconds, capped at its fetch-and-write phase", beyond, 1.5))
        else:
            why = day[0].note if day else "not measured"
            targets.append(Target("one-day", TARGETS["one-day"], label, why, "<= 1.5 s", "n/a", ""))

        inc = rows("incremental", size)
        if inc:
            r, d = inc[0], inc[0].details
            targets.append(Target(
                "incremental-requests", TARGETS["incremental-requests"], label,
                f"{r.requests:,} vs bound {d['request_bound']:,}", "<= bound", _met(r.requests <= d["request_bound"]),
                f"bound = {math.ceil(d['changed'] / PAGE_SIZE):,} pages for {d['changed']:,} changed + 16 x "
                f"{d['deleted']:,} deleted + {d['creation_days']} creation days", r.requests, d["request_bound"]))
            later = rows("incremental-later", size)
            targets.append(Target(
                "incremental-time", TARGETS["incremental-time"], label,
                f"{d['share_of_full']:.1%} ({r.seconds:.2f} s)", "<= 5%", _met(d["share_of_full"] <= 0.05),
                "both with refresh (models and snapshot), at 0 ms" + _incremental_phases(d)
                + (f"; a later one (the snapshot's spare in place): {later[0].details['share_of_full']:.1%} "
                   f"({later[0].seconds:.2f} s)" + _incremental_phases(later[0].details, lake=False) if later else ""),
                d["share_of_full"], 0.05))
        else:
            for key, limit in (("incremental-requests", "<= bound"), ("incremental-time", "<= 5%")):
                targets.append(Target(key, TARGETS[key], label, "not measured", limit, "n/a", ""))

    measured_sizes = sorted(peak_by_size)
    if len(measured_sizes) >= 2:
        small, large = measured_sizes[0], measured_sizes[-1]
        ratio = peak_by_size[large] / peak_by_size[small]
        flat = ratio <= 1.25
        targets.append(Target(
            "rss-flat", TARGETS["rss-flat"], f"{small:,} -> {large:,}",
            f"{peak_by_size[small]:.0f} MB -> {peak_by_size[large]:.0f} MB = {ratio:.2f}x "
            f"({'flat' if flat else 'grows'})", "<= 1.25x", _met(flat),
            "peak RSS of the sync+refresh processes at the smallest and largest history", ratio, 1.25))
    else:
        targets.append(Target("rss-flat", TARGETS["rss-flat"], ", ".join(f"{s:,}" for s in sizes),
                              "n/a: needs two history sizes (e.g. --sizes 100000,1000000)", "<= 1.25x", "n/a", ""))

    demo = [r for r in results if r.scenario == "demo-cli"]
    if demo and demo[0].seconds is not None:
        r = demo[0]
        targets.append(Target("demo", TARGETS["demo"], f"{r.jobs:,}", f"{r.seconds:.2f} s", "<= 5 s",
                              _met(r.seconds <= 5), f"median of {len(r.details['runs'])}, a fresh directory each",
                              r.seconds, 5))
    else:
        targets.append(Target("demo", TARGETS["demo"], "-", demo[0].note if demo else "not measured", "<= 5 s", "n/a", ""))
    order = list(TARGETS)
    return sorted(targets, key=lambda t: order.index(t.key))  # stable: sizes stay in order


# ---------------------------------------------------------------------------------- output


def _cells(r: Result) -> tuple[str, ...]:
    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return (r.scenario, num(r.jobs, ","), num(r.latency_ms, "g"), num(r.seconds, ".2f"), num(r.jobs_per_s, ",.0f"),
            num(r.vs_baseline, ".2f"), num(r.requests, ","), num(r.retries, "d"), num(r.peak_rss_mb, ".0f"), r.note)


def _target_cells(t: Target) -> tuple[str, ...]:
    return (t.figure, t.jobs, t.measured, t.target, t.met, t.how)


def _text_table(header: tuple[str, ...], rows: list[tuple[str, ...]], left: set[int]) -> str:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(results: list[Result]) -> str:
    return _text_table(COLUMNS, [_cells(r) for r in results], {0, len(COLUMNS) - 1})


def format_targets(targets: list[Target]) -> str:
    return _text_table(TARGET_COLUMNS, [_target_cells(t) for t in targets], {0, 1, 2, 3, 4, 5})


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_markdown(results: list[Result], targets: list[Target], context: str) -> str:
    return "\n\n".join([
        context,
        _md_table(("figure", "jobs", "measured", "target", "met", "how"), [_target_cells(t) for t in targets]),
        _md_table(COLUMNS, [_cells(r) for r in results]),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small history (5,000 jobs): a smoke run")
    parser.add_argument("--sizes", help="comma-separated history sizes (default 100000,1000000)")
    parser.add_argument("--days", type=int, default=SIM_DAYS, help=f"days of history (default {SIM_DAYS})")
    parser.add_argument("--traffic", default=TRAFFIC, choices=("steady", "lumpy"),
                        help=f"shape of the simulated history (default {TRAFFIC}; steady when the simulator "
                             "has no --traffic)")
    parser.add_argument("--day-runs", type=int, default=DAY_RUNS,
                        help=f"runs of the one-day voicejobs sync, median taken (default {DAY_RUNS})")
    parser.add_argument("--full-runs", type=int, default=1,
                        help="baseline and full backfill pairs at each latency, alternated, and runs of each "
                             "change capture from the same warehouse; the targets take the medians (default 1)")
    parser.add_argument("--demo-runs", type=int, default=DEMO_RUNS,
                        help=f"runs of voicejobs demo, median taken (default {DEMO_RUNS})")
    parser.add_argument("--skip", default="", help="comma-separated scenarios to leave out: dlt, rate-cap, "
                                                   "one-day, demo")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for JSON and Markdown")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile every full sync and the change capture into the results dir")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args.child)
    if args.full_runs < 1:
        parser.error(f"--full-runs must be 1 or more, not {args.full_runs}")

    # A terminated run still stops its simulator and the step in flight (finally blocks run).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([5_000] if args.quick else [100_000, 1_000_000])
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    latencies = [0.0, 20.0]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    traffic: str | None = args.traffic
    traffic_note = f"traffic {args.traffic}"
    if not simulator_has_traffic():
        traffic, traffic_note = None, f"traffic steady (this simulator has no --traffic; {args.traffic} was asked)"
    checkout = _checkout()
    cpu_reference = cpu_reference_seconds()
    context = run_context(checkout, traffic_note, args.days, sizes, cpu_reference, profiled=args.profile)
    print(context, flush=True)
    packages = package_versions()
    print("packages: " + ", ".join(f"{name} {version}" for name, version in packages.items()), flush=True)
    results: list[Result] = []

    def echo(result: Result, into: list[Result], size: int | None = None) -> None:
        if size is not None:
            result.details["size"] = size
        into.append(result)
        c = _cells(result)
        print(f"  {c[0]:<13} {c[1]:>10} jobs  {c[2]:>4} ms  {c[3]:>8} s  {c[4]:>9}/s  x{c[5]:<5} "
              f"rss {c[8]:>4} MB  {result.note}", flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="voicejobs-bench-") as tmp:
        for jobs in sizes:
            print(f"history of {jobs:,} jobs", flush=True)
            profile_dir = out_dir / f"profile-{stamp}" if args.profile else None
            if profile_dir:
                profile_dir.mkdir(parents=True, exist_ok=True)
            bench_size(jobs, args.days, traffic, latencies, Path(tmp), results,
                       lambda r, into, size=jobs: echo(r, into, size),
                       skip=skip, day_runs=args.day_runs, profile_dir=profile_dir, full_runs=args.full_runs)
        print("voicejobs demo", flush=True)
        if "demo" in skip:
            echo(_not_run("demo-cli", "skipped (--skip)"), results)
        else:
            echo(bench_demo(args.demo_runs, Path(tmp)), results)
    total = time.perf_counter() - started
    targets = evaluate_targets(results, sizes, profiled=args.profile)

    print()
    print(format_table(results))
    print()
    print(format_targets(targets))
    # The machine's speed can drift during a run of many minutes (other work on its host): the
    # reference again at the end shows how far.
    cpu_reference_end = cpu_reference_seconds()
    print(f"\nsuite took {total:.0f}s on {os.cpu_count()} cores; CPU reference {cpu_reference:.2f} s at the start, "
          f"{cpu_reference_end:.2f} s at the end")
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps({
        "started": stamp, "suite_seconds": round(total, 1), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "machine": platform.machine(), "checkout": checkout,
        "cpu_reference_seconds": cpu_reference, "cpu_reference_end_seconds": cpu_reference_end,  # rounded as measured
        "profiled": args.profile,
        "traffic": traffic or "steady", "packages": packages,
        "days": args.days, "sizes": sizes, "columns": list(COLUMNS), "target_columns": list(TARGET_COLUMNS),
        "results": [asdict(r) for r in results], "targets": [asdict(t) for t in targets],
    }, indent=2))
    md = out_dir / f"{stamp}.md"
    md.write_text(format_markdown(results, targets, context + f"; suite {total:.0f} s, CPU reference "
                                                              f"{cpu_reference_end:.2f} s at its end"))
    print(f"results: {path}\nmarkdown: {md}")
    print()
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
