"""Moving rows into PostgreSQL: ``COPY ... FROM STDIN`` from the serving snapshot.

Rows travel as CSV that DuckDB and Arrow write in a worker thread while the previous chunk is
sent (see :meth:`Snapshot.csv_chunks <pipelines.publish.snapshot.Snapshot.csv_chunks>`); a
job-level relation's group fingerprints travel the same way into ``groups_<name>``, and come
back as one bytea when the next publish compares them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipelines.publish.snapshot import Relation, quote
from pipelines.publish.state import PublishState, idents

if TYPE_CHECKING:
    import psycopg


class Loading(PublishState):
    """The COPY part of a publish (see :mod:`pipelines.publish.postgres`)."""

    def _copy_rows(self, cur: psycopg.Cursor, relation: Relation, only: pa.Table | None) -> int:
        """COPY the relation's rows (of the groups in ``only``, else all) into the served table."""
        from psycopg import sql

        self.step = f"copying rows into {self.schema}.{relation.name}"
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            self._table(relation.name), idents(c.name for c in relation.columns))
        if only is None:
            query, tables = relation.rows_sql(), {}
        else:
            query, tables = relation.rows_sql("only_groups"), {"only_groups": only}
        with cur.copy(statement) as copy:
            for chunk in self.snapshot.csv_chunks(query, **tables):
                copy.write(chunk)
        return cur.rowcount

    def _track_groups(self, cur: psycopg.Cursor, relation: Relation, groups: pa.Table) -> bool:
        """COPY (kh, h, group key) of ``groups`` into groups_<name>; False, storing none, when two
        group keys share a hash (then the table is replaced whole until they no longer do)."""
        from psycopg import sql

        if not unique(groups.column("kh")):
            return False
        self.step = f"recording the fingerprints of {self.schema}.{relation.name}"
        statement = sql.SQL("COPY {} (kh, h, {}) FROM STDIN (FORMAT csv)").format(
            self._groups_table(relation.name), idents(relation.layout.group_key))
        key = ", ".join(quote(c) for c in relation.layout.group_key)
        with cur.copy(statement) as copy:
            for chunk in self.snapshot.csv_chunks(f"SELECT kh, h, {key} FROM these_groups", these_groups=groups):
                copy.write(chunk)
        return True

    def _stored_groups(self, cur: psycopg.Cursor, relation: Relation) -> pa.Table:
        """(kh, h) of every group stored at the last publish: one bytea of big-endian pairs, into numpy."""
        from psycopg import sql

        cur.execute(sql.SQL("SELECT string_agg(int8send(kh) || int8send(h), ''::bytea) FROM {}")
                    .format(self._groups_table(relation.name)), binary=True)
        data = cur.fetchone()[0] or b""
        pairs = np.frombuffer(data, dtype=">i8").reshape(-1, 2)
        return pa.table({"kh": pa.array(pairs[:, 0].astype(np.int64)), "h": pa.array(pairs[:, 1].astype(np.int64))})

    def _delete_groups(self, cur: psycopg.Cursor, relation: Relation, gone: np.ndarray) -> int:
        """Delete the rows, and the stored fingerprints, of the groups whose key hash is in ``gone``;
        the rows deleted."""
        from psycopg import sql

        table, stored = self._table(relation.name), self._groups_table(relation.name)
        cur.execute("CREATE TEMP TABLE publish_gone (kh bigint PRIMARY KEY) ON COMMIT DROP")
        with cur.copy("COPY publish_gone (kh) FROM STDIN") as copy:
            copy.write("\n".join(map(str, gone.tolist())) + "\n")
        cur.execute("ANALYZE publish_gone")
        join = sql.SQL(" AND ").join(
            sql.SQL("t.{c} = g.{c}").format(c=sql.Identifier(c)) for c in relation.layout.group_key)
        cur.execute(sql.SQL("DELETE FROM {} AS t USING {} AS g, publish_gone AS x WHERE g.kh = x.kh AND {}")
                    .format(table, stored, join))
        deleted = cur.rowcount
        cur.execute(sql.SQL("DELETE FROM {} AS g USING publish_gone AS x WHERE g.kh = x.kh").format(stored))
        cur.execute("DROP TABLE publish_gone")
        return deleted


def unique(column: pa.ChunkedArray) -> bool:
    values = column.to_numpy()
    return len(np.unique(values)) == len(values)
