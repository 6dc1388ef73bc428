"""The fast path from a page's bytes: listed jobs (WireJobs) parsed into Arrow without the GIL.

A sync's paging leaves each job as its JSON bytes (pipelines/metastudio/wire.py). A group of
them is parsed here by ``pyarrow.json`` with the wire's schema given, in C++ that releases the
GIL, and the columns are held to the same rules as the fast path from decoded records
(``from_wire``). The parser is strict where ``pa.array`` is: a value of another type, a
fraction or an out-of-range integer where an integer belongs, or a key given twice in one
object fails the parse, and the group declines (``None``): its jobs are then decoded whole and
take the way of decoded records, the rules included.

Keys the schema does not know go to ``extra`` exactly as the rules put them there, decoded from
the job's own bytes. The parser adds such a key as a column at its level (nested ones inside
``allocated_resource`` and ``assess_result`` too), so a job carries one exactly when such a
column has a value on its row, or its bytes hold the key as JSON writes it (its value was
``null``), or its bytes hold a backslash (a key written with escapes). Only those jobs are
decoded: about 2% of them (benchmarks/parse.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson

from pipelines.contract import WireJob
from pipelines.ingest.arrow import WIRE_TYPE, from_wire
from pipelines.ingest.finish import unknown_keys
from pipelines.ingest.schema import JOBS_SCHEMA, Normalized

#: Bytes parsed at a time: the parser's working memory is a few times its block. A job longer than
#: a block fails the parse, and its group is decoded instead.
_BLOCK = 1 << 20
_PARSE = pajson.ParseOptions(explicit_schema=pa.schema(list(WIRE_TYPE)), unexpected_field_behavior="infer")


def normalize_wire(jobs: list[WireJob], project_id: str, synced_at: datetime,
                   personal_data: str) -> Normalized | None:
    """The jobs as JOBS_SCHEMA, parsed from their bytes; None where decoded records must decide."""
    if not jobs:
        return Normalized(table=JOBS_SCHEMA.empty_table())
    text = b"\n".join(job.raw for job in jobs)
    if text.count(b"\n") != len(jobs) - 1:
        return None  # a job written over several lines: the parser reads one object a line
    try:
        table = pajson.read_json(
            pa.BufferReader(text),
            read_options=pajson.ReadOptions(use_threads=False, block_size=_BLOCK),
            parse_options=_PARSE,
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(jobs):
        return None
    columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    unexpected = [(name, values) for name, values in columns.items() if WIRE_TYPE.get_field_index(name) < 0]
    for field in WIRE_TYPE:
        if pa.types.is_struct(field.type):
            unexpected += _unexpected_within(columns[field.name], field.type)
    wire = pa.StructArray.from_arrays([_known(columns[f.name], f.type) for f in WIRE_TYPE], fields=list(WIRE_TYPE))
    return from_wire(wire, project_id, synced_at, personal_data, extras=_extras(jobs, text, unexpected))


def _unexpected_within(values: pa.StructArray, known: pa.StructType) -> list[tuple[str, pa.Array]]:
    """The fields of ``values`` that ``known`` does not name, at every level below it."""
    found = []
    for i, field in enumerate(values.type):
        child = values.field(i)
        index = known.get_field_index(field.name)
        if index < 0:
            found.append((field.name, child))
        elif pa.types.is_struct(known.field(index).type):
            found += _unexpected_within(child, known.field(index).type)
    return found


def _known(values: pa.Array, known: pa.DataType) -> pa.Array:
    """``values`` with only the fields of ``known`` (the parser adds the keys it does not know)."""
    if values.type == known:
        return values
    children = [_known(values.field(f.name), f.type) for f in known]
    return pa.StructArray.from_arrays(children, fields=list(known), mask=values.is_null())


def _extras(jobs: list[WireJob], text: bytes, unexpected: list[tuple[str, pa.Array]]) -> list[dict[str, Any] | None]:
    """Per job, what goes to ``extra`` (None for most): the unknown keys of the jobs that may carry
    one, decoded from their bytes by the rule every record goes through. ``text`` is the jobs'
    bytes joined by newlines, the only newlines it holds (normalize_wire checks): each needle is
    looked for in the whole of it, in C, not job by job (3 us a job in Python, most of the
    normalization's time holding the GIL on the simulator's pages)."""
    if not unexpected:
        return [None] * len(jobs)
    carries = np.zeros(len(jobs), dtype=bool)
    keys: set[bytes] = set()
    for name, values in unexpected:
        if values.null_count < len(values):
            carries |= values.is_valid().to_numpy(zero_copy_only=False)
        if values.null_count:
            keys.add(orjson.dumps(name))  # a key whose value is null leaves no value in its column
    # Where each job's bytes end in ``text`` (at the newline after them); no needle holds a
    # newline (JSON escapes them), so none spans two jobs.
    ends = np.cumsum(np.fromiter((len(job.raw) + 1 for job in jobs), dtype=np.int64, count=len(jobs))) - 1
    for needle in (b"\\", *sorted(keys)):
        at = text.find(needle)
        while at >= 0:
            job = int(np.searchsorted(ends, at))
            carries[job] = True
            at = text.find(needle, int(ends[job]) + 1)  # the next job's bytes on
    return [unknown_keys(jobs[i].record()) if carry else None for i, carry in enumerate(carries.tolist())]
