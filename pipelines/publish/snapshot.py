"""The DuckDB side of a publish: what the serving snapshot holds and how each relation is sent.

Every relation of the snapshot's ``analytics`` schema (tables and views alike: the views
``voice_training_jobs``, ``voice_training_job_history`` and ``voice_training_job_transitions``
leave deleted jobs out and show personal data as masked in the warehouse) is published as a
PostgreSQL table of the same name and columns. :data:`LAYOUTS` gives the published tables
their keys and indexes; a relation it does not name (a new model) is published without them.

Change detection works on *groups* of rows: the rows of one job (``project_id, job_id``)
for the job-level relations, the whole table for the small aggregates. Each group gets a
fingerprint, DuckDB's 64-bit ``hash`` of the sum of its rows' hashes and its row count; a
publish compares them with those it stored in PostgreSQL last time and sends only the
groups whose fingerprint changed (a changed job's rows are deleted and sent again).
``hash`` may change between DuckDB releases, so :data:`HASH_ALGORITHM` names the release
and a change of it sends everything once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipelines.publish.target import PublishError

SCHEMA = "analytics"
HASH_ALGORITHM = f"duckdb-hash/{duckdb.__version__}"
# Fingerprints are stored as PostgreSQL bigint: the top bit of DuckDB's UBIGINT hash is dropped.
_MASK = "9223372036854775807"
BATCH_ROWS = 50_000  # rows per Arrow batch turned into CSV
JSON_COLUMNS = frozenset({"extra"})  # JSON kept as text in DuckDB, jsonb in PostgreSQL


@dataclass(frozen=True)
class Layout:
    """Keys and indexes of one published table.

    primary_key: columns that identify a row (never NULL); becomes the PRIMARY KEY.
    group_key: rows sharing these values change together and are compared and sent as one
        group (never NULL); empty means the whole table is one group.
    indexes: further indexes, each a tuple of columns (what dashboards filter and join on).
    """

    primary_key: tuple[str, ...] = ()
    group_key: tuple[str, ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()


_JOB = ("project_id", "job_id")

#: The published tables' keys and indexes. The job-level relations are compared job by job;
#: the aggregates (a few hundred rows at most) as whole tables. Aggregates grouped by a
#: column that may be NULL (tag, language, job_type, failure code) have no primary key.
LAYOUTS: dict[str, Layout] = {
    "voice_training_jobs": Layout(primary_key=_JOB, group_key=_JOB,
                                  indexes=(("create_time",), ("lastupdate_time",), ("state",))),
    "job_outcomes": Layout(primary_key=_JOB, group_key=_JOB, indexes=(("create_time",), ("finished_at",))),
    "voice_training_job_history": Layout(group_key=_JOB, indexes=(_JOB, ("valid_from",))),
    "voice_training_job_transitions": Layout(group_key=_JOB, indexes=(_JOB, ("changed_at",))),
    "daily_job_stats": Layout(primary_key=("day", "project_id")),
    "weekly_job_stats": Layout(primary_key=("week_start", "project_id")),
    "monthly_job_stats": Layout(primary_key=("month_start", "project_id")),
}

#: DuckDB type (information_schema.columns.data_type) -> PostgreSQL type. Never text where a
#: number, a time or a truth value belongs; a type not listed stops the publish.
PG_TYPES: dict[str, str] = {
    "VARCHAR": "text",
    "JSON": "jsonb",
    "BOOLEAN": "boolean",
    "TINYINT": "smallint",
    "SMALLINT": "smallint",
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "HUGEINT": "numeric(39,0)",
    "UTINYINT": "smallint",
    "USMALLINT": "integer",
    "UINTEGER": "bigint",
    "UBIGINT": "numeric(20,0)",
    "FLOAT": "real",
    "DOUBLE": "double precision",
    "DATE": "date",
    "TIME": "time",
    "TIMESTAMP": "timestamp",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "INTERVAL": "interval",
    "UUID": "uuid",
}
# Sent as DuckDB's own text (fast and exact); PostgreSQL reads every one of these forms.
_AS_TEXT = frozenset({"DATE", "TIME", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "INTERVAL", "UUID", "HUGEINT",
                      "UBIGINT"})


def quote(name: str) -> str:
    """A DuckDB identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Column:
    name: str
    duckdb_type: str
    pg_type: str


