"""Fixtures every test directory sees (see tests/README.md for where each kind of test lives)."""

from __future__ import annotations

import os

from tests.support.arrow_pool import mimalloc_by_default  # noqa: F401
from tests.support.postgres import postgres_server  # noqa: F401  (a session fixture: one server per test run)
from tests.support.s3 import s3_lake, s3_server  # noqa: F401  (an S3 server per test run, a lake per test)

# The simulator factory (per test and per module) and its preset.
from tests.support.simulators import make_module_simulator, make_simulator, small_simulator  # noqa: F401


def pytest_xdist_auto_num_workers(config) -> int:
    """Workers for ``--numprocesses=auto`` (pyproject's addopts): one a core this process may use, at
    most four. Each worker starts its own PostgreSQL and S3 servers and simulators, so a large
    machine would otherwise start dozens of each. ``-n 0`` runs in one process (for a debugger)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, min(4, len(usable)))
