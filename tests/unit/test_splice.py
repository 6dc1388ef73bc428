"""A Parquet footer read and written back (thrift_compact.py), and columns spliced into a file
(splice.py), against files Arrow's own writer makes: the spliced file must be the file Arrow
writes for the new values, byte for byte, and whatever cannot be spliced exactly is refused."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.warehouse.lake_splice import spliced_file
from pipelines.warehouse.lakestore import LocalLakeStore, encode_columns, encode_parquet
from pipelines.warehouse.splice import SpliceRefused, footer, row_groups, same_column, splice_columns
from pipelines.warehouse.tables import STORED_JOBS_SCHEMA
from pipelines.warehouse.thrift_compact import (
    BINARY,
    BYTE,
    DOUBLE,
    FALSE,
    I16,
    I32,
    I64,
    LIST,
    STRUCT,
    TRUE,
    Raw,
    Seq,
    Struct,
    ThriftError,
    decode,
    encode,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _table(rows: int, *, deleted: set[int] = frozenset(), synced: set[int] = frozenset(),
           reason: str = "no reason") -> pa.Table:
    """Lake rows: every column null but a few, ``deleted`` rows with a deleted_at, ``synced``
    rows synced a day later than the others."""
    columns = {
        "project_id": ["p1"] * rows,
        "job_id": [f"job-{i:05d}" for i in range(rows)],
        "state": [("FAILED", "SUCCEED", "CREATING")[i % 3] for i in range(rows)],
        "job_failed_reason": [f"{reason} {i}" if i % 3 == 0 else None for i in range(rows)],
        "create_time": [T0 + timedelta(seconds=i) for i in range(rows)],
        "synced_at": [T0 + timedelta(days=2 if i in synced else 1) for i in range(rows)],
        "deleted_at": [T0 + timedelta(days=3, milliseconds=i) if i in deleted else None for i in range(rows)],
    }
    return pa.table({field.name: pa.array(columns.get(field.name, [None] * rows), field.type)
                     for field in STORED_JOBS_SCHEMA}, schema=STORED_JOBS_SCHEMA)


def _file(table: pa.Table, groups: list[int] | None = None, **options) -> bytes:
    """``table`` as the lake writes it (encode_parquet), in row groups of ``groups`` rows if given,
    or with Arrow's writer and ``options`` when there are any."""
    sink = io.BytesIO()
    if options:
        pq.write_table(table, sink, **options)
    elif groups is None:
        encode_parquet(table, sink)
    else:
        batches = []
        first = 0
        for rows in groups:
            batches.append(table.slice(first, rows).combine_chunks().to_batches()[0])
            first += rows
        encode_parquet(pa.RecordBatchReader.from_batches(table.schema, batches), sink)
    return sink.getvalue()


def _footer_bytes(data: bytes) -> bytes:
    size = int.from_bytes(data[-8:-4], "little")
    return data[-8 - size:-8]


@pytest.mark.parametrize("options", [
    {},
    {"use_dictionary": True, "compression": "snappy"},
    {"write_page_index": True, "row_group_size": 40},
    {"write_statistics": False, "data_page_size": 256},
])
def test_a_footer_decoded_and_encoded_again_is_the_same_bytes(options: dict):
    data = _file(_table(100, deleted={3}), **options) if options else _file(_table(100, deleted={3}))
    raw = _footer_bytes(data)
    whole, end = decode(raw)
    assert end == len(raw)
    assert encode(whole) == raw
    # Decoding only the path to the column chunks keeps the rest as its bytes, written back as they were.
    lazy, _ = decode(raw, descend={4: {1: {3: {}}}})
    assert isinstance(lazy.get(2), Raw)
    assert encode(lazy) == raw
    assert lazy.get(2).value() == whole.get(2)


def _random_struct(rng: random.Random, depth: int = 0) -> Struct:
    """A struct of every compact type: field ids with gaps past 15 (the long form), negative
    and 64-bit integers, lists of up to 20 items (the long list header), nested structs."""
    fields, fid = [], 0
    for _ in range(rng.randrange(1, 8)):
        fid += rng.choice((1, 2, 5, 16, 40))
        kinds = [TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST] + ([STRUCT] if depth < 3 else [])
        kind = rng.choice(kinds)
        fields.append([fid, kind, _random_value(rng, kind, depth)])
    return Struct(fields)


def _random_value(rng: random.Random, kind: int, depth: int):
    if kind in (TRUE, FALSE):
        return kind == TRUE
    if kind == BYTE:
        return rng.randrange(-128, 128)
    if kind in (I16, I32, I64):
        bits = {I16: 15, I32: 31, I64: 63}[kind]
        return rng.randrange(-(1 << bits), 1 << bits) >> rng.randrange(bits)
    if kind == DOUBLE:
        return rng.uniform(-1e9, 1e9)
    if kind == BINARY:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == STRUCT:
        return _random_struct(rng, depth + 1)
    elem = rng.choice([I32, I64, BINARY, TRUE] + ([STRUCT] if depth < 3 else []))
    items = [_random_value(rng, elem, depth + 1) for _ in range(rng.choice((0, 3, 14, 15, 20)))]
    return Seq(LIST, elem, items)


