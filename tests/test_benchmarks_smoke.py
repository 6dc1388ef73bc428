"""The benchmark script end to end at its smallest size: every scenario runs, prints and is saved.

No timing is asserted (the machine is shared); only that the suite works and reports every
figure, so it cannot rot between the runs that matter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("baseline", "full", "rate-cap", "incremental", "models")


def test_smallest_benchmark_run_prints_every_column_and_writes_json(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--sizes", "600", "--days", "6",
         "--out", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    from benchmarks.run import COLUMNS

    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("scenario "))
    assert header.split() == list(COLUMNS)
    table = lines[lines.index(header) + 2:]
    for scenario in SCENARIOS:
        assert any(line.startswith(scenario + " ") for line in table), f"no {scenario} row in:\n{proc.stdout}"

    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["columns"] == list(COLUMNS)
    results = saved["results"]
    assert [r["scenario"] for r in results] == [
        "baseline", "full", "baseline", "full", "rate-cap", "incremental", "models"]
    by_name = {r["scenario"]: r for r in results}
    # The syncs read what the baseline read: the simulator's whole history.
    assert by_name["full"]["jobs"] == by_name["baseline"]["jobs"] > 0
    assert by_name["rate-cap"]["jobs"] == by_name["baseline"]["jobs"]
    assert by_name["models"]["jobs"] >= 600 * 0.9  # the warehouse the syncs built
    assert by_name["models"]["details"]["models"] > 0
    for r in results:
        for key in ("seconds", "jobs_per_s", "requests", "retries", "peak_rss_mb"):
            assert isinstance(r[key], int | float) and r[key] >= 0, (r["scenario"], key)
        assert r["peak_rss_mb"] > 0
    full = [r for r in results if r["scenario"] == "full"]
    assert all(r["vs_baseline"] is not None and r["vs_baseline"] > 0 for r in full)
    assert by_name["rate-cap"]["details"]["floor_seconds"] > 0
    assert 0 < by_name["incremental"]["details"]["share_of_full"]
