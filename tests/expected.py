"""Moved to :mod:`tests.support.expected`; still importable here for benchmarks/faults_table.py."""

from tests.support.expected import *  # noqa: F403
