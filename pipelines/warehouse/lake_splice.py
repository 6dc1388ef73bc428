"""A lake file whose partition's jobs changed in place, rewritten by splicing.

The stamps are ``synced_at`` and ``deleted_at``: a job listed again without a new version
changes its synced_at, a job marked deleted (or listed again after that) its deleted_at. A new
version of a job the partition holds changes the columns it changes (a change capture's state
changes: state, lastupdate_time, a failure code...). Its old file is the partition as it was
(lake.py: a partition without a mark equals its file, and a splice mark was set by nothing but
such changes since), so only those columns differ. The new file is the old one with their
chunks encoded again from the table and every other chunk copied (splice.py): at a million
jobs, the 90 files a change capture rewrote for deletions alone (and the re-listings that found
them) took 3.1-3.2 s encoded whole.

The old file is checked before it is trusted: it must hold the lake's schema as this release
writes it, a footer Arrow reads, as many rows as the partition, and the partition's job_ids in
its order (its job_id chunks byte for byte those of the table's job_ids encoded alike).
Anything else, or a file that is missing or unreadable, and the partition is written whole as
any other. Damage inside the pages of the columns kept is not looked for, and is carried over:
a file Arrow could read stays readable, one it could not stays unreadable (readers then fail
loudly) until ``voicejobs sync --full-refresh`` writes every file whole.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.redact import redact
from pipelines.warehouse.lakestore import LakeStore, encode_columns, encode_parquet
from pipelines.warehouse.splice import (
    SpliceRefused,
    footer,
    row_groups,
    same_column,
    schema_of,
    splice_columns,
)
from pipelines.warehouse.tables import STORED_JOBS_SCHEMA

log = logging.getLogger("voicejobs.warehouse")

#: The columns every splice replaces: the stamps.
STAMPS = ("synced_at", "deleted_at")


@functools.cache
def _lake_schema() -> bytes:
    """The schema (and Arrow's schema in its metadata) of a lake file this release writes."""
    sink = pa.BufferOutputStream()
    encode_parquet(STORED_JOBS_SCHEMA.empty_table(), sink)
    return schema_of(footer(sink.getvalue()))


def spliced_file(store: LakeStore, key: str, rows: pa.Table, columns: Sequence[str] = STAMPS) -> pa.Buffer | None:
    """The file at ``key`` with its ``columns`` (the stamps, and any changed in place) taken from
    ``rows`` (the partition's job_id and those columns, sorted by job_id); None when it must be
    written whole (logged)."""
    try:
        old = store.read_bytes(key)
        if old is None:
            raise SpliceRefused("it is missing")
        meta = footer(old)
        if schema_of(meta) != _lake_schema():
            raise SpliceRefused("it holds another schema than this release writes")
        _arrow_reads_footer(old)
        groups = row_groups(meta)
        if sum(groups) != rows.num_rows:
            raise SpliceRefused(f"it holds {sum(groups):,} rows and the partition {rows.num_rows:,}")
        # One file of the job_ids (to compare) and the columns to splice in, encoded alike.
        replacement = encode_columns(_typed(rows, ["job_id", *columns]), groups)
        new_meta = footer(replacement)
        if not same_column(old, meta, replacement, "job_id", new_meta):
            raise SpliceRefused("its jobs are not the partition's")
        return pa.py_buffer(splice_columns(old, replacement, columns, meta, new_meta))
    except (SpliceRefused, OSError) as exc:
        cause = " ".join(str(getattr(exc, "strerror", None) or exc).split())
        log.info("The lake file %s is written whole: %s.", store.location(key), redact(cause))
        return None


def _arrow_reads_footer(old: pa.Buffer) -> None:
    """SpliceRefused unless Arrow reads the file's footer too: a footer damaged where splice.py
    keeps its bytes unread (statistics, encodings) would be carried into the new file."""
    try:
        pq.read_metadata(pa.BufferReader(old))
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: a string that is not UTF-8
        raise SpliceRefused(f"its footer is damaged ({' '.join(str(exc).split())[:120]})") from None


def _typed(rows: pa.Table, columns: Sequence[str]) -> pa.Table:
    """``columns`` of ``rows`` in the lake's types."""
    schema = pa.schema([STORED_JOBS_SCHEMA.field(name) for name in columns])
    return rows.select(list(columns)).cast(schema)
