"""BI tools hold serving.duckdb open while syncs run: never blocked, never a half-applied state.

The test and the reader process meet on the reader's output, never on a sleep: the test waits
for the looks it needs (one before the sync, one after it but before publishing, the new
snapshot after publishing, and a look of the held connection after that).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta

import duckdb

from pipelines.sync import refresh_and_publish, sync
from pipelines.warehouse import Warehouse
from tests.support.serving import record_publishes
from tests.support.simulators import SIM_NOW, sim_settings

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
        time.sleep(0.02)  # pacing, not synchronisation: the test waits for the looks it needs
    held.close()
""")


class Looks:
    """The reader's looks as they arrive (a thread reads its stdout); tests wait for the looks they need."""

    HANG_GUARD = 300  # seconds: only a hung reader or sync ever gets near this

    def __init__(self, stream) -> None:
        self.looks: list[dict] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.looks.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, what: str, predicate) -> int:
        """Block until ``predicate(looks)`` holds; returns how many looks there were then."""
        with self._changed:
            ok = self._changed.wait_for(lambda: predicate(self.looks) or self._ended, timeout=self.HANG_GUARD)
            assert ok and predicate(self.looks), f"the reader never showed {what}: {self.looks[-3:]}"
            return len(self.looks)

    def join(self) -> list[dict]:
        self._thread.join(timeout=self.HANG_GUARD)
        return self.looks


def _after(start: int, conn: str, value: int | None = None):
    """A predicate: a look by ``conn`` (with count ``value``) among the looks from index ``start`` on."""
    return lambda looks: any(look["conn"] == conn and (value is None or look["row"][0] == value)
                             for look in looks[start:])


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
        [sys.executable, "-c", READER, str(warehouse.serving_path), str(stop_file), str(Looks.HANG_GUARD)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    looks = Looks(reader.stdout)
    try:
        # the reader is connected and has looked both ways before the sync starts
        looks.wait_for("a first look", lambda seen: _after(0, "held")(seen) and _after(0, "fresh")(seen))
        # a full sync, while the reader holds the old snapshot open; not yet published
        report = sync(settings, mode="days", since=(SIM_NOW - timedelta(days=61)).date(), until=SIM_NOW.date(),
                      warehouse=warehouse)
        synced = looks.wait_for("a look after the sync", lambda seen: True)
        unpublished = looks.wait_for("a fresh look before publishing", _after(synced, "fresh"))
        refresh_and_publish(warehouse, settings)
        published = looks.wait_for("a look after publishing", lambda seen: True)
        with duckdb.connect(str(warehouse.serving_path), read_only=True) as con:
            new_total = con.execute("select count(*) from analytics.voice_training_jobs").fetchone()[0]
        # the new snapshot reaches a reconnecting reader, and the held connection looks again after it
        looks.wait_for("the new snapshot", _after(published, "fresh", new_total))
        looks.wait_for("a held look after publishing", _after(published, "held"))
    finally:
        stop_file.touch()
        seen = looks.join()
        err = reader.stderr.read()
        reader.wait(timeout=60)
    assert reader.returncode == 0, err

    assert new_total > old_total and report.rows_written > 0

    for look in seen:
        a, b, c = look["row"]
        assert a == b == c, look  # every look is one consistent snapshot
        assert a in (old_total, new_total), look
    held = [look["row"][0] for look in seen if look["conn"] == "held"]
    fresh = [look["row"][0] for look in seen if look["conn"] == "fresh"]
    assert set(held) == {old_total}  # the held connection keeps its snapshot, after publishing too
    # Synced but not published, a reconnecting reader still saw the old snapshot...
    assert [look["row"][0] for look in seen[synced:unpublished] if look["conn"] == "fresh"][-1] == old_total
    # ... and once published the new one, never going back.
    assert fresh[0] == old_total and fresh[-1] == new_total
    first_new = fresh.index(new_total)
    assert set(fresh[first_new:]) == {new_total}


def test_the_first_sync_after_a_backfill_publishes_into_a_spare_copied_while_it_fetched(small_simulator, tmp_path,
                                                                                        monkeypatch):
    """A backfill leaves a snapshot and no spare; the next sync copies the snapshot into a spare
    while it fetches, so its publish writes only the parts that changed, not the whole file."""
    from pipelines.warehouse import serving

    data_dir = tmp_path / "data"
    settings = sim_settings(small_simulator, data_dir)
    warehouse = Warehouse(data_dir)
    first, last = (SIM_NOW - timedelta(days=61)).date(), SIM_NOW.date()
    sync(settings, mode="days", since=first, until=last, warehouse=warehouse, refresh=True)
    assert not (data_dir / serving.SPARE_FILE).exists()

    publishes = record_publishes(monkeypatch)
    sync(settings, mode="days", since=last, until=last, warehouse=warehouse, refresh=True)

    assert publishes == ["into the spare"]
    with warehouse.connect() as con:
        jobs = con.execute("SELECT count(*) FROM main.voice_training_jobs").fetchone()[0]
    with duckdb.connect(str(warehouse.serving_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM main.voice_training_jobs").fetchone()[0] == jobs
    assert (data_dir / serving.SPARE_FILE).exists()  # the replaced snapshot, for the next sync
    assert not list(data_dir.glob(".serving-*.tmp*"))
