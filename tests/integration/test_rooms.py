"""The layout holds: the simulator is a tool for the demo and the tests, off the sync path."""

from __future__ import annotations

import subprocess
import sys


def test_nothing_on_the_sync_path_imports_the_simulator():
    """Importing the sync, its source selection, the warehouse and the Dagster assets loads no
    simulator module: only `voicejobs demo`, `voicejobs simulator` and the explicit fallback
    start it (inside open_source, when asked for)."""
    code = (
        "import sys\n"
        "import pipelines.sync, pipelines.source, pipelines.warehouse, pipelines.publish\n"
        "import pipelines.definitions\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('pipelines.simulator'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_demo_starts_its_simulator_before_loading_the_warehouse():
    """`voicejobs demo` spawns the simulator's process first and loads DuckDB, Arrow and the
    sync while that process starts: what the CLI imports up to the spawn holds none of them."""
    code = (
        "import sys\n"
        "from pipelines import cli\n"
        "import pipelines.simulator.process as process\n"
        "class Spawned(Exception): pass\n"
        "def spawn(self, **popen):\n"
        "    heavy = ('duckdb', 'pyarrow', 'numpy', 'pipelines.warehouse', 'pipelines.publish', 'pipelines.sync')\n"
        "    print('loaded:', ','.join(sorted(m for m in heavy if m in sys.modules)))\n"
        "    raise Spawned\n"
        "process.SimulatorProcess.spawn = spawn\n"
        "try:\n"
        "    cli.main(['demo', '--data-dir', sys.argv[1]])\n"
        "except Spawned:\n"
        "    pass\n"
    )
    result = subprocess.run([sys.executable, "-c", code, "unused-demo-dir"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("Starting the embedded MetaStudio simulator")
    assert lines[-1].rstrip() == "loaded:"
