"""Reading and tampering with a warehouse's lake the same way whether it is local or on S3.

Local lakes are read from the directory; S3 lakes with pyarrow's S3FileSystem and the
credentials the warehouse was given, through the store's own bucket/prefix path. Either way
reads go through pyarrow's filesystem and dataset layers, not the warehouse's own code.
"""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipelines.warehouse import Warehouse

#: For the lake's tests: the same assertions with the lake local and on S3 (the ``wh`` fixture
#: of tests/integration/conftest.py, parametrized).
BOTH_LAKES = pytest.mark.parametrize("wh", ["local", "s3"], indirect=True)


def _where(wh: Warehouse) -> tuple[pafs.FileSystem, str]:
    if wh.lake_dir is not None:
        return pafs.LocalFileSystem(), str(wh.lake_dir)
    return wh.lake.filesystem, wh.lake.base


def lake_keys(wh: Warehouse) -> list[str]:
    """Every file under the table's root, relative to it (S3 directory markers left out)."""
    fs, root = _where(wh)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File)


def lake_dataset(wh: Warehouse) -> ds.Dataset:
    """The lake as readers open it: Parquet with hive partitioning."""
    fs, root = _where(wh)
    return ds.dataset(root, filesystem=fs, format="parquet", partitioning="hive")


def lake_file(wh: Warehouse, key: str) -> pa.Table:
    fs, root = _where(wh)
    with fs.open_input_file(f"{root}/{key}") as f:
        return pq.read_table(f)


def lake_row_groups(wh: Warehouse, key: str) -> int:
    """How many row groups the file at ``key`` holds."""
    fs, root = _where(wh)
    with fs.open_input_file(f"{root}/{key}") as f:
        return pq.ParquetFile(f).metadata.num_row_groups


def lake_statistics(wh: Warehouse, key: str) -> dict[str, bool]:
    """Per column of the file at ``key``: whether every row group holds statistics for it."""
    fs, root = _where(wh)
    with fs.open_input_file(f"{root}/{key}") as f:
        meta = pq.ParquetFile(f).metadata
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    return {groups[0].column(c).path_in_schema: all(g.column(c).is_stats_set for g in groups) for c in range(meta.num_columns)}


def lake_put(wh: Warehouse, key: str, data: bytes) -> None:
    """Put arbitrary bytes at ``key`` (an orphan or a half-written file, say)."""
    fs, root = _where(wh)
    fs.create_dir(f"{root}/{key}".rpartition("/")[0], recursive=True)
    with fs.open_output_stream(f"{root}/{key}") as out:
        out.write(data)


def lake_wipe(wh: Warehouse) -> None:
    """Lose the whole lake."""
    if wh.lake_dir is not None:
        shutil.rmtree(wh.lake_dir)
        return
    wh.lake.filesystem.delete_dir_contents(wh.lake.base, missing_dir_ok=True)


def lake_bytes(wh: Warehouse, key: str) -> bytes:
    """The file at ``key`` as stored, byte for byte."""
    fs, root = _where(wh)
    with fs.open_input_stream(f"{root}/{key}") as f:
        return f.read()