@pytest.mark.parametrize("seed", range(40))
def test_any_struct_is_read_and_written_back_as_the_same_bytes_decoded_or_skipped(seed: int):
    """The codec's fast paths (integers and bytes skipped and written without a call each) give
    what the general ones do, on every compact type, not only on what Arrow writes today."""
    rng = random.Random(seed)
    data = encode(_random_struct(rng))
    whole, end = decode(data)
    assert end == len(data)
    assert encode(whole) == data
    skipped, end = decode(data, descend={})  # every field that is no integer kept as its bytes
    assert end == len(data)
    assert encode(skipped) == data
    assert [f[0] for f in skipped.fields] == [f[0] for f in whole.fields]
    for (fid, _, value), (_, _, kept) in zip(whole.fields, skipped.fields, strict=True):
        assert skipped.get(fid) is kept and skipped.has(fid)
        assert (kept.value() if isinstance(kept, Raw) else kept) == value


def test_a_nested_table_s_footer_round_trips_too():
    table = pa.table({"s": pa.array([{"a": 1, "b": [1, 2]}, None]), "m": pa.array([[("k", 1)], []],
                                                                                   pa.map_(pa.string(), pa.int8()))})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    raw = _footer_bytes(sink.getvalue())
    assert encode(decode(raw)[0]) == raw