@dataclass
class Relation:
    """One relation of the snapshot's analytics schema and how it is published."""

    name: str
    columns: tuple[Column, ...]
    layout: Layout = field(default_factory=Layout)

    @property
    def signature(self) -> str:
        """Names and PostgreSQL types of the columns, keys and indexes: a change replaces the table."""
        cols = ", ".join(f"{c.name} {c.pg_type}" for c in self.columns)
        keys = f"pk({','.join(self.layout.primary_key)}) group({','.join(self.layout.group_key)})"
        indexes = " ".join(f"index({','.join(i)})" for i in self.layout.indexes)
        return f"{cols} | {keys} {indexes}".strip()

    @property
    def grouped(self) -> bool:
        return bool(self.layout.group_key)

    def _qualified(self) -> str:
        return f"{SCHEMA}.{quote(self.name)}"

    def _row_hash(self) -> str:
        return f"hash({', '.join(quote(c.name) for c in self.columns)})"

    def fingerprint_sql(self) -> str:
        """One row, (rows, fingerprint), of an ungrouped relation: the whole table is its one group."""
        return (f"SELECT count(*), CAST(hash(sum(CAST({self._row_hash()} AS HUGEINT)), count(*)) & {_MASK} AS BIGINT)"
                f" FROM {self._qualified()}")

    def groups_sql(self) -> str:
        """One row per group of a grouped relation: kh (the group key's hash), h (the group's
        fingerprint), n (its rows) and the group key's columns."""
        key = ", ".join(quote(c) for c in self.layout.group_key)
        return (f"SELECT CAST(hash({key}) & {_MASK} AS BIGINT) AS kh,"
                f" CAST(hash(sum(CAST({self._row_hash()} AS HUGEINT)), count(*)) & {_MASK} AS BIGINT) AS h,"
                f" count(*) AS n, {key} FROM {self._qualified()} GROUP BY {key}")

    def rows_sql(self, only: str | None = None) -> str:
        """Every column as PostgreSQL's CSV COPY reads it; only the groups whose key is in relation ``only``."""
        select = ", ".join(
            f"CAST(r.{quote(c.name)} AS VARCHAR) AS {quote(c.name)}" if c.duckdb_type in _AS_TEXT
            else f"r.{quote(c.name)}"
            for c in self.columns
        )
        if only is None:
            return f"SELECT {select} FROM {self._qualified()} AS r"
        on = " AND ".join(f"r.{quote(c)} = o.{quote(c)}" for c in self.layout.group_key)
        return f"SELECT {select} FROM {self._qualified()} AS r SEMI JOIN {only} AS o ON {on}"

    def key_problems_sql(self) -> str | None:
        """One row (rows, distinct primary keys, rows with a NULL in it), or None without a primary key."""
        columns = self.layout.primary_key
        if not columns:
            return None
        cols = ", ".join(quote(c) for c in columns)
        nulls = " OR ".join(f"{quote(c)} IS NULL" for c in columns)
        return (f"SELECT count(*), count(DISTINCT ({cols})), count(*) FILTER (WHERE {nulls})"
                f" FROM {self._qualified()}")


@dataclass
class Fingerprinted:
    """A relation measured in the snapshot: its rows, fingerprint and (when grouped) groups."""

    relation: Relation
    rows: int
    fingerprint: int
    groups: pa.Table | None


