"""Thrift's compact protocol, read and written without a schema: a Parquet file's footer.

A Parquet footer (``FileMetaData``) is a Thrift struct in the compact protocol. Splicing a
column into a file (splice.py) changes a few of its numbers (byte offsets, sizes) and one
column's metadata and keeps everything else exactly as the writer wrote it. So the footer is
read into a tree that keeps every field, known or not, in its order, and written back as the
same bytes: ``encode(decode(b)) == b`` for what Arrow's writer produces (a field id more than
15 past the one before is written in the long form, as every Thrift writer does).

A struct is a :class:`Struct`: a list of (field id, compact type, value). A list or set is a
:class:`Seq` (element type, values), a map a :class:`Map`; a bool is a Python bool, a binary
``bytes``, a double a float, the integers ints.
"""

from __future__ import annotations

import struct as _struct
from dataclasses import dataclass, field
from typing import Any

# The compact protocol's types (a bool field carries its value in its type: TRUE or FALSE).
TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)
_INTS = (BYTE, I16, I32, I64)
_VARINTS = frozenset((I16, I32, I64))  # the integers written as zigzag varints


class ThriftError(ValueError):
    """Bytes that are not a compact-protocol struct (a truncated or damaged footer)."""


@dataclass
class Seq:
    """A list or set: the compact type of its elements and the elements."""

    kind: int
    elem: int
    items: list[Any] = field(default_factory=list)


@dataclass
class Map:
    key: int
    value: int
    items: list[tuple[Any, Any]] = field(default_factory=list)


@dataclass
class Struct:
    """A struct's fields, in the order they were read: [field id, compact type, value].

    A field is looked up by its id through an index made at the first lookup (a splice asks a
    footer's chunks about 90,000 times): ``fields`` may have values replaced (``set``) but not
    fields added or removed once a lookup was made."""

    fields: list[list[Any]] = field(default_factory=list)
    _index: dict[int, list[Any]] | None = field(default=None, init=False, repr=False, compare=False)

    def _field(self, fid: int) -> list[Any] | None:
        index = self._index
        if index is None:
            index = self._index = {}
            for f in self.fields:
                index.setdefault(f[0], f)  # the first of a repeated id, as a scan finds it
        return index.get(fid)

    def get(self, fid: int, default: Any = None) -> Any:
        f = self._field(fid)
        return default if f is None else f[2]

    def has(self, fid: int) -> bool:
        return self._field(fid) is not None

    def set(self, fid: int, value: Any) -> None:
        """Replace the value of field ``fid``, which must be there (its type is kept)."""
        f = self._field(fid)
        if f is None:
            raise KeyError(fid)
        f[2] = value


@dataclass
class Raw:
    """A value kept as its encoded bytes (see decode's ``descend``); written back as they are."""

    kind: int
    data: bytes

    def value(self) -> Any:
        """The value decoded; ThriftError if its bytes are not one."""
        try:
            return _value_at(self.data, 0, self.kind, 0)[0]
        except IndexError:
            raise ThriftError("a value ends early") from None


#: decode's ``descend``: per struct field id, the fields to decode inside that field's struct
#: (or inside each struct of its list); fields not named are kept Raw. None: decode everything.
Descend = dict[int, "Descend"] | None


def _skip(data: bytes, pos: int, kind: int, depth: int = 0) -> int:
    """The position just after a value of ``kind`` at ``pos``, nothing built."""
    if kind in (I16, I32, I64):
        while data[pos] >= 0x80:
            pos += 1
        return pos + 1
    if kind == BINARY:
        n, pos = _varint_at(data, pos)
        return pos + n
    if kind in (TRUE, FALSE, BYTE):
        return pos + 1
    if kind == DOUBLE:
        return pos + 8
    if depth > 64:
        raise ThriftError("values nested more than 64 deep")
    if kind == STRUCT:
        # The scalars, most of a footer's fields, are skipped here rather than by a call each.
        while True:
            header = data[pos]
            pos += 1
            if header == 0:
                return pos
            if not header >> 4:  # a long-form field id: a varint
                while data[pos] >= 0x80:
                    pos += 1
                pos += 1
            field_kind = header & 0x0F
            if field_kind in _VARINTS:
                while data[pos] >= 0x80:
                    pos += 1
                pos += 1
            elif field_kind == BINARY:
                n, pos = _varint_at(data, pos)
                pos += n
            elif field_kind not in (TRUE, FALSE):
                pos = _skip(data, pos, field_kind, depth + 1)
    if kind in (LIST, SET):
        size, elem, pos = _list_header(data, pos)
        if elem in _VARINTS:
            for _ in range(size):
                while data[pos] >= 0x80:
                    pos += 1
                pos += 1
            return pos
        for _ in range(size):
            pos = _skip(data, pos, elem, depth + 1)
        return pos
    if kind == MAP:
        size, pos = _varint_at(data, pos)
        if size:
            key, val = data[pos] >> 4, data[pos] & 0x0F
            pos += 1
            for _ in range(size):
                pos = _skip(data, _skip(data, pos, key, depth + 1), val, depth + 1)
        return pos
    raise ThriftError(f"unknown compact type {kind}")


def _list_header(data: bytes, pos: int) -> tuple[int, int, int]:
    """A list's or set's header at ``pos``: (size, element kind, where its elements start)."""
    header = data[pos]
    size, elem = header >> 4, header & 0x0F
    pos += 1
    if size == 15:
        size, pos = _varint_at(data, pos)
    return size, elem, pos


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ThriftError("a varint longer than ten bytes")


