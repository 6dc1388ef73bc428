"""Named points where a sync can be made to die on purpose, to prove it is crash-safe.

``crashpoint(name)`` does nothing unless the environment variable ``VOICEJOBS_CRASHPOINT``
names this point: ``name`` kills the process the first time it is reached, ``name:N`` the
N-th time. The process then sends itself SIGKILL: no ``finally`` block, no atexit hook and
no buffered write runs, which is what a power cut or the OOM killer leaves behind. The
crash-safety tests run ``voicejobs sync`` once per point and check that the warehouse
still opens and holds a consistent state, and that the next run repairs the rest.

The variable is read on every call (cheap: one dict lookup while unset), so a test can
set it for a subprocess only. Points in use (see tests/integration/test_crash_safety.py):

=============================  ===================================================
``fetched``                    a window was fetched and absorbed, nothing written
``before_flush``               a buffer is about to be applied (also between flushes)
``apply_before_commit``        inside the warehouse transaction, before COMMIT
``apply_after_commit``         COMMIT done, lake export not started
``lake_tmp_written``           a new parquet file complete (a temporary file fsynced, or an
                               object's bytes before its upload), not in place yet
``lake_replaced``              the parquet file in place (renamed, or uploaded), dirty mark not cleared
``lake_exported``              every dirty partition exported (after a standalone apply, or as a run finishes)
``watermark_committed``        the transaction moving the watermark has committed
``run_finished``               sync_runs marked succeeded, models not yet refreshed
``models_refreshed``           SQL models rebuilt, serving snapshot not yet published
``serving_copying``            half of warehouse.duckdb copied into the serving temp file
``serving_replaced``           serving.duckdb renamed into place
=============================  ===================================================
"""

from __future__ import annotations

import os
import signal
import threading

ENV_VAR = "VOICEJOBS_CRASHPOINT"

_lock = threading.Lock()
_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """SIGKILL this process if ``VOICEJOBS_CRASHPOINT`` selects ``name`` (see the module docstring)."""
    wanted = os.environ.get(ENV_VAR)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if hit >= (int(nth) if nth.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