class Snapshot:
    """The serving snapshot opened read-only in a private in-memory DuckDB.

    Attached rather than opened, so a process that still holds an older serving.duckdb open
    does not hand back that older instance, and the file is never written. Every query runs
    on a cursor of its own, so queries may run from several threads at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise PublishError(f"no serving snapshot at {self.path}; run `voicejobs sync` (or `voicejobs demo`) first.")
        try:
            self.con = duckdb.connect()
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute("SET enable_progress_bar = false")  # stdout is the caller's
            escaped = str(self.path).replace("'", "''")
            self.con.execute(f"ATTACH '{escaped}' AS snapshot (READ_ONLY)")
            self.con.execute("USE snapshot")
        except duckdb.Error as exc:
            raise PublishError(f"cannot read the serving snapshot {self.path} ({_first_line(exc)}); "
                               "run `voicejobs sync` to write a new one.") from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def relations(self) -> list[Relation]:
        """Every relation of the analytics schema, by name, with its columns mapped to PostgreSQL types."""
        rows = self.con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_catalog = 'snapshot' AND table_schema = ? ORDER BY table_name, ordinal_position",
            [SCHEMA],
        ).fetchall()
        columns: dict[str, list[Column]] = {}
        for table, column, dtype in rows:
            columns.setdefault(table, []).append(Column(column, dtype, _pg_type(table, column, dtype)))
        if not columns:
            raise PublishError(f"the serving snapshot {self.path} has no {SCHEMA} relations; "
                               "run `voicejobs sync` so the SQL models are built.")
        out = []
        for name, cols in columns.items():
            layout = LAYOUTS.get(name, Layout())
            names = {c.name for c in cols}
            wanted = {c for cols_ in (layout.primary_key, layout.group_key, *layout.indexes) for c in cols_}
            if not wanted <= names:
                raise PublishError(f"{SCHEMA}.{name} has no column(s) {', '.join(sorted(wanted - names))} that "
                                   "pipelines/publish/snapshot.py LAYOUTS keys or indexes it by; update LAYOUTS.")
            out.append(Relation(name, tuple(cols), layout))
        return out

    def check_keys(self, relation: Relation, groups: pa.Table | None = None) -> None:
        """PublishError when a key has duplicates or NULLs (PostgreSQL would refuse the rows).

        A grouped relation is checked on its ``groups``: no NULL in the group key, and one row
        per group when the group key is the primary key too."""
        layout, where = relation.layout, f"{SCHEMA}.{relation.name}"
        if groups is not None:
            nulls = max((groups.column(c).null_count for c in layout.group_key), default=0)
            if nulls:
                raise PublishError(f"{where} has a NULL in its key ({', '.join(layout.group_key)}); fix the "
                                   "model or its entry in pipelines/publish/snapshot.py LAYOUTS.")
            if layout.primary_key == layout.group_key:
                extra = int(pc.sum(groups.column("n")).as_py() or 0) - groups.num_rows
                if extra:
                    raise PublishError(f"{where} has {extra} duplicate key(s) ({', '.join(layout.primary_key)}); "
                                       "fix the model or its primary key in pipelines/publish/snapshot.py LAYOUTS.")
                return
        query = relation.key_problems_sql()
        if query is None:
            return
        cur = self._cursor()
        try:
            total, distinct, nulls = cur.execute(query).fetchall()[0]
        finally:
            cur.close()
        if nulls:
            raise PublishError(f"{where} has {nulls} row(s) with a NULL in its key ({', '.join(layout.primary_key)}); "
                               "fix the model or its entry in pipelines/publish/snapshot.py LAYOUTS.")
        if distinct != total:
            raise PublishError(f"{where} has {total - distinct} duplicate key(s) ({', '.join(layout.primary_key)}); "
                               "fix the model or its primary key in pipelines/publish/snapshot.py LAYOUTS.")

    def fingerprint(self, relation: Relation, groups: pa.Table | None = None) -> tuple[int, int]:
        """(rows, fingerprint) of a relation; of a grouped one, from its ``groups``."""
        cur = self._cursor()
        try:
            if groups is None:
                row = cur.execute(relation.fingerprint_sql()).fetchall()[0]
            else:
                cur.register("relation_groups", groups)
                row = cur.execute(f"SELECT sum(n), CAST(hash(sum(CAST(h AS HUGEINT)), count(*)) & {_MASK} AS BIGINT)"
                                  " FROM relation_groups").fetchall()[0]
        finally:
            cur.close()
        return int(row[0] or 0), int(row[1] or 0)

    def measure(self, relation: Relation) -> Fingerprinted:
        """Groups (when grouped), key checks and fingerprint of one relation: what a publish
        compares with the last one. PublishError when its keys would not hold."""
        groups = self.groups(relation) if relation.grouped else None
        self.check_keys(relation, groups)
        rows, fingerprint = self.fingerprint(relation, groups)
        return Fingerprinted(relation, rows, fingerprint, groups)

    def groups(self, relation: Relation) -> pa.Table:
        """Every group of a grouped relation: (kh, h, n, group key columns)."""
        return self.query_arrow(relation.groups_sql())

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the snapshot connection (its own catalog and settings, so set them again)."""
        cur = self.con.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute("USE snapshot")
        return cur

    def query_arrow(self, sql: str, **tables: pa.Table) -> pa.Table:
        cur = self._cursor()
        try:
            for name, table in tables.items():
                cur.register(name, table)
            return cur.sql(sql).to_arrow_table()
        finally:
            cur.close()

    def csv_chunks(self, sql: str, **tables: pa.Table) -> Iterator[memoryview]:
        """The result of ``sql`` as CSV (no header) in chunks, produced in a worker thread.

        DuckDB and Arrow's CSV writer release the GIL, so the next chunk is being made while
        the previous one is sent to PostgreSQL."""
        chunks: queue.Queue = queue.Queue(maxsize=4)
        done = object()
        stop = threading.Event()
        options = pacsv.WriteOptions(include_header=False, batch_size=8192)

        def produce() -> None:
            cur = self._cursor()
            try:
                for name, table in tables.items():
                    cur.register(name, table)
                for batch in cur.sql(sql).to_arrow_reader(BATCH_ROWS):
                    if stop.is_set():
                        return
                    sink = pa.BufferOutputStream()
                    pacsv.write_csv(batch, sink, options)
                    chunks.put(sink.getvalue())
                chunks.put(done)
            except BaseException as exc:  # handed to the consumer, raised there
                chunks.put(exc)
            finally:
                cur.close()

        worker = threading.Thread(target=produce, name="publish-csv", daemon=True)
        worker.start()
        try:
            while True:
                item = chunks.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield memoryview(item)
        finally:
            stop.set()
            while worker.is_alive():  # the consumer stopped early: unblock a worker waiting to put
                try:
                    chunks.get_nowait()
                except queue.Empty:
                    worker.join(0.05)
            worker.join()


def _pg_type(table: str, column: str, duckdb_type: str) -> str:
    if column in JSON_COLUMNS and duckdb_type in ("VARCHAR", "JSON"):
        return "jsonb"
    if duckdb_type in PG_TYPES:
        return PG_TYPES[duckdb_type]
    if duckdb_type.startswith("DECIMAL"):
        return duckdb_type.replace("DECIMAL", "numeric")
    raise PublishError(f"column {column} of {SCHEMA}.{table} has type {duckdb_type}, which has no PostgreSQL "
                       "mapping in pipelines/publish/snapshot.py PG_TYPES; add one.")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
