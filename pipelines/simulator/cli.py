"""Command line for the simulator: serve until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime

from .config import FAULT_KINDS, SimulatorConfig
from .server import SimulatorServer


def _parse_now(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("--now needs a time zone, e.g. 2026-01-01T00:00:00Z")
    return moment.astimezone(UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.simulator",
        description="Serve a simulated MetaStudio voice-training job listing on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--projects", default="sim-project", help="comma-separated project ids")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--now", type=_parse_now, default=None, help="simulated now, ISO 8601 with zone")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated fault kinds out of {','.join(FAULT_KINDS)}",
    )
    parser.add_argument("--stall-seconds", type=float, default=35.0, help="how long a 'stall' fault sleeps")
    parser.add_argument("--hostile-paging", action="store_true")
    parser.add_argument(
        "--warm", action="store_true", help="serialize every job before listening (benchmarks)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = SimulatorConfig(
            jobs=args.jobs,
            seed=args.seed,
            projects=tuple(p.strip() for p in args.projects.split(",") if p.strip()),
            days=args.days,
            now=args.now,
            latency_ms=args.latency_ms,
            fault_rate=args.fault_rate,
            rate_limit=args.rate_limit,
            faults=tuple(k.strip() for k in args.faults.split(",") if k.strip()),
            stall_seconds=args.stall_seconds,
            hostile_paging=args.hostile_paging,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = SimulatorServer(config, host=args.host, port=args.port)
    if args.warm:
        server.state.warm()
    server.start()
    stop = threading.Event()

    def _stop(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    ak, sk = next(iter(config.credentials.items()))
    print(f"MetaStudio simulator listening on {server.url}")
    print(
        f"  projects: {','.join(config.projects)}   jobs: {len(server.state)}   now: {server.state.now.isoformat()}"
    )
    print(f"  token:    X-Auth-Token {next(iter(config.tokens))}")
    print(f"  AK/SK:    {ak} / {sk}")
    print(f"  admin:    POST {server.url}/_sim/advance?seconds=3600   GET {server.url}/_sim/truth")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0
