"""What a newcomer meets at the command line: one exit-code convention, help that names the
environment, and a readable list of what there is to query."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipelines import cli
from pipelines.settings import ENV_VARS
from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.support.simulators import SIM_NOW, sim_settings


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory, make_module_simulator):
    root = tmp_path_factory.mktemp("cli")
    server = make_module_simulator(jobs=400, seed=2, days=10, now=SIM_NOW)
    sync(sim_settings(server, root), mode="days", since=(SIM_NOW - timedelta(days=10)).date(),
         until=SIM_NOW.date(), warehouse=Warehouse(root), refresh=True)
    server.stop()
    return root


@pytest.mark.parametrize("args", [
    ["sync", "--since", "2025-13-01", "--until", "2025-12-01"],  # not a date
    ["sync", "--since", "2025-03-02", "--until", "2025-03-01"],  # reversed
    ["sync", "--since", "2025-03-01"],  # half a range
    ["reconcile", "--since", "yesterday", "--until", "2025-03-01"],
    ["query", "--data-dir", "."],  # neither SQL nor --tables
])
def test_usage_errors_exit_2_with_one_line(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == cli.EXIT_USAGE == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"voicejobs {args[0]}: ")
    assert not (tmp_path / "data").exists()  # nothing created


def test_sync_help_names_every_variable_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["sync", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in ENV_VARS:
        assert name in out
    assert "2 usage error" in out and "1 the run failed" in out


def test_tables_lists_the_analyst_relations_readably(snapshot_dir, capsys):
    assert cli.main(["query", "--data-dir", str(snapshot_dir), "--tables"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    relations = [line.split()[0] for line in lines[2:-1]]
    assert "failure_rate_by_tag" in relations and "main.voice_training_jobs" in relations
    assert not any(name.endswith(("sync_runs", "quarantine", "lake_dirty", "sync_windows")) for name in relations)
    assert max(map(len, lines)) < 160
    row = next(line for line in lines if line.startswith("failure_rate_by_tag "))
    assert "one row per tag" in row


def test_a_missing_table_points_at_the_list(snapshot_dir, capsys):
    assert cli.main(["query", "--data-dir", str(snapshot_dir), "select * from no_such_table"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "voicejobs query --tables" in err


class _Terminal:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_shows_share_elapsed_eta_and_every_phase():
    from pipelines import sync as sync_module

    now = [0.0]
    terminal = _Terminal()
    show = cli._progress_printer(terminal, clock=lambda: 10_000.0)
    progress = sync_module.SyncProgress(windows_total=4, clock=lambda: now[0])  # started at t=0
    progress.windows_done, progress.jobs, now[0] = 1, 100, 20.0
    show(progress)  # 20 s for the first window of four: three more to go at that pace
    assert "windows 1/4 (25%)" in terminal.text and "elapsed 0:20" in terminal.text
    assert "eta 1:00" in terminal.text and "5 jobs/s" in terminal.text
    for phase in ("building the SQL models", "publishing the serving snapshot"):
        progress.phase = phase
        show(progress)
        assert f"\n  {phase} ... (" in terminal.text


def test_the_summary_gives_the_total_and_each_phase():
    from pipelines.sync import SyncReport

    report = SyncReport(run_id="r", mode="days", projects=("p",), jobs_fetched=100, elapsed_seconds=10.0,
                        wait_seconds=30.0, phase_seconds={"fetch and write": 7.0, "models": 2.0, "snapshot": 1.0})
    text = report.summary()
    assert text.splitlines()[0].startswith("backfill of creation days of p")
    assert "took 10.0s in all (10 jobs/s): fetch and write 7.0s, models 2.0s, snapshot 1.0s" in text
    assert "request time summed over concurrent requests 30.0s" in text


def test_retries_update_one_line_then_the_verdict(monkeypatch, tmp_path, caplog):
    """An unreachable endpoint: no stack of WARNING lines, one line that updates, one verdict."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in dict(METASTUDIO_ENDPOINT=f"http://127.0.0.1:{port}", HUAWEICLOUD_SDK_AK="ak",
                            HUAWEICLOUD_SDK_SK="sk", HUAWEICLOUD_SDK_PROJECT_ID="p1", VOICEJOBS_MAX_ATTEMPTS="3",
                            VOICEJOBS_MAX_RETRY_SECONDS="30", VOICEJOBS_DATA_DIR=str(tmp_path)).items():
        monkeypatch.setenv(name, value)
    terminal = _Terminal()
    monkeypatch.setattr(cli.sys, "stderr", terminal)
    caplog.set_level("WARNING")
    assert cli.main(["sync", "--since", "2026-03-01", "--until", "2026-03-01"]) == 1
    lines = terminal.text.split("\n")
    assert lines[-1] == ""  # ends with the verdict's newline
    body = lines[:-1]
    assert len(body) == 1  # everything on one terminal line, redrawn with \r
    redraws = body[0].split("\r\033[K")
    assert [r for r in redraws if r.startswith("  MetaStudio request failed")] and len(redraws) >= 3
    assert redraws[-1].startswith("voicejobs sync: Cannot reach the MetaStudio endpoint")
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # no WARNING per retry