def _value_at(data: bytes, pos: int, kind: int, depth: int, descend: Descend = None) -> tuple[Any, int]:
    if kind in (I16, I32, I64):
        n, pos = _varint_at(data, pos)
        return (n >> 1) ^ -(n & 1), pos
    if kind == BINARY:
        n, pos = _varint_at(data, pos)
        if pos + n > len(data):
            raise ThriftError("the footer ends inside a value")
        return data[pos:pos + n], pos + n
    if kind == STRUCT:
        return _struct_at(data, pos, depth + 1, descend)
    if kind in (TRUE, FALSE):  # inside a list: one byte
        return data[pos] == TRUE, pos + 1
    if kind == BYTE:
        b = data[pos]
        return (b - 256 if b > 127 else b), pos + 1
    if kind == DOUBLE:
        if pos + 8 > len(data):
            raise ThriftError("the footer ends inside a value")
        return _struct.unpack_from("<d", data, pos)[0], pos + 8
    if depth > 64:
        raise ThriftError("values nested more than 64 deep")
    if kind in (LIST, SET):
        size, elem, pos = _list_header(data, pos)
        items = []
        for _ in range(size):
            item, pos = _value_at(data, pos, elem, depth + 1, descend)
            items.append(item)
        return Seq(kind, elem, items), pos
    if kind == MAP:
        size, pos = _varint_at(data, pos)
        if size == 0:
            return Map(0, 0, []), pos
        key, val = data[pos] >> 4, data[pos] & 0x0F
        pos += 1
        pairs = []
        for _ in range(size):
            k, pos = _value_at(data, pos, key, depth + 1)
            v, pos = _value_at(data, pos, val, depth + 1)
            pairs.append((k, v))
        return Map(key, val, pairs), pos
    raise ThriftError(f"unknown compact type {kind}")


def _struct_at(data: bytes, pos: int, depth: int, descend: Descend = None) -> tuple[Struct, int]:
    if depth > 64:
        raise ThriftError("structs nested more than 64 deep")
    fields: list[list[Any]] = []
    last = 0
    while True:
        header = data[pos]
        pos += 1
        if header == 0:
            return Struct(fields), pos
        delta, kind = header >> 4, header & 0x0F
        if delta:
            fid = last + delta
        else:
            n, pos = _varint_at(data, pos)
            fid = (n >> 1) ^ -(n & 1)
        if kind in (TRUE, FALSE):
            value: Any = kind == TRUE
        elif kind in (I32, I64, I16):
            n, pos = _varint_at(data, pos)
            value = (n >> 1) ^ -(n & 1)
        elif descend is None:
            value, pos = _value_at(data, pos, kind, depth)
        elif fid in descend:
            value, pos = _value_at(data, pos, kind, depth, descend[fid])
        else:
            end = _skip(data, pos, kind, depth)
            value, pos = Raw(kind, data[pos:end]), end
        fields.append([fid, kind, value])
        last = fid


def decode(data: bytes, pos: int = 0, descend: Descend = None) -> tuple[Struct, int]:
    """The struct at ``pos`` of ``data`` and the position just after it; ThriftError if there is
    none. With ``descend``, only the fields it names are decoded (integers always are), the
    others kept Raw: a Parquet footer's column chunks without their statistics and schema."""
    try:
        return _struct_at(data, pos, 0, descend)
    except IndexError:
        raise ThriftError("the footer ends inside a value") from None


def _varint(out: bytearray, n: int) -> None:
    while True:
        if n < 0x80:
            out.append(n)
            return
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _zigzag(out: bytearray, n: int) -> None:
    _varint(out, (n << 1) ^ (n >> 63))


def _value(out: bytearray, kind: int, value: Any) -> None:
    if isinstance(value, Raw):
        out += value.data
    elif kind in (TRUE, FALSE):
        out.append(TRUE if value else FALSE)
    elif kind == BYTE:
        out.append(value & 0xFF)
    elif kind in (I16, I32, I64):
        _zigzag(out, value)
    elif kind == DOUBLE:
        out += _struct.pack("<d", value)
    elif kind == BINARY:
        _varint(out, len(value))
        out += value
    elif kind in (LIST, SET):
        size = len(value.items)
        if size < 15:
            out.append(size << 4 | value.elem)
        else:
            out.append(0xF0 | value.elem)
            _varint(out, size)
        for item in value.items:
            _value(out, value.elem, item)
    elif kind == MAP:
        _varint(out, len(value.items))
        if value.items:
            out.append(value.key << 4 | value.value)
            for k, v in value.items:
                _value(out, value.key, k)
                _value(out, value.value, v)
    elif kind == STRUCT:
        _struct_into(out, value)
    else:
        raise ThriftError(f"unknown compact type {kind}")


def _struct_into(out: bytearray, s: Struct) -> None:
    last = 0
    for fid, kind, value in s.fields:
        wire = (TRUE if value else FALSE) if kind in (TRUE, FALSE) else kind
        delta = fid - last
        if 0 < delta <= 15:
            out.append(delta << 4 | wire)
        else:
            out.append(wire)
            _zigzag(out, fid)
        # The integers and the values kept as bytes, most of a footer's fields, written here
        # rather than by a call each.
        if kind in _VARINTS and not isinstance(value, Raw):
            n = (value << 1) ^ (value >> 63)
            while n >= 0x80:
                out.append((n & 0x7F) | 0x80)
                n >>= 7
            out.append(n)
        elif isinstance(value, Raw):
            out += value.data
        elif kind not in (TRUE, FALSE):
            _value(out, kind, value)
        last = fid
    out.append(0)


def encode(s: Struct) -> bytes:
    out = bytearray()
    _struct_into(out, s)
    return bytes(out)
