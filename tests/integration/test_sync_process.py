"""What a sync costs its process beyond its work: no pandas import, and pandas still there when asked;
no command-line client of httpx.

pyarrow imports pandas on its first conversion of a Python list; a sync refuses that probe
(pipelines.ingest.arrow.skip_pandas_probe), which saves every run a fraction of a second and
about 35 MB. The same process must still hand analysts DataFrames afterwards. httpx imports its
command-line client (click, rich, pygments: about 0.09 s) unless told it is absent, which
``pipelines/__init__.py`` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from datetime import timedelta
from pathlib import Path
from pipelines.settings import Settings
from pipelines.simulator import SimulatorConfig
from pipelines.simulator.process import SimulatorProcess
from pipelines.sync import sync
from pipelines.warehouse import Warehouse
from tests.support.simulators import SIM_NOW

data_dir = Path(sys.argv[1])
with SimulatorProcess(SimulatorConfig(jobs=300, days=5, now=SIM_NOW)) as sim:
    settings = Settings(endpoint=sim.url, ak="SIMULATORAK", sk="simulator-secret", project_ids=("sim-project",),
                        data_dir=data_dir, first_day=(SIM_NOW - timedelta(days=6)).date(),
                        safety_lag_seconds=0, max_clock_skew_seconds=0)
    report = sync(settings, mode="incremental", warehouse=Warehouse(data_dir), refresh=True)
after_sync = "pandas" in sys.modules
cli_modules = sorted(m for m in ("httpx._main", "click", "rich") if sys.modules.get(m) is not None)
from pipelines.query import read
frame = read("select count(*) as jobs from voice_training_jobs", data_dir)
print(json.dumps({"rows_written": report.rows_written, "pandas_after_sync": after_sync,
                  "is_dataframe": isinstance(frame, __import__("pandas").DataFrame),
                  "jobs": int(frame["jobs"][0]), "cli_modules": cli_modules}))
"""


def test_a_sync_imports_no_pandas_and_read_still_returns_a_dataframe(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "data")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["rows_written"] > 0
    assert out["pandas_after_sync"] is False
    assert out["is_dataframe"] is True
    assert out["jobs"] == out["rows_written"]
    assert out["cli_modules"] == []
