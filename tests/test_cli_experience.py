"""What a newcomer meets at the command line: one exit-code convention, help that names the
environment, and a readable list of what there is to query."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipelines import cli
from pipelines.settings import ENV_VARS
from pipelines.simulator import SimulatorConfig, SimulatorServer
from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.conftest import SIM_NOW, sim_settings


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    with SimulatorServer(SimulatorConfig(jobs=400, seed=2, days=10, now=SIM_NOW)) as server:
        sync(sim_settings(server, root), mode="days", since=(SIM_NOW - timedelta(days=10)).date(),
             until=SIM_NOW.date(), warehouse=Warehouse(root), refresh=True)
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
