"""A fixture for the tests of where Arrow's buffers come from (pipelines/arrowpool.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest


@pytest.fixture
def mimalloc_by_default() -> Iterator[str]:
    """The process's Arrow pool set to mimalloc, pyarrow's default on Linux, for the test (an
    earlier test of the same process may have left it otherwise); its backend name."""
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    try:
        yield "mimalloc"
    finally:
        pa.set_memory_pool(before)
