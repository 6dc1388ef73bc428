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
