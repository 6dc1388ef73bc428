"""Some columns of a lake file replaced, every other column's bytes kept as they were.

A job marked deleted, or listed again unchanged, changes only its stamps in its partition's
file (``deleted_at``, ``synced_at``). Encoding the whole file again for them cost most of a
change capture: at a million jobs, 90 of the 130 files a change capture rewrote held no other
change, and their 395,544 rows took 3.1-3.2 s to encode. A Parquet file's columns are encoded
apart, a column chunk per row group, and its footer says where each chunk is. So the new file
is the old one's chunks, in their order, with the replaced columns' chunks taken from a file
of those columns alone, encoded by the same writer with the same options and row groups; the
footer is the old footer with those chunks' metadata and the byte offsets that moved. Splicing
columns with the same values gives back the same bytes.

:func:`splice_columns` refuses (:class:`SpliceRefused`) whatever it cannot splice exactly: a file
that is not one Parquet file, encryption, page indexes, bloom filters, column chunks in other
files, or row groups or a column that do not match. The lake then encodes the file whole.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from pipelines.warehouse.thrift_compact import Raw, Seq, Struct, ThriftError, decode, encode

MAGIC = b"PAR1"

# Field ids of parquet.thrift's structs (parquet-format 2.x).
_FILE_SCHEMA, _FILE_ROWS, _FILE_ROW_GROUPS, _FILE_KEY_VALUE = 2, 3, 4, 5
_FILE_ENCRYPTION = frozenset({8, 9})  # encryption_algorithm, footer_signing_key_metadata
_GROUP_COLUMNS, _GROUP_BYTES, _GROUP_ROWS, _GROUP_FILE_OFFSET, _GROUP_COMPRESSED = 1, 2, 3, 5, 6
_CHUNK_FILE_OFFSET, _CHUNK_META = 2, 3
#: ColumnChunk fields the splice keeps as they are; any other (file_path, page indexes,
#: encryption) is refused.
_CHUNK_KNOWN = frozenset({_CHUNK_FILE_OFFSET, _CHUNK_META})
_META_PATH, _META_UNCOMPRESSED, _META_COMPRESSED = 3, 6, 7
_META_DATA_PAGE, _META_INDEX_PAGE, _META_DICTIONARY_PAGE = 9, 10, 11
_META_BLOOM = frozenset({14, 15})
_SCHEMA_NAME, _SCHEMA_CHILDREN = 4, 5
#: What footer() decodes: the row groups, their column chunks and those chunks' metadata (its
#: integers; statistics, encodings and paths are kept as their bytes, as is the schema).
_DESCEND = {_FILE_ROW_GROUPS: {_GROUP_COLUMNS: {_CHUNK_META: {}}}}


class SpliceRefused(ValueError):
    """A file the splice cannot rewrite exactly; the message says why. Encode it whole instead."""


def _view(data: bytes | pa.Buffer | memoryview) -> memoryview:
    """Unsigned bytes either way (an Arrow buffer's view is of signed chars)."""
    return memoryview(data).cast("B")


def footer(data: bytes | pa.Buffer | memoryview) -> Struct:
    """The FileMetaData of the Parquet file ``data``; SpliceRefused if it has none."""
    view = _view(data)
    if len(view) < 12 or view[:4] != MAGIC or view[-4:] != MAGIC:
        raise SpliceRefused("not a Parquet file (no PAR1 at its ends)")
    size = int.from_bytes(view[-8:-4], "little")
    start = len(view) - 8 - size
    if start < 4:
        raise SpliceRefused("its footer's length is longer than the file")
    try:
        meta, end = decode(bytes(view[start:-8]), descend=_DESCEND)
    except ThriftError as exc:
        raise SpliceRefused(f"its footer is damaged ({exc})") from None
    if end != size:
        raise SpliceRefused("its footer's length does not match the footer")
    if any(meta.has(fid) for fid in _FILE_ENCRYPTION):
        raise SpliceRefused("it is encrypted")
    return meta


def schema_of(meta: Struct) -> bytes:
    """What a file's rows are, as bytes to compare: its schema and key-value metadata (Arrow's
    schema among them)."""
    return encode(Struct([f for f in meta.fields if f[0] in (_FILE_SCHEMA, _FILE_KEY_VALUE)]))


def row_groups(meta: Struct) -> list[int]:
    """The number of rows of each row group, in order."""
    return [_int(group, _GROUP_ROWS) for group in _groups(meta)]


def _int(struct: Struct, fid: int) -> int:
    """Field ``fid`` of a footer's struct, which must be an integer (a damaged footer may hold
    anything there)."""
    value = struct.get(fid)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpliceRefused(f"its footer is damaged (field {fid} holds {type(value).__name__}, not an integer)")
    return value


def _groups(meta: Struct) -> list[Struct]:
    return _structs(meta.get(_FILE_ROW_GROUPS))


def _chunks(group: Struct) -> list[Struct]:
    return _structs(group.get(_GROUP_COLUMNS))


def _structs(value: Any) -> list[Struct]:
    """A footer's list of structs (row groups, column chunks); SpliceRefused if it holds anything else."""
    if value is None:
        return []
    if not isinstance(value, Seq) or not all(isinstance(item, Struct) for item in value.items):
        raise SpliceRefused("its footer is damaged (a list of structs holds something else)")
    return value.items


def _column_meta(chunk: Struct) -> Struct:
    unknown = {f[0] for f in chunk.fields} - _CHUNK_KNOWN
    if unknown:
        raise SpliceRefused(f"a column chunk has fields this splice does not keep ({sorted(unknown)}: "
                            "a file path, page indexes or encryption)")
    meta = chunk.get(_CHUNK_META)
    if not isinstance(meta, Struct):
        raise SpliceRefused("a column chunk has no metadata")
    if any(meta.has(fid) for fid in _META_BLOOM):
        raise SpliceRefused("a column chunk has a bloom filter")
    return meta


def _span(meta: Struct) -> tuple[int, int]:
    """Where a column chunk's bytes are: (first byte, length)."""
    starts = [_int(meta, fid) for fid in (_META_DICTIONARY_PAGE, _META_INDEX_PAGE, _META_DATA_PAGE) if meta.has(fid)]
    length = _int(meta, _META_COMPRESSED) if meta.has(_META_COMPRESSED) else -1
    if not starts or min(starts) < len(MAGIC) or length < 0:
        raise SpliceRefused("a column chunk does not say where its bytes are")
    return min(starts), length


def _decoded(value: Any) -> Any:
    """A footer's value kept Raw, decoded; SpliceRefused if its bytes are damaged."""
    try:
        return value.value() if isinstance(value, Raw) else value
    except ThriftError as exc:
        raise SpliceRefused(f"its footer is damaged ({exc})") from None


#: A schema element as the splice reads it: its name, whether it has children, its bytes.
_Element = tuple[Any, bool, bytes]


def _elements(meta: Struct) -> tuple[_Element, ...]:
    """The elements of a file's schema. Every lake file holds the same schema, kept Raw by
    footer(): it is decoded once per process, not once per question asked of it (that was a
    third of a splice's time)."""
    value = meta.get(_FILE_SCHEMA)
    if isinstance(value, Raw):
        return _raw_elements(value.kind, value.data)
    return _described(value)


@functools.lru_cache(maxsize=8)
def _raw_elements(kind: int, data: bytes) -> tuple[_Element, ...]:
    return _described(_decoded(Raw(kind, data)))


def _described(elements: Any) -> tuple[_Element, ...]:
    if not isinstance(elements, Seq) or not all(isinstance(e, Struct) for e in elements.items):
        return ()
    return tuple((e.get(_SCHEMA_NAME), e.has(_SCHEMA_CHILDREN), encode(e)) for e in elements.items)


def _column_index(meta: Struct, column: str) -> int:
    """Where the top-level leaf ``column`` is among each row group's chunks (a flat schema)."""
    leaves = _elements(meta)[1:]
    names = [name for name, _, _ in leaves]
    if any(children for _, children, _ in leaves) or names.count(column.encode()) != 1:
        raise SpliceRefused(f"the schema is not flat with a single column {column!r}")
    index = names.index(column.encode())
    for group in _groups(meta):
        chunks = _chunks(group)
        if len(chunks) != len(names) or chunk_path(chunks[index]) != (column,):
            raise SpliceRefused(f"a row group's chunks do not follow the schema at {column!r}")
    return index


def chunk_path(chunk: Struct) -> tuple[str, ...]:
    """A column chunk's path in the schema (one name for a top-level column)."""
    meta = chunk.get(_CHUNK_META)
    path = meta.get(_META_PATH) if isinstance(meta, Struct) else None
    path = _decoded(path)
    if not isinstance(path, Seq) or not all(isinstance(p, bytes) for p in path.items):
        return ()
    return tuple(p.decode("utf-8", "replace") for p in path.items)


def _schema_element(meta: Struct, column: str) -> bytes:
    found = [data for name, _, data in _elements(meta) if name == column.encode()]
    if len(found) != 1:
        raise SpliceRefused(f"the schema has no single element {column!r}")
    return found[0]


def _chunk_bytes(view: memoryview, meta: Struct, column: int) -> list[memoryview]:
    """The bytes of chunk ``column`` of every row group of the file ``view`` (footer ``meta``)."""
    spans = [_span(_column_meta(_chunks(group)[column])) for group in _groups(meta)]
    if any(start + length > len(view) - 8 for start, length in spans):
        raise SpliceRefused("a column chunk runs past the file's footer")
    return [view[start:start + length] for start, length in spans]


def same_column(old: bytes | pa.Buffer, old_meta: Struct, other: bytes | pa.Buffer, column: str,
                other_meta: Struct | None = None) -> bool:
    """Whether ``column``'s chunks in the Parquet file ``old`` (its footer ``old_meta``) are byte
    for byte those of ``other`` (its footer ``other_meta`` if the caller has decoded it), a file
    holding that column (others too): encoded alike, that means the same values in the same
    order, without decoding either. SpliceRefused as splice_columns."""
    other_meta = other_meta if other_meta is not None else footer(other)
    if row_groups(old_meta) != row_groups(other_meta):
        return False
    theirs = _chunk_bytes(_view(other), other_meta, _column_index(other_meta, column))
    ours = _chunk_bytes(_view(old), old_meta, _column_index(old_meta, column))
    return all(a == b for a, b in zip(ours, theirs, strict=True))


def splice_columns(old: bytes | pa.Buffer, replacement: bytes | pa.Buffer, columns: Sequence[str],
                   old_meta: Struct | None = None, new_meta: Struct | None = None) -> bytes:
    """The Parquet file ``old`` with the chunks of its top-level ``columns`` taken from
    ``replacement``, a Parquet file holding those columns (its others ignored) in the same row
    groups. Every other chunk is copied byte for byte; the footer is old's, with the moved
    offsets and the new chunks' metadata. ``old_meta`` and ``new_meta`` are the two footers if
    the caller has decoded them (both are changed). SpliceRefused when that cannot be done exactly."""
    old_view, new_view = _view(old), _view(replacement)
    old_meta = old_meta if old_meta is not None else footer(old_view)
    new_meta = new_meta if new_meta is not None else footer(new_view)
    if row_groups(old_meta) != row_groups(new_meta) or not row_groups(old_meta):
        raise SpliceRefused(f"the row groups differ ({row_groups(old_meta)} against {row_groups(new_meta)})")
    for column in columns:
        if _schema_element(old_meta, column) != _schema_element(new_meta, column):
            raise SpliceRefused(f"column {column!r} has another type in the replacement")
    moved = {_column_index(old_meta, column): _column_index(new_meta, column) for column in columns}
    out = bytearray(MAGIC)
    for group, new_group in zip(_groups(old_meta), _groups(new_meta), strict=True):
        sources = [(chunk, old_view) for chunk in _chunks(group)]
        for index, new_index in moved.items():
            sources[index] = (_chunks(new_group)[new_index], new_view)
        chunks = group.get(_GROUP_COLUMNS)
        group.set(_GROUP_COLUMNS, Seq(chunks.kind, chunks.elem,
                                      [_copy_chunk(chunk, view, out) for chunk, view in sources]))
        _total(group, chunks=_chunks(group))
    body = encode(old_meta)
    out += body
    out += len(body).to_bytes(4, "little")
    out += MAGIC
    return bytes(out)


def _copy_chunk(chunk: Struct, view: memoryview, out: bytearray) -> Struct:
    """Append a column chunk's bytes to ``out``; its metadata with the offsets moved to where they went."""
    meta = _column_meta(chunk)
    start, length = _span(meta)
    if start + length > len(view) - 8:
        raise SpliceRefused("a column chunk runs past the file's footer")
    shift = len(out) - start
    out += view[start:start + length]
    for fid in (_META_DATA_PAGE, _META_INDEX_PAGE, _META_DICTIONARY_PAGE):
        if meta.has(fid):
            meta.set(fid, _int(meta, fid) + shift)
    if _int(chunk, _CHUNK_FILE_OFFSET):  # deprecated, 0 from Arrow's writer; moved with its chunk otherwise
        chunk.set(_CHUNK_FILE_OFFSET, _int(chunk, _CHUNK_FILE_OFFSET) + shift)
    return chunk


def _total(group: Struct, *, chunks: list[Struct]) -> None:
    """A row group's sizes and first byte, from its (moved) column chunks."""
    metas = [chunk.get(_CHUNK_META) for chunk in chunks]
    totals = {
        _GROUP_BYTES: sum(_int(meta, _META_UNCOMPRESSED) for meta in metas),
        _GROUP_COMPRESSED: sum(_int(meta, _META_COMPRESSED) for meta in metas),
        _GROUP_FILE_OFFSET: min(_span(meta)[0] for meta in metas),
    }
    for fid, value in totals.items():
        if group.has(fid):
            group.set(fid, value)
