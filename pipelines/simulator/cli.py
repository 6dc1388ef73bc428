"""Command line for the simulator: serve until SIGINT or SIGTERM.

The start banner goes to stdout; its first line is ``MetaStudio simulator listening on <url>``
and one line reads ``  admin token: <token>``, the per-process token that admin calls changing
state must send in ``X-Sim-Admin-Token`` (scripts that start the simulator read it from there;
it is never taken from the command line, where other local users could read it in the process
list). Bound to anything but a loopback address, a warning goes to stderr first.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import time
from datetime import UTC, datetime

from .config import FAULT_KINDS, TRAFFIC_KINDS, SimulatorConfig
from .server import ADMIN_TOKEN_HEADER, SimulatorServer

ADMIN_TOKEN_PREFIX = "  admin token: "
_STOP_POLL_SECONDS = 0.05


class _StopRequest:
    """The SIGINT and SIGTERM handler: it only sets a flag, which the main thread polls.

    A handler runs in the main thread between two of its bytecodes, wherever it is, so it must
    take no lock. ``threading.Event.set`` takes the event's lock, and deadlocks when the signal
    lands while the main thread holds that same lock inside ``Event.wait``."""

    requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True


def _parse_now(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("--now needs a time zone, e.g. 2026-01-01T00:00:00Z")
    return moment.astimezone(UTC)


def is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine: ``localhost`` or a loopback IP address."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name that may resolve to any interface


def exposure_warning(host: str) -> str | None:
    """The warning printed when the simulator listens beyond loopback, else None."""
    if is_loopback(host):
        return None
    return (
        f"WARNING: the simulator listens on {host}, not on loopback only. Its credentials are "
        "published (see `voicejobs simulator --help`): anyone who can reach this port can read "
        "the simulated data with them. Use --host 127.0.0.1 unless other machines must connect."
    )


def _epilog() -> str:
    defaults = SimulatorConfig()
    lines = ["credentials it accepts (fixed, published: the simulator holds no real data):"]
    lines += [f"  IAM token        X-Auth-Token: {token}" for token in sorted(defaults.tokens)]
    lines += [f"  AK/SK            {ak} / {sk}" for ak, sk in defaults.credentials.items()]
    lines += [
        f"  temporary AK/SK  {ak} / {sk}, X-Security-Token: {security_token}"
        for ak, (sk, security_token) in defaults.temporary_credentials.items()
    ]
    lines += [
        f"  expired token    {token} (answers 401 APIGW.0307)" for token in sorted(defaults.expired_tokens)
    ]
    lines += [
        f"  project ids      {','.join(defaults.projects)} (change with --projects)",
        "",
        "admin endpoints (loopback clients only, not counted in stats):",
        "  GET  /_sim/truth[?project_id=P]    the jobs the API currently lists",
        "  GET  /_sim/stats                   requests by status, faults by kind",
        "  POST /_sim/advance?seconds=N[&seed_step=K]   move the simulated clock",
        '  POST /_sim/config {"latency_ms": .., "fault_rate": .., "faults": [..], "rate_limit": ..,',
        '                    "stall_seconds": .., "hostile_paging": .., "quirks": [..]}',
        "  The POST calls need Content-Type: application/json (else 415) and the admin token",
        f"  printed at start ('admin token: ...') in the {ADMIN_TOKEN_HEADER} header (else 403),",
        "  e.g.",
        f"    curl -X POST -H 'Content-Type: application/json' -H '{ADMIN_TOKEN_HEADER}: <token>' \\",
        "         -d '{}' 'http://127.0.0.1:<port>/_sim/advance?seconds=3600'",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicejobs simulator",
        description="Serve a simulated MetaStudio voice-training job listing (on loopback by default).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1); on any other, whoever reaches the port can "
        "read the simulated data with the published credentials below",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free port)")
    _add_history_arguments(parser)
    _add_behaviour_arguments(parser)
    return parser


def _add_history_arguments(parser: argparse.ArgumentParser) -> None:
    """What is generated at start: how many jobs, from which seed, over which days."""
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs generated at start (default 20000)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated history (default 7)")
    parser.add_argument(
        "--projects", default="sim-project", help="comma-separated project ids (default sim-project)"
    )
    parser.add_argument(
        "--days",
        type=int,
        default=365,
        help="days of history the jobs are spread over, ending now (default 365)",
    )
    parser.add_argument(
        "--traffic",
        choices=TRAFFIC_KINDS,
        default="steady",
        help="shape of the generated history: steady (weekly rhythm, growth, daytime peak) or lumpy "
        "(about 4 burst days a year at ~20x a usual day, ~2%% empty days, most jobs created "
        "09:00-18:00 Beijing time on weekdays); same --jobs either way (default steady)",
    )
    parser.add_argument(
        "--now",
        type=_parse_now,
        default=None,
        help="simulated now, ISO 8601 with zone, e.g. 2026-01-01T00:00:00Z (default: the real time)",
    )


def _add_behaviour_arguments(parser: argparse.ArgumentParser) -> None:
    """How the API behaves (latency, faults, rate limit, hostile paging: all changeable at run time
    through /_sim/config) and whether every job is serialized before listening."""
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added to every API request, in ms (default 0)"
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="probability 0..1 that a list request gets a fault drawn from --faults (default 0)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        help="requests per second admitted, the excess answered 429 with Retry-After (default: no limit)",
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated fault kinds out of {','.join(FAULT_KINDS)} (default all)",
    )
    parser.add_argument(
        "--stall-seconds", type=float, default=35.0, help="how long a 'stall' fault sleeps (default 35)"
    )
    parser.add_argument(
        "--hostile-paging",
        action="store_true",
        help="delete and back-date one job inside the requested window before every later or windowed page",
    )
    parser.add_argument(
        "--warm", action="store_true", help="serialize every job before listening (benchmarks)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = SimulatorConfig(
            jobs=args.jobs,
            seed=args.seed,
            projects=tuple(p.strip() for p in args.projects.split(",") if p.strip()),
            days=args.days,
            traffic=args.traffic,
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
    stop = _StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    ak, sk = next(iter(config.credentials.items()))
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"MetaStudio simulator listening on {server.url}")
    print(
        f"  projects: {','.join(config.projects)}   jobs: {len(server.state)}   now: {server.state.now.isoformat()}"
    )
    print(f"  token:    X-Auth-Token {next(iter(config.tokens))}")
    print(f"  AK/SK:    {ak} / {sk}")
    print(f"  admin:    POST {server.url}/_sim/advance?seconds=3600   GET {server.url}/_sim/truth")
    print(f"            POSTs need Content-Type: application/json and this token in {ADMIN_TOKEN_HEADER}:")
    print(f"{ADMIN_TOKEN_PREFIX}{server.admin_token}")
    sys.stdout.flush()
    try:
        while not stop.requested:
            time.sleep(_STOP_POLL_SECONDS)
    finally:
        server.stop()
    return 0
