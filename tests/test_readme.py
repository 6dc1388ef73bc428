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
from tests.conftest import SIM_NOW, sim_settings

ROOT = Path(__file__).resolve().parents[1]
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
def demo_dir(tmp_path_factory):
    """A directory laid out as after `voicejobs demo`: ./data holds the warehouse."""
    from pipelines.simulator import SimulatorConfig, SimulatorServer

    root = tmp_path_factory.mktemp("readme")
    with SimulatorServer(SimulatorConfig(jobs=1500, seed=3, days=30, now=SIM_NOW)) as server:
        settings = sim_settings(server, root / "data")
        warehouse = Warehouse(root / "data")
        sync(settings, mode="days", since=(SIM_NOW - timedelta(days=31)).date(), until=SIM_NOW.date(),
             warehouse=warehouse)
        refresh_and_publish(warehouse, settings)
    return root


def test_readme_has_examples_for_every_client():
    assert len(SHELL_LINES) >= 5 and len(PYTHON_BLOCKS) >= 3
    assert any(line.startswith("duckdb ") for line in SHELL_LINES)
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


def test_the_demo_command_leaves_a_warehouse(tmp_path):
    """The README's first command, minus the install, on a smaller simulator."""
    demo = next(line for block in blocks(section("The two commands"), "bash") for line in block.split("&&")
                if "voicejobs demo" in line)
    result = subprocess.run([*argv(demo.strip()), "--jobs", "3000", "--data-dir", str(tmp_path / "data")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if not k.startswith(("METASTUDIO_", "HUAWEICLOUD_"))})
    assert result.returncode == 0, result.stderr
    assert "Loaded 3,000 jobs" in result.stdout
    query = subprocess.run([str(BIN / "voicejobs"), "query", "select count(*) from voice_training_jobs",
                            "--data-dir", str(tmp_path / "data"), "--format", "csv"],
                           capture_output=True, text=True, timeout=120)
    assert query.returncode == 0 and query.stdout.split() == ["count_star()", "3000"], query.stdout + query.stderr
