"""BI tools hold serving.duckdb open while syncs run: never blocked, never a half-applied state."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import duckdb

from pipelines.sync import refresh_and_publish, sync
from pipelines.warehouse import Warehouse
from tests.conftest import SIM_NOW, sim_settings

# One row per look: three numbers that agree only in a consistent snapshot.
READER = textwrap.dedent("""
    import json, sys, time, duckdb
    path, stop_file, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    QUERY = '''select (select count(*) from analytics.voice_training_jobs),
                      (select sum(total_jobs) from analytics.failure_rate_by_tag),
                      (select count(*) from main.voice_training_jobs where deleted_at is null)'''
    held = duckdb.connect(path, read_only=True)   # a BI tool that keeps its connection open
    deadline = time.monotonic() + seconds
    import os
    while time.monotonic() < deadline and not os.path.exists(stop_file):
        print(json.dumps({"conn": "held", "row": list(held.execute(QUERY).fetchone())}), flush=True)
        # A tool that reconnects for every query. (Within one process DuckDB shares one instance per
        # path while any connection holds it, so a separate session attaches the file instead.)
        fresh = duckdb.connect()
        fresh.execute(f"ATTACH '{path}' AS s (READ_ONLY)")
        fresh.execute("USE s")
        print(json.dumps({"conn": "fresh", "row": list(fresh.execute(QUERY).fetchone())}), flush=True)
        fresh.close()
        time.sleep(0.02)
    held.close()
""")


def test_a_reader_holding_the_database_open_sees_old_or_new_never_a_mix(small_simulator, tmp_path):
    data_dir = tmp_path / "data"
    settings = sim_settings(small_simulator, data_dir)
    warehouse = Warehouse(data_dir)
    # the old state: the first half of the days
    sync(settings, mode="days", since=(SIM_NOW - timedelta(days=61)).date(), until=(SIM_NOW - timedelta(days=30)).date(),
         warehouse=warehouse)
    refresh_and_publish(warehouse, settings)
    with duckdb.connect(str(warehouse.serving_path), read_only=True) as con:
        old_total = con.execute("select count(*) from analytics.voice_training_jobs").fetchone()[0]

    stop_file = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(warehouse.serving_path), str(stop_file), "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(0.5)  # the reader is connected and querying before the sync starts
        # a full sync and the models, while the reader holds the old snapshot open
        report = sync(settings, mode="days", since=(SIM_NOW - timedelta(days=61)).date(), until=SIM_NOW.date(),
                      warehouse=warehouse)
        refresh_and_publish(warehouse, settings)
        time.sleep(0.5)  # let the reader look at the new snapshot too
    finally:
        stop_file.touch()
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err

    with duckdb.connect(str(warehouse.serving_path), read_only=True) as con:
        new_total = con.execute("select count(*) from analytics.voice_training_jobs").fetchone()[0]
    assert new_total > old_total and report.rows_written > 0

    looks = [json.loads(line) for line in out.splitlines()]
    assert len(looks) > 10
    for look in looks:
        a, b, c = look["row"]
        assert a == b == c, look  # every look is one consistent snapshot
        assert a in (old_total, new_total), look
    held = {look["row"][0] for look in looks if look["conn"] == "held"}
    fresh = [look["row"][0] for look in looks if look["conn"] == "fresh"]
    assert held == {old_total}  # the held connection keeps its snapshot
    assert fresh[0] == old_total and fresh[-1] == new_total  # reconnecting picks up the new one
