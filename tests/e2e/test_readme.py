"""The README's commands and query examples run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from pipelines.sync import refresh_and_publish, sync
from pipelines.warehouse import Warehouse
from tests.support.simulators import SIM_NOW, sim_settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start: end if end != -1 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


QUERYING = section("Querying the result")
SHELL_LINES = [line for block in blocks(QUERYING, "bash") for line in block.strip().splitlines()]
PYTHON_BLOCKS = blocks(QUERYING, "python")


def argv(line: str) -> list[str]:
    """A README shell line as argv: `.venv/bin/X` and bare tools resolve to this environment."""
    words = shlex.split(line)
    tool = words[0].removeprefix(".venv/bin/")
    return [str(BIN / tool), *words[1:]]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, make_module_simulator):
    """A directory laid out as after `voicejobs demo`: ./demo-data holds the warehouse."""
    root = tmp_path_factory.mktemp("readme")
    server = make_module_simulator(jobs=1500, seed=3, days=30, now=SIM_NOW)
    settings = sim_settings(server, root / "demo-data")
    warehouse = Warehouse(root / "demo-data")
    sync(settings, mode="days", since=(SIM_NOW - timedelta(days=31)).date(), until=SIM_NOW.date(),
         warehouse=warehouse)
    refresh_and_publish(warehouse, settings)
    server.stop()
    return root


def test_readme_has_examples_for_every_client():
    assert len(SHELL_LINES) >= 5 and len(PYTHON_BLOCKS) >= 3
    assert any(line.startswith(".venv/bin/duckdb ") for line in SHELL_LINES)
    assert any("create_engine" in block for block in PYTHON_BLOCKS)
    assert any("read_parquet" in block for block in PYTHON_BLOCKS)


@pytest.mark.parametrize("line", SHELL_LINES)
def test_shell_examples_run_as_written(demo_dir, line):
    result = subprocess.run(argv(line), cwd=demo_dir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=lambda c: c.strip().splitlines()[-2][:40])
def test_python_examples_run_as_written(demo_dir, code):
    result = subprocess.run([sys.executable, "-c", code], cwd=demo_dir, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and "[]" not in result.stdout.splitlines()[0]


def test_the_demo_command_leaves_a_warehouse_and_its_next_steps_run_as_printed(tmp_path):
    """The README's first command, minus the install, on a smaller simulator; then every
    "Try:" line it prints, verbatim, from the same directory."""
    demo = next(line for block in blocks(section("The two commands"), "bash") for line in block.split("&&")
                if "voicejobs demo" in line)
    words = shlex.split(demo.strip())
    assert words[0] == ".venv/bin/voicejobs"
    (tmp_path / ".venv").symlink_to(BIN.parent)  # the README's virtualenv, seen from the user's directory
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_"))}
    result = subprocess.run([*words, "--jobs", "3000"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "Loaded 3,000 simulated jobs" in result.stdout
    assert not (tmp_path / "data").exists()
    steps = result.stdout.split("Try:\n", 1)[1].strip().splitlines()
    assert len(steps) >= 3
    for step in steps:
        done = subprocess.run(shlex.split(step), cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, (step, done.stderr)
        assert "Traceback" not in done.stderr
    report = next(step for step in steps if " report " in step)
    assert (tmp_path / shlex.split(report)[-1]).stat().st_size > 10_000
    query = subprocess.run([".venv/bin/voicejobs", "query", "select count(*) from voice_training_jobs",
                            "--data-dir", "demo-data", "--format", "csv"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert query.returncode == 0 and query.stdout.split() == ["count_star()", "3000"], query.stdout + query.stderr
