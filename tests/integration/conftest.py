"""Fixtures of the lake's tests (test_warehouse_lake.py, test_lake_splice.py): a warehouse whose
lake is local, or on the S3 server with BOTH_LAKES (tests/support/lake.py), and a run begun in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.warehouse import Warehouse


@pytest.fixture
def wh(request, tmp_path: Path) -> Warehouse:
    """A warehouse with its lake in the data directory, or (parametrized "s3") on the S3 server."""
    if getattr(request, "param", "local") == "s3":
        lake = request.getfixturevalue("s3_lake")
        return Warehouse(tmp_path / "data", lake_uri=lake.uri, object_store=lake.server.access())
    return Warehouse(tmp_path / "data")


@pytest.fixture
def run(wh: Warehouse) -> str:
    return wh.begin_run("days", {"since": "2025-03-01"})
