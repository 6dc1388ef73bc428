"""The client's HTTP transports, timed on the same page requests to the simulator.

    .venv/bin/python benchmarks/transport.py                 # 100,000 lumpy jobs, 3 rounds
    .venv/bin/python benchmarks/transport.py --jobs 5000 --rounds 1

The simulator runs in its own process (``benchmarks/run.py``'s, lumpy traffic over 400 days).
Each candidate, in a fresh process, asks for the first page of every creation day ``--repeat``
times, eight requests in flight, AK/SK-signed, and decodes each body with orjson:

* ``httpx``           httpx's own transport (httpcore's pool, h11, anyio): what the benchmark's
  transport baseline (``benchmarks/run.py``) uses;
* ``httpx+httptools`` the same httpx client on :class:`~pipelines.metastudio.transport.HttptoolsTransport`,
  what a sync uses.

Printed per candidate: the CPU time of its process per request (signing and JSON decoding
included) and its wall time, medians of ``--rounds`` rounds that alternate the candidates.
The simulator shares the machine, as in ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.run import (  # noqa: E402
    AK,
    PROJECT,
    SK,
    Simulator,
    _first_day,
    _list_url,
    _page_query,
    _sim_now,
    run_child,
)

CANDIDATES = ("httpx", "httpx+httptools")
IN_FLIGHT = 8


def _requests(url: str, candidate: str, repeat: int, days: int) -> dict:
    """One candidate's requests, in this process: requests, jobs, CPU and wall seconds."""
    import httpx
    import orjson

    from pipelines.metastudio.auth import AKSKAuth
    from pipelines.metastudio.paging import day_windows
    from pipelines.metastudio.transport import HttptoolsTransport

    base = _list_url(url)
    urls = [f"{base}?{_page_query(w, 0)}" for w in day_windows(_first_day(days), _sim_now().date())] * repeat
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    transport = HttptoolsTransport(verify=False, limits=limits) if candidate == "httpx+httptools" else None

    async def main() -> int:
        async with httpx.AsyncClient(auth=AKSKAuth(AK, SK), limits=limits, timeout=60, transport=transport,
                                     headers={"Accept": "application/json"}) as http:
            slots = asyncio.Semaphore(IN_FLIGHT)

            async def one(page_url: str) -> int:
                async with slots, http.stream("GET", page_url, headers={"X-Project-Id": PROJECT}) as response:
                    response.raise_for_status()
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                return len(orjson.loads(body)["jobs"])

            return sum(await asyncio.gather(*(one(u) for u in urls)))

    cpu, wall = time.process_time(), time.perf_counter()
    jobs = asyncio.run(main())
    return {"requests": len(urls), "jobs": jobs, "cpu": time.process_time() - cpu,
            "wall": time.perf_counter() - wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=4, help="requests per creation day (default 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(_requests(spec["url"], spec["candidate"], spec["repeat"], spec["days"])))
        return 0
    results: dict[str, list[dict]] = {name: [] for name in CANDIDATES}
    sim = Simulator(args.jobs, args.days, "lumpy")
    try:
        for _ in range(args.rounds):
            for name in CANDIDATES:
                spec = {"url": sim.url, "candidate": name, "repeat": args.repeat, "days": args.days}
                results[name].append(run_child(Path(__file__), spec))
    finally:
        sim.close()
    first = results[CANDIDATES[0]][0]
    print(f"{first['requests']:,} requests, {IN_FLIGHT} in flight, median of {args.rounds}")
    for name, runs in results.items():
        per_request = statistics.median(r["cpu"] / r["requests"] * 1000 for r in runs)
        wall = statistics.median(r["wall"] for r in runs)
        print(f"  {name:<15} {per_request:6.3f} ms CPU/request  {wall:6.2f} s wall  {runs[0]['jobs']:,} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