def test_a_truncated_footer_is_an_error_not_a_crash():
    raw = _footer_bytes(_file(_table(10)))
    with pytest.raises(ThriftError):
        decode(raw[: len(raw) // 2])
    with pytest.raises(SpliceRefused, match="footer"):
        footer(b"PAR1" + raw[: len(raw) // 2] + len(raw).to_bytes(4, "little") + b"PAR1")


def _spliced(old: bytes, new_table: pa.Table, columns: tuple[str, ...] = ("synced_at", "deleted_at")) -> bytes:
    meta = footer(old)
    return splice_columns(old, _columns(new_table, columns, row_groups(meta)), columns, meta)


def _columns(table: pa.Table, columns: tuple[str, ...] | list[str], groups: list[int]) -> pa.Buffer:
    return encode_columns(table.select(list(columns)), groups)


def test_a_damaged_file_is_refused_or_spliced_never_an_unexpected_error():
    """Bytes changed at random, most in the footer: every splice either refuses (the lake then
    encodes the file whole) or gives a file; nothing else escapes to stop the export."""
    table = _table(40, deleted={3})
    old = _file(table, [25, 15])
    footer_start = len(old) - 8 - int.from_bytes(old[-8:-4], "little")
    job_ids, stamps = _columns(table, ["job_id"], [25, 15]), _columns(table, ["synced_at", "deleted_at"], [25, 15])
    rng = random.Random(7)
    refused = 0
    for _ in range(400):
        damaged = bytearray(old)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(footer_start, len(old) - 8) if rng.random() < 0.9 else rng.randrange(len(old))
            damaged[at] = rng.randrange(256)
        try:
            meta = footer(damaged)
            same_column(damaged, meta, job_ids, "job_id")
            splice_columns(damaged, stamps, ["synced_at", "deleted_at"], meta)
        except SpliceRefused:
            refused += 1
    assert refused > 75  # the damage was seen, not only survived


@pytest.mark.parametrize("groups", [None, [40, 40, 20], [1, 99]])
def test_a_spliced_file_is_the_file_written_whole_with_the_new_values(groups: list[int] | None):
    before, after = _table(100, deleted={7}), _table(100, deleted={7, 8, 60, 99}, synced={1, 8, 50})
    old = _file(before, groups)
    spliced = _spliced(old, after)
    assert spliced == _file(after, groups)
    assert pq.read_table(io.BytesIO(spliced)).equals(after)
    # ... and splicing the values it already holds gives the same bytes back.
    assert _spliced(old, before) == old
    # One column of the two alone: the other keeps the old file's values.
    only_deleted = _spliced(old, after, ("deleted_at",))
    assert only_deleted == _file(after.set_column(after.schema.get_field_index("synced_at"), "synced_at",
                                                  before["synced_at"]), groups)


def test_readers_read_a_spliced_file_s_rows(tmp_path):
    """DuckDB and Arrow read the new deleted_at, the other columns as they were, with statistics."""
    before, after = _table(50, reason="r" * 300), _table(50, deleted={0, 49}, reason="r" * 300)
    path = tmp_path / "data.parquet"
    path.write_bytes(_spliced(_file(before, [20, 30]), after))
    got = duckdb.sql(f"SELECT job_id, deleted_at, job_failed_reason FROM read_parquet('{path}') "
                     "WHERE deleted_at IS NOT NULL ORDER BY job_id").fetchall()
    assert got == [("job-00000", T0 + timedelta(days=3), "r" * 300 + " 0"),
                   ("job-00049", T0 + timedelta(days=3, milliseconds=49), None)]
    stats = pq.ParquetFile(path).metadata.row_group(1).column(STORED_JOBS_SCHEMA.get_field_index("deleted_at"))
    assert stats.statistics.null_count == 29 and stats.statistics.max == T0 + timedelta(days=3, milliseconds=49)


def test_same_column_tells_whether_a_file_holds_these_values():
    table = _table(30)
    old = _file(table, [10, 20])
    meta = footer(old)
    assert same_column(old, meta, _columns(table, ["job_id"], [10, 20]), "job_id")
    other = table.set_column(1, "job_id", pa.chunked_array([[*table["job_id"].to_pylist()[:29], "job-x"]]))
    assert not same_column(old, meta, _columns(other, ["job_id"], [10, 20]), "job_id")
    assert not same_column(old, meta, _columns(table, ["job_id"], [30]), "job_id")


def test_what_cannot_be_spliced_exactly_is_refused():
    table = _table(20, deleted={1})
    new = _columns(table, ["deleted_at"], [20])
    with pytest.raises(SpliceRefused, match="not a Parquet file"):
        splice_columns(b"not parquet at all", new, ["deleted_at"])
    with pytest.raises(SpliceRefused, match="page indexes"):
        splice_columns(_file(table, write_page_index=True), new, ["deleted_at"])
    with pytest.raises(SpliceRefused, match="bloom filter"):
        splice_columns(_file(table, bloom_filter_options={"job_id": {"ndv": 20}}), new, ["deleted_at"])
    with pytest.raises(SpliceRefused, match="row groups differ"):
        splice_columns(_file(table, [10, 10]), new, ["deleted_at"])
    as_text = encode_columns(pa.table({"deleted_at": table["job_id"]}), [20])
    with pytest.raises(SpliceRefused, match="another type"):
        splice_columns(_file(table), as_text, ["deleted_at"])
    nested = io.BytesIO()
    pq.write_table(pa.table({"s": pa.array([{"deleted_at": 1}] * 20)}), nested)
    with pytest.raises(SpliceRefused, match="flat"):
        splice_columns(nested.getvalue(), encode_columns(pa.table({"deleted_at": [1] * 20}), [20]), ["deleted_at"])


def _arrow_reads(read, data: bytes, expected: pa.Table | None = None) -> bool:
    """Whether Arrow's ``read`` (read_table, read_metadata) reads ``data``, as ``expected`` if given."""
    try:
        got = read(io.BytesIO(data))
        return expected is None or got.equals(expected)
    except (pa.ArrowException, OSError, ValueError):  # a damaged key-value string: UnicodeDecodeError
        return False


def test_a_lake_file_with_a_damaged_footer_is_encoded_whole_or_spliced_into_a_readable_file(tmp_path, caplog):
    """spliced_file over footers damaged at random: each is refused (logged, the file then
    encoded whole) or gives a file. A footer Arrow cannot read is always refused; a file that
    Arrow read as the partition was always gives a file Arrow reads as the partition is now."""
    before, after = _table(40, deleted={3}), _table(40, deleted={3, 9}, synced={1, 30})
    rows = after.select(["job_id", "synced_at", "deleted_at"])
    store = LocalLakeStore(tmp_path, home=tmp_path, home_var="VOICEJOBS_DATA_DIR")
    old = _file(before, [25, 15])
    footer_start = len(old) - 8 - int.from_bytes(old[-8:-4], "little")
    rng = random.Random(11)
    outcomes = {"refused": 0, "spliced": 0}
    caplog.set_level("INFO", logger="voicejobs.warehouse")
    for _ in range(300):
        damaged = bytearray(old)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(footer_start, len(old) - 8)] = rng.randrange(256)
        (tmp_path / "data.parquet").write_bytes(damaged)
        was_readable = _arrow_reads(pq.read_table, damaged, before)
        new = spliced_file(store, "data.parquet", rows)
        if not _arrow_reads(pq.read_metadata, damaged):
            assert new is None, "a footer Arrow cannot read is healed by a whole encode, not carried over"
        if new is None:
            outcomes["refused"] += 1
            continue
        outcomes["spliced"] += 1
        if was_readable:
            assert pq.read_table(pa.BufferReader(new)).equals(after)
    assert outcomes["refused"] > 50 and outcomes["spliced"] > 10, outcomes
    assert "is written whole: its footer is damaged" in caplog.text
