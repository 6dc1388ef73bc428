"""``voicejobs``: demo, sync, reconcile, simulator, query, report, publish.

Runs the same code as the Dagster assets (:mod:`pipelines.sync`). Expected
failures (configuration, credentials, unreachable endpoint, a data directory
that cannot be written, a full disk) print one line naming the cause and the
fix and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import shlex
import sys
import time
from datetime import timedelta
from pathlib import Path

from pipelines.redact import install_log_redaction, redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _progress_printer(stream=None, clock=time.monotonic):
    """A progress callback drawing one line on a terminal; silent when not a terminal."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    last = [-1.0, ""]

    def show(progress) -> None:
        now = clock()
        fetching = progress.phase == "fetching windows"
        if progress.retrying:
            # One line that updates while retrying; the verdict follows if the retries run out.
            stream.write(f"\r\033[K  {progress.retrying}")
            stream.flush()
            last[0] = now
            return
        if fetching and now - last[0] < 0.2 and progress.windows_done < progress.windows_total:
            return
        if not fetching:
            if last[1] == "fetching windows":
                stream.write("\n")
            stream.write(f"  {progress.phase} ... ({_clock(progress.elapsed)} elapsed)\n")
            stream.flush()
            last[1] = progress.phase
            return
        last[0], last[1] = now, progress.phase
        eta = progress.eta_seconds
        stream.write(
            f"\r\033[K  windows {progress.windows_done}/{progress.windows_total} ({progress.fraction:.0%})  "
            f"jobs {progress.jobs:,}  {progress.rate:,.0f} jobs/s  elapsed {_clock(progress.elapsed)}"
            + (f"  eta {_clock(eta)}" if eta is not None else "") + "   "
        )
        stream.flush()

    return show


def _settings(args):
    from pipelines.settings import Settings

    data_dir = getattr(args, "data_dir", None)
    return Settings.from_env(data_dir=Path(data_dir) if data_dir else None)


def _day_flag(text: str | None, flag: str):
    """A --since/--until value; a bad one is a usage error (exit 2), like any bad flag."""
    from pipelines.metastudio.errors import ConfigurationError
    from pipelines.settings import parse_day

    if text is None:
        return None
    try:
        return parse_day(text, flag)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


def _cmd_sync(args) -> int:
    from pipelines.source import open_source
    from pipelines.sync import sync
    from pipelines.warehouse import Warehouse

    since, until = (_day_flag(args.since, "--since"), _day_flag(args.until, "--until"))
    if (since is None) != (until is None):
        raise UsageError("give both --since and --until (creation days), or neither for change capture")
    if since and until and until < since:
        raise UsageError(f"--until {until} is before --since {since}; swap them")
    mode = args.mode if since else "incremental"
    settings = _settings(args)
    warehouse = Warehouse.for_settings(settings)
    with open_source(settings, simulator=args.simulator) as source:
        report = sync(source.settings, mode=mode, since=since, until=until, warehouse=warehouse,
                      progress=_progress_printer(), refresh=True, full_refresh=args.full_refresh)
    print(report.summary())
    print(f"warehouse: {warehouse.db_path}\nserving snapshot: {warehouse.serving_path}")
    _tell_dagster(report, warehouse)
    return EXIT_OK


def _tell_dagster(report, warehouse) -> None:
    """With DAGSTER_HOME set, record the run as materializations of the assets it built."""
    if not os.environ.get("DAGSTER_HOME"):
        return
    from assets.cli_runs import report_cli_run

    try:
        count = report_cli_run(report, serving_path=str(warehouse.serving_path))
    except Exception as exc:  # the warehouse is complete; only the instance's record is missing
        print(f"voicejobs: the run is done, but recording it in the Dagster instance at "
              f"{os.environ['DAGSTER_HOME']} failed ({redact(exc)})", file=sys.stderr)
        return
    print(f"recorded as {count} asset materializations in the Dagster instance at {os.environ['DAGSTER_HOME']}")


#: Where `voicejobs demo` writes unless --data-dir says otherwise: never the real syncs' ./data.
DEMO_DATA_DIR = Path("demo-data")


