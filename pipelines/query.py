"""Ad-hoc SQL over the serving snapshot, formatted for a terminal, a spreadsheet or a program.

The snapshot is opened read-only with search_path `analytics,main`, so analysts write
`select * from failure_rate_by_tag` and get the analytics relation (deleted jobs left out)
before any warehouse table of the same name.
"""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

FORMATS = ("table", "csv", "json", "markdown")
SEARCH_PATH = "analytics,main"


def run_query(db_path: str | Path, sql: str, fmt: str = "table", params: Sequence[Any] | None = None) -> str:
    """Run one query against `db_path` read-only and return its result as text in `fmt`.

    fmt: "table" (aligned plain text, NULL shown as NULL), "csv" (header row, NULL as an
    empty field), "json" (a list of objects; timestamps in ISO 8601) or "markdown".
    `params` are bound to `?` placeholders, never formatted into the text.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(db_path)
    if not path.exists():
        raise FileNotFoundError(f"no database at {path}")
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute(f"SET search_path = '{SEARCH_PATH}'")
        cursor = con.execute(sql, list(params) if params is not None else None)
        if cursor.description is None:
            return ""
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    finally:
        con.close()
    return format_rows(columns, rows, fmt)


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table") -> str:
    """Render a result set in one of FORMATS."""
    if fmt == "table":
        return _table(columns, rows)
    if fmt == "markdown":
        return _markdown(columns, rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else _text(v) for v in row])
        return out.getvalue()
    if fmt == "json":
        records = [{c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        return json.dumps(records, ensure_ascii=False, indent=2)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _text(value: Any) -> str:
    """One cell as text: NULL as 'NULL', floats without binary noise, times in ISO 8601."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0 or not 1e-4 <= abs(value) < 1e15:
            return repr(value) if value else "0"
        # About six significant digits, never in exponent form: people read these.
        integer_digits = len(str(int(abs(value))))
        decimals = max(0, 6 - integer_digits) if abs(value) >= 1 else 6
        return f"{value:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{value:.0f}"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _width(text: str) -> int:
    """Terminal columns `text` occupies: East Asian wide characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    # Line breaks and tabs inside a value would break the grid.
    cells = [[_text(v).replace("\n", " ").replace("\t", " ") for v in row] for row in rows]
    widths = [_width(c) for c in columns]
    for row in cells:
        widths = [max(w, _width(v)) for w, v in zip(widths, row, strict=True)]
    # Numbers align right so their magnitudes line up; text aligns left.
    right = [bool(rows) and all(_numeric(r[i]) or r[i] is None for r in rows) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = []
        for v, w, r in zip(values, widths, right, strict=True):
            pad = " " * (w - _width(v))
            parts.append(pad + v if r else v + pad)
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def _markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    out.extend("| " + " | ".join(cell(_text(v)) for v in row) + " |" for row in rows)
    return "\n".join(out) + "\n"
