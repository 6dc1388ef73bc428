"""From page bytes to Arrow: the candidates for the listing's decoding, timed on the same pages.

    .venv/bin/python benchmarks/parse.py                     # 20,000 jobs over 60 lumpy days
    .venv/bin/python benchmarks/parse.py --jobs 5000 --runs 3

Pages are fetched once from the project's simulator (lumpy traffic, so about 2% of the records
carry keys the schema does not know, as served jobs do), then each candidate turns the same
bodies into records, timed per job (median of ``--runs``):

* ``orjson dicts``         ``orjson.loads`` of every body: the decoding paging needs (each job's
  key, update time and creation time) and what the sync does today;
* ``msgspec dicts``        ``msgspec.json.decode`` of every body, the same dicts (when installed);
* ``msgspec keys only``    ``msgspec`` decoding only what paging reads (job_id, create_time,
  lastupdate_time) into Structs, the rest skipped;
* ``msgspec job spans``    ``msgspec`` splitting each page into its jobs' bytes as they came
  (``msgspec.Raw``), none decoded: what a way from the bytes would decode one job at a time
  when the job carries keys the schema does not know;
* ``pa.array``             today's conversion of the decoded records of a normalization group
  (NORMALIZE_ROWS of them) to the wire's Arrow type (``WIRE_TYPE``);
* ``normalize``            today's whole normalization of those records (``normalize_windows``);
* ``pyarrow.json``         the bodies joined one per line and parsed in C with the page's Arrow
  schema (``PAGE_SCHEMA``: every documented field typed, unknown keys inferred), the jobs then
  cast to ``WIRE_TYPE``: the same rows as ``pa.array`` (checked), without the GIL;
* ``sync, from the bytes``  what a sync does: each page split into its jobs' bytes with paging's
  fields read (``wire_jobs``), then each group normalized from those bytes (``normalize_windows``
  takes them to ``pipelines/ingest/wire.py``: ``pyarrow.json``, the rules, and the jobs carrying
  unknown keys decoded for ``extra``);
* ``duckdb read_json``     the same joined bodies through DuckDB's JSON reader, types detected,
  to Arrow (not exact: its detected types are not the wire's; timed for comparison).

Whether a candidate pays inside a sync is another question: the sync decodes each page once
for paging anyway, so a parse from the bytes is work added to the decoding unless it replaces
it (benchmarks/README.md, "Decoding a page", says what was measured in the sync itself).
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.json as pajson  # noqa: E402

from benchmarks.run import AK, PAGE_SIZE, PROJECT, SK, _list_url, _page_query  # noqa: E402
from pipelines.ingest import normalize_windows  # noqa: E402
from pipelines.ingest.arrow import WIRE_TYPE  # noqa: E402
from pipelines.ingest.finish import unknown_keys  # noqa: E402
from pipelines.metastudio.auth import AKSKAuth  # noqa: E402
from pipelines.metastudio.paging import day_windows  # noqa: E402
from pipelines.metastudio.wire import wire_jobs  # noqa: E402
from pipelines.simulator import SimulatorConfig, SimulatorServer  # noqa: E402
from pipelines.sync.buffer import NORMALIZE_ROWS  # noqa: E402
from pipelines.sync.run import SYNC_GC_THRESHOLDS  # noqa: E402

SIM_NOW = datetime(2026, 1, 1, tzinfo=UTC)
#: A page as the wire carries it: every documented field typed, a key it does not name inferred.
PAGE_SCHEMA = pa.schema([pa.field("count", pa.int64()), pa.field("jobs", pa.list_(WIRE_TYPE))])

try:  # not a dependency of the project: timed when installed
    import msgspec
except ImportError:
    msgspec = None
else:
    class _Job(msgspec.Struct):
        """What paging reads of a job."""

        job_id: str | None = None
        create_time: int | None = None
        lastupdate_time: int | None = None

    class _Listing(msgspec.Struct):
        count: int
        jobs: list[_Job]

    class _Spans(msgspec.Struct):
        count: int
        jobs: list[msgspec.Raw]


def fetch_pages(jobs: int, days: int) -> list[bytes]:
    """The bodies of every page of every creation day of a lumpy simulated history."""
    config = SimulatorConfig(jobs=jobs, seed=7, days=days, now=SIM_NOW, traffic="lumpy", projects=(PROJECT,),
                             credentials={AK: SK})
    bodies: list[bytes] = []
    with SimulatorServer(config) as server, httpx.Client(auth=AKSKAuth(AK, SK), timeout=60) as http:
        url = _list_url(server.url)
        first_day = (SIM_NOW - timedelta(days=days + 1)).date()
        for window in day_windows(first_day, SIM_NOW.date()):
            offset, count = 0, 1
            while offset < count:
                response = http.get(f"{url}?{_page_query(window, offset)}", headers={"X-Project-Id": PROJECT})
                response.raise_for_status()
                count = orjson.loads(response.content)["count"]
                if count:
                    bodies.append(response.content)
                offset += PAGE_SIZE
    return bodies


def groups_of(bodies: list[bytes]) -> list[list[bytes]]:
    """The bodies in groups of about NORMALIZE_ROWS jobs, as a sync normalizes them."""
    groups: list[list[bytes]] = [[]]
    rows = 0
    for body in bodies:
        groups[-1].append(body)
        rows += len(orjson.loads(body)["jobs"])
        if rows >= NORMALIZE_ROWS:
            groups.append([])
            rows = 0
    return [g for g in groups if g]


def per_job(run: Callable[[], object], jobs: int, runs: int) -> float:
    """Median microseconds per job of ``run`` over ``runs`` calls, with the garbage collector
    set as a sync sets it (decoded JSON makes many objects and no cycles)."""
    seconds = []
    before = gc.get_threshold()
    gc.set_threshold(*SYNC_GC_THRESHOLDS)
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    gc.set_threshold(*before)
    return statistics.median(seconds) / jobs * 1e6


def with_unknown_keys(bodies: list[bytes]) -> list[list[bool]]:
    """Per page, per job: whether it carries keys the schema does not know (its values go to
    ``extra``, by the rule the sync applies)."""
    return [[unknown_keys(job) is not None for job in orjson.loads(body)["jobs"]] for body in bodies]


def candidates(bodies: list[bytes]) -> dict[str, tuple[Callable[[], object], str]]:
    """Each candidate's call over all bodies, with a note on its exactness."""
    groups = groups_of(bodies)
    decoded = [[orjson.loads(b)["jobs"] for b in group] for group in groups]
    records = [[job for page in group for job in page] for group in decoded]
    synced_at = datetime.now(UTC)
    parse = pajson.ParseOptions(explicit_schema=PAGE_SCHEMA, unexpected_field_behavior="infer")
    read = pajson.ReadOptions(use_threads=True, block_size=1 << 19)
    joined = [b"\n".join(group) for group in groups]

    def by_pyarrow_json() -> list[pa.Array]:
        return [pajson.read_json(pa.BufferReader(text), read_options=read, parse_options=parse)["jobs"]
                .combine_chunks().flatten().cast(WIRE_TYPE) for text in joined]

    exact = all(parsed.equals(pa.array(group, type=WIRE_TYPE))
                for parsed, group in zip(by_pyarrow_json(), records, strict=True))
    out: dict[str, tuple[Callable[[], object], str]] = {
        "orjson dicts": (lambda: [orjson.loads(b) for b in bodies], "what paging reads"),
    }
    if msgspec is not None:
        keys = msgspec.json.Decoder(_Listing)
        out["msgspec dicts"] = (lambda: [msgspec.json.decode(b) for b in bodies],
                                "same dicts; integers past 64 bits stay integers (orjson: floats)")
        out["msgspec keys only"] = (lambda: [keys.decode(b) for b in bodies],
                                    "paging's fields only; a value of another type raises")
        spans = msgspec.json.Decoder(_Spans)
        out["msgspec job spans"] = (lambda: [spans.decode(b) for b in bodies],
                                    "each job's bytes as they came, none decoded")
    out["pa.array"] = (lambda: [pa.array(group, type=WIRE_TYPE) for group in records],
                       "today's conversion, from the decoded records")
    out["normalize"] = (lambda: [normalize_windows(group, PROJECT, synced_at) for group in decoded],
                        "today's whole normalization, from the decoded records")
    out["pyarrow.json"] = (by_pyarrow_json, "equal to pa.array" if exact else "NOT equal to pa.array")

    def from_the_bytes() -> list:
        wired = [[job for body in group for job in wire_jobs(body)[1]] for group in groups]
        return [normalize_windows([group], PROJECT, synced_at)[0] for group in wired]

    same = all(fast.table.equals(slow.table) for fast, slow in zip(
        from_the_bytes(), [normalize_windows([group], PROJECT, synced_at)[0] for group in records], strict=True))
    out["sync, from the bytes"] = (from_the_bytes, "the same rows as normalize" if same else "NOT the rows of normalize")
    try:
        import duckdb

        con = duckdb.connect()
        out["duckdb read_json"] = (lambda: [con.read_json(io.BytesIO(text)).to_arrow_table() for text in joined],
                                   "types detected, not the wire's")
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    bodies = fetch_pages(args.jobs, args.days)
    flags = with_unknown_keys(bodies)
    jobs = sum(len(page) for page in flags)
    size = sum(len(b) for b in bodies)
    unknown, pages = sum(sum(page) for page in flags), sum(any(page) for page in flags)
    print(f"{len(bodies):,} pages, {jobs:,} jobs, {size / jobs:,.0f} bytes a job; median of {args.runs} runs; "
          f"{unknown:,} jobs ({unknown / jobs:.1%}) carry keys the schema does not know, on {pages:,} pages "
          f"({pages / len(bodies):.0%})")
    rows = [(name, per_job(run, jobs, args.runs), note) for name, (run, note) in candidates(bodies).items()]
    width = max(len(name) for name, *_ in rows)
    for name, micros, note in rows:
        print(f"{name:<{width}}  {micros:7.2f} us/job  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