def _self_command() -> str:
    """How to run this program again from the current directory, as the user started it."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if Path(argv0).name == "voicejobs":
        path = Path(argv0)
        if path.is_absolute():
            with contextlib.suppress(ValueError):
                path = path.relative_to(Path.cwd())
        return shlex.quote(str(path))
    return f"{shlex.quote(sys.executable)} -m pipelines.cli"


def _cmd_demo(args) -> int:
    from pipelines.simulator import SimulatorConfig
    from pipelines.simulator.process import SimulatorProcess

    data_dir = Path(args.data_dir) if args.data_dir else DEMO_DATA_DIR
    settings = _settings(args).with_(data_dir=data_dir)
    config = SimulatorConfig(jobs=args.jobs, seed=args.seed)
    print(f"Starting the embedded MetaStudio simulator with {args.jobs:,} jobs (simulated data) ...", flush=True)
    # In a process of its own, the simulator answers on the other core instead of waiting for
    # the sync's turn at the interpreter lock; it starts while this process loads the sync.
    server = SimulatorProcess(config, warm=True).spawn()
    try:
        from pipelines.source import simulator_settings
        from pipelines.sync import sync
        from pipelines.warehouse import Warehouse

        server.wait_ready()
        print(f"  listening on {server.url} (AK/SK signing, as the real API)", flush=True)
        sim_settings = simulator_settings(settings, server)
        now = server.state.now
        since = (now - timedelta(days=config.days)).date()
        warehouse = Warehouse(data_dir)
        report = sync(sim_settings.with_(safety_lag_seconds=0), mode="days", since=since, until=now.date(),
                      warehouse=warehouse, progress=_progress_printer(), refresh=True)
    finally:
        server.stop()
    print(report.summary())
    _tell_dagster(report, warehouse)
    me = _self_command()
    where = "" if data_dir == Path(os.environ.get("VOICEJOBS_DATA_DIR", "").strip() or "data") else (
        f" --data-dir {shlex.quote(str(data_dir))}")
    print(
        f"\nLoaded {report.rows_written:,} simulated jobs into:\n"
        f"  DuckDB warehouse   {warehouse.db_path}\n"
        f"  serving snapshot   {warehouse.serving_path}  (open this one from BI tools)\n"
        f"  Parquet lake       {warehouse.lake_dir}\n\n"
        "Try:\n"
        f'  {me} query{where} "select * from failure_rate_by_tag"\n'
        f'  {me} query{where} "select state, count(*) as jobs from voice_training_jobs group by 1 order by 2 desc"\n'
        f"  {me} report{where} --out voicejobs-report.html"
    )
    return EXIT_OK


def _serving_path(args) -> Path:
    """The serving snapshot readers use, or a usage error saying how to make one (nothing is created)."""
    from pipelines.warehouse import SERVING_FILE

    path = Path(_settings(args).data_dir) / SERVING_FILE
    if not path.exists():
        raise UsageError(f"no warehouse at {path}; run `voicejobs demo` or `voicejobs sync` first")
    return path


def _cmd_query(args) -> int:
    import duckdb

    from pipelines.query import list_relations, run_query

    if args.tables == (args.sql is not None):
        raise UsageError("give one SQL statement, or --tables to list what there is to query")
    try:
        if args.tables:
            print(list_relations(_serving_path(args), fmt=args.format))
        else:
            print(run_query(_serving_path(args), args.sql, fmt=args.format))
    except duckdb.Error as exc:
        # The analyst's SQL is input like any other: say what DuckDB said, without a traceback.
        raise UsageError(str(exc).splitlines()[0] + " (to list the tables: voicejobs query --tables)") from None
    return EXIT_OK


def _cmd_report(args) -> int:
    from pipelines.report import write_report

    out = write_report(_serving_path(args), Path(args.out))
    print(f"report written to {out}")
    return EXIT_OK


def _cmd_publish(args) -> int:
    from pipelines.publish import PublishError, publish

    settings = _settings(args)
    if not settings.postgres_url:
        print("voicejobs publish: VOICEJOBS_POSTGRES_URL is not set; set it to the PostgreSQL database BI tools "
              "read, e.g. postgresql://voicejobs@db:5432/analytics (see `voicejobs publish --help`).", file=sys.stderr)
        return EXIT_FAILED
    try:
        report = publish(_serving_path(args), settings)
    except PublishError as exc:
        print(f"voicejobs publish: {redact(exc)}", file=sys.stderr)
        return EXIT_FAILED
    print(report.summary())
    return EXIT_OK


def _cmd_simulator(args, rest: list[str]) -> int:
    from pipelines.simulator.cli import main as simulator_main

    return simulator_main(rest)


class UsageError(Exception):
    """A command line that cannot be run as given."""


EXIT_CODES_HELP = "exit codes: 0 done; 1 the run failed (configuration, source, storage); 2 usage error (bad flags or dates)"


def _environment_help() -> str:
    """The variables a sync reads, from the one list the settings parser uses."""
    from pipelines.settings import ENV_VARS

    width = max(map(len, ENV_VARS))
    lines = ["The API, the credentials and the tuning come from the environment (see .env.example):"]
    lines += [f"  {name:<{width}}  {meaning}" for name, meaning in ENV_VARS.items()]
    return "\n".join([*lines, "", EXIT_CODES_HELP])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicejobs",
        description="Sync Huawei Cloud MetaStudio voice-training jobs into a Parquet lake and a DuckDB warehouse.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_dir(p):
        p.add_argument("--data-dir", help="data directory (default: $VOICEJOBS_DATA_DIR or ./data)")

    def syncing(p):  # what `sync` and `reconcile` both take besides their days
        p.add_argument("--simulator", action="store_true",
                       help="read the embedded MetaStudio simulator (simulated data) instead of the configured API")
        p.add_argument("--full-refresh", action="store_true",
                       help="rebuild every SQL model and write every lake partition from the whole warehouse, "
                            "not only what changed (after editing it by hand)")

    demo = sub.add_parser("demo", help="sync the embedded simulator's whole range into a warehouse of its own")
    demo.add_argument("--data-dir", help=f"data directory (default: ./{DEMO_DATA_DIR}, never the real syncs' one)")
    demo.add_argument("--jobs", type=int, default=20_000, help="jobs the simulator holds (default 20000)")
    demo.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")

    s = sub.add_parser("sync", help="sync creation days (--since/--until) or, with no dates, changes since the last sync",
                       epilog=_environment_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    data_dir(s)
    s.add_argument("--since", help="first creation day, YYYY-MM-DD")
    s.add_argument("--until", help="last creation day, YYYY-MM-DD (inclusive)")
    syncing(s)
    s.set_defaults(mode="days")

    r = sub.add_parser("reconcile", help="page creation days completely and mark jobs the source no longer lists as deleted",
                       epilog=_environment_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    data_dir(r)
    r.add_argument("--since", required=True, help="first creation day, YYYY-MM-DD")
    r.add_argument("--until", required=True, help="last creation day, YYYY-MM-DD (inclusive)")
    syncing(r)
    r.set_defaults(mode="reconcile")

    sub.add_parser("simulator", help="run the MetaStudio simulator (see `voicejobs simulator --help`)", add_help=False)

    q = sub.add_parser("query", help="run SQL against the serving snapshot and print the result")
    data_dir(q)
    q.add_argument("sql", nargs="?", help="one SQL statement (read-only; the analytics schema comes first)")
    q.add_argument("--tables", action="store_true", help="list the relations analysts can query, and what a row is")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")

    pub = sub.add_parser(
        "publish", help="copy the serving snapshot's analytics tables to PostgreSQL for BI tools ($VOICEJOBS_POSTGRES_URL)",
        epilog="Reads serving.duckdb (never the warehouse) and changes the PostgreSQL schema in one transaction: readers "
        "see the old tables or the new, never a mix, and are never blocked; only what changed is sent.\n"
        "Environment: VOICEJOBS_POSTGRES_URL (libpq URL; password in it, PGPASSWORD or ~/.pgpass), "
        "VOICEJOBS_POSTGRES_SCHEMA (default analytics), VOICEJOBS_POSTGRES_READERS (roles granted SELECT), "
        "VOICEJOBS_POSTGRES_LOCK_TIMEOUT_SECONDS (default 30).\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    data_dir(pub)

    rep = sub.add_parser("report", help="write a self-contained HTML report with charts")
    data_dir(rep)
    rep.add_argument("--out", default="voicejobs-report.html", help="output file (default voicejobs-report.html)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # The simulator has its own parser; hand it everything after the word.
    if "simulator" in argv[:2] and argv[:1] != ["-h"]:
        idx = argv.index("simulator")
        return _cmd_simulator(None, argv[idx + 1 :])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_redaction()

    handlers = {
        "demo": _cmd_demo,
        "sync": _cmd_sync,
        "reconcile": _cmd_sync,
        "query": _cmd_query,
        "report": _cmd_report,
        "publish": _cmd_publish,
    }
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        return _verdict(args, redact(exc), EXIT_USAGE)
    except Exception as exc:
        if isinstance(exc, _failures()):
            return _verdict(args, redact(exc), EXIT_FAILED)
        if isinstance(exc, OSError):
            # A full disk or an unwritable path surfacing outside the warehouse's own checks.
            return _verdict(args, f"{redact(exc)}; check free space and permissions of the data directory "
                                  f"({os.environ.get('VOICEJOBS_DATA_DIR', './data')}).", EXIT_FAILED)
        raise
    except KeyboardInterrupt:
        return _verdict(args, "interrupted; the warehouse keeps its last committed state.", 130)


def _failures() -> tuple[type[Exception], ...]:
    """The errors a run ends with in one line: the source's, the warehouse's and PostgreSQL's.

    Imported when a command fails, not before it starts: the warehouse and publish packages
    load DuckDB and pyarrow, and the demo starts its simulator before it needs them."""
    from pipelines.metastudio.errors import MetaStudioError
    from pipelines.publish.target import PublishError
    from pipelines.warehouse import WarehouseError

    return MetaStudioError, WarehouseError, PublishError


def _verdict(args, message: str, code: int) -> int:
    """The one line a failed command ends with, on a line of its own after any progress line."""
    clear = "\r\033[K" if sys.stderr.isatty() else ""
    print(f"{clear}voicejobs {args.command}: {message}", file=sys.stderr)
    return code


def run() -> None:
    """The ``voicejobs`` command: main(), and the exit.

    Before the interpreter shuts down, the objects it holds are frozen out of the cycle
    collector (gc.freeze): its shutdown otherwise runs a last full collection over everything
    the imports made (DuckDB, pyarrow, httpx), 60-70 ms of a one-day sync's 1.6 s. By then the
    command has closed its files and connections, and exit handlers still run."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
