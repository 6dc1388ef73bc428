"""What PostgreSQL serving must hold: every analytics relation of a serving snapshot, row for row.

Values are compared in a form both databases agree on exactly (JSON with sorted keys,
timestamps in UTC), rows in any order.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb


def duck(path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"ATTACH '{path}' AS s (READ_ONLY)")
    con.execute("USE s")
    return con


def analytics_relations(path: Path) -> list[str]:
    with duck(path) as con:
        return [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 's'"
            " AND table_schema = 'analytics' ORDER BY 1").fetchall()]


def _norm(value, column: str):
    """One value, DuckDB's or PostgreSQL's, in a form both agree on exactly."""
    if column == "extra" and value is not None:
        return json.dumps(json.loads(value) if isinstance(value, str) else value, sort_keys=True)
    if isinstance(value, datetime):
        assert value.tzinfo is not None, column  # timestamptz on both sides
        return value.astimezone(UTC)
    return value


def _sorted_rows(rows, columns):
    normed = [tuple(_norm(v, c) for v, c in zip(row, columns, strict=True)) for row in rows]
    return sorted(normed, key=lambda r: tuple((v is None, repr(v)) for v in r))


def assert_published_equals(pg_conn, snapshot: Path, schema: str = "analytics") -> None:
    names = analytics_relations(snapshot)
    published = {r[0] for r in pg_conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema]).fetchall()}
    assert published == set(names)
    with duck(snapshot) as con:
        for name in names:
            result = con.execute(f"SELECT * FROM analytics.{name}")
            columns = [d[0] for d in result.description]
            expected = result.fetchall()
            cur = pg_conn.execute(f'SELECT {", ".join(columns)} FROM "{schema}"."{name}"')
            actual = cur.fetchall()
            assert len(actual) == len(expected), name
            assert _sorted_rows(actual, columns) == _sorted_rows(expected, columns), name
