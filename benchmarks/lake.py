"""Lake upload: the whole lake of a warehouse of N jobs written locally and to an S3 server.

    .venv/bin/python benchmarks/lake.py                       # 100,000 jobs, median of 3 runs
    .venv/bin/python benchmarks/lake.py --jobs 5000 --runs 1  # seconds

A warehouse is filled once by a sync from the project's simulator (``--days`` creation days,
``--projects`` projects: one lake file per day and project). Then ``rebuild_lake()`` marks
every partition dirty and exports the lake from the table, timed, into:

* ``none``   nowhere: each file is encoded and dropped, so this is the export's own cost (the
  DuckDB queries and the Parquet encoding) and the rows below minus it are the writing;
* ``local``  ``<data dir>/lake`` (temporary file, fsync, rename per file), emptied before each run;
* ``s3``     ``s3://bench/run-<i>`` on moto's S3 server, started as its own process on a free
  loopback port (one PutObject per file), a fresh prefix per run.

The S3 server is moto, an in-memory Python implementation, on the same two cores: its
per-request cost is not a real store's, so the figure bounds the lake's own overhead (encoding,
requests in flight, waiting) more than it predicts OBS or S3 over a network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402

from pipelines.settings import ObjectStoreAccess, Settings  # noqa: E402
from pipelines.simulator import SimulatorConfig, SimulatorServer  # noqa: E402
from pipelines.sync import sync  # noqa: E402
from pipelines.warehouse import LocalLakeStore, Warehouse  # noqa: E402
from pipelines.warehouse.lakestore import encode_parquet  # noqa: E402

SIM_NOW = datetime(2026, 1, 1, tzinfo=UTC)
BUCKET = "bench"
KEY_ID, SECRET = "benchmark-key-id", "benchmark-secret-key"


def fill(data_dir: Path, jobs: int, days: int, projects: int) -> int:
    """A warehouse of ``jobs`` simulated jobs (synced with the local lake); returns its row count."""
    ids = tuple(f"{i:032x}" for i in range(1, projects + 1))
    config = SimulatorConfig(jobs=jobs, seed=7, days=days, projects=ids, now=SIM_NOW)
    with SimulatorServer(config) as server:
        ak, sk = next(iter(config.credentials.items()))
        settings = Settings(endpoint=server.url, ak=ak, sk=sk, project_ids=ids, data_dir=data_dir,
                            first_day=(SIM_NOW - timedelta(days=days + 1)).date(), safety_lag_seconds=0,
                            max_clock_skew_seconds=0)
        report = sync(settings, mode="days", since=settings.first_day, until=SIM_NOW.date(),
                      warehouse=Warehouse(data_dir))
    return report.rows_written


class MotoServer:
    """moto's S3 server as its own process on a free loopback port, with one bucket."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.access = ObjectStoreAccess(access_key_id=KEY_ID, secret_access_key=SECRET, region="us-east-1",
                                        endpoint_url=f"http://127.0.0.1:{self.port}")
        self._wait_and_create_bucket()

    def _wait_and_create_bucket(self) -> None:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(access_key=KEY_ID, secret_key=SECRET, region="us-east-1", scheme="http",
                               endpoint_override=f"127.0.0.1:{self.port}", allow_bucket_creation=True)
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError("moto's server did not start (is moto[server] installed? pip install -e .[test])")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)  # waiting for a process to listen; nothing is measured here
        fs.create_dir(BUCKET)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class EncodeOnly(LocalLakeStore):
    """A lake that encodes every file and keeps none: the export without its writes."""

    def write(self, key: str, table: pa.Table) -> None:
        encode_parquet(table, pa.BufferOutputStream())

    def remove(self, key: str) -> None:
        pass


def lake_bytes(wh: Warehouse) -> int:
    import pyarrow.fs as pafs

    if isinstance(wh.lake, EncodeOnly):
        return 0
    if wh.lake_dir is not None:
        return sum(p.stat().st_size for p in wh.lake_dir.rglob("*.parquet"))
    infos = wh.lake.filesystem.get_file_info(pafs.FileSelector(wh.lake.base, recursive=True))
    return sum(i.size for i in infos if i.type == pafs.FileType.File)


def measure(data_dir: Path, runs: int, lake_uri_of_run, access: ObjectStoreAccess | None,
            encode_only: bool = False) -> dict:
    seconds, files, size = [], 0, 0
    for i in range(runs):
        wh = Warehouse(data_dir, lake_uri=lake_uri_of_run(i), object_store=access)
        if encode_only:
            wh.lake.__class__ = EncodeOnly
        elif wh.lake_dir is not None:  # a fresh local lake, as the S3 runs get a fresh prefix
            shutil.rmtree(wh.lake_dir)
            wh.lake_dir.mkdir(parents=True)
        started = time.perf_counter()
        files = wh.rebuild_lake()
        seconds.append(time.perf_counter() - started)
        size = lake_bytes(wh)
    return {"seconds": seconds, "median": statistics.median(seconds), "files": files, "bytes": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--projects", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lake-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        print(f"filling a warehouse with {args.jobs:,} simulated jobs "
              f"({args.projects} projects x {args.days} days) ...", flush=True)
        rows = fill(data_dir, args.jobs, args.days, args.projects)
        results = {"none": measure(data_dir, args.runs, lambda i: None, None, encode_only=True),
                   "local": measure(data_dir, args.runs, lambda i: None, None)}
        moto = MotoServer()
        try:
            results["s3"] = measure(data_dir, args.runs, lambda i: f"s3://{BUCKET}/run-{i}", moto.access)
        finally:
            moto.stop()

    print(f"\nrebuild_lake() of {rows:,} jobs, {args.runs} run(s) each, {os.cpu_count()} cores")
    print(f"{'lake':<6} {'files':>6} {'MB':>7} {'median s':>9} {'writing s':>10}  runs (s)")
    export = results["none"]["median"]
    for name, r in results.items():
        runs = ", ".join(f"{s:.2f}" for s in r["seconds"])
        writing = "-" if name == "none" else f"{r['median'] - export:.2f}"
        print(f"{name:<6} {r['files']:>6} {r['bytes'] / 1e6:>7.1f} {r['median']:>9.2f} {writing:>10}  {runs}")
    print(f"s3 / local: {results['s3']['median'] / results['local']['median']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
