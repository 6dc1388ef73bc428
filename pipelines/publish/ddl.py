"""What a publish changes in PostgreSQL's catalog: schemas, tables, keys, indexes and grants.

Everything here that needs a table to itself (dropping one) records it in ``lock_relation``
first, so a lock that does not come is reported with who holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.publish.manifest import MANIFEST
from pipelines.publish.snapshot import Relation
from pipelines.publish.state import PublishState, idents
from pipelines.publish.target import PublishError

if TYPE_CHECKING:
    import psycopg


class SchemaChanges(PublishState):
    """The DDL part of a publish (see :mod:`pipelines.publish.postgres`)."""

    def _prepare(self, cur: psycopg.Cursor) -> None:
        """Bound lock waits, take the schema's publish lock, check the reader roles, create what is missing."""
        from psycopg import sql

        cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(self.lock_timeout * 1000)}ms")))
        self.step = f"waiting for another publish to schema {self.schema} to finish"
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [self._lock_key])
        self.step = "checking the reader roles"
        if self.readers:
            cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(self.readers)])
            missing = sorted(set(self.readers) - {r for (r,) in cur.fetchall()})
            if missing:
                raise PublishError(
                    f"VOICEJOBS_POSTGRES_READERS names role(s) {', '.join(missing)}, which do not exist at "
                    f"{self.target.display}; create them (CREATE ROLE {missing[0]} LOGIN PASSWORD '...') or "
                    "remove them from the list.")
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", [[self.schema, self.meta]])
        have = {n for (n,) in cur.fetchall()}
        for name in (self.schema, self.meta):
            if name not in have:
                self.step = f"creating schema {name}"
                cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        self.step = f"reading {self.meta}.{MANIFEST}"
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (relation text PRIMARY KEY, signature text NOT NULL, rows bigint NOT NULL,"
            " fingerprint bigint NOT NULL, hash_algorithm text NOT NULL, tracked boolean NOT NULL,"
            " published_at timestamptz NOT NULL, publish_id text NOT NULL)"
        ).format(self._meta_table(MANIFEST)))

    def _existing_tables(self, cur: psycopg.Cursor) -> dict[str, int]:
        """Tables of the served schema -> their row count (an exact count: cheap next to a copy)."""
        from psycopg import sql

        self.step = f"counting the rows of the tables in schema {self.schema}"
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", [self.schema])
        names = [n for (n,) in cur.fetchall()]
        counts = {}
        for name in names:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(self._table(name)))
            counts[name] = cur.fetchone()[0]
        return counts

    def _create_table(self, cur: psycopg.Cursor, relation: Relation, *, replacing: bool) -> None:
        """The served table, empty, with the relation's columns (the old one dropped when replacing)."""
        from psycopg import sql

        table = self._table(relation.name)
        if replacing:
            self.step = f"replacing table {self.schema}.{relation.name} (its columns, keys or indexes changed)"
            self.lock_relation = f"{self.schema}.{relation.name}"
            cur.execute(sql.SQL("DROP TABLE {}").format(table))
            self.lock_relation = None
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._groups_table(relation.name)))
        self.step = f"creating table {self.schema}.{relation.name}"
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type)) for c in relation.columns)
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(table, columns))

    def _index_table(self, cur: psycopg.Cursor, relation: Relation) -> None:
        """The relation's primary key and indexes on its loaded table, then its statistics."""
        from psycopg import sql

        table = self._table(relation.name)
        self.step = f"indexing {self.schema}.{relation.name}"
        layout = relation.layout
        if layout.primary_key:
            cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(table, idents(layout.primary_key)))
        for index in layout.indexes:
            cur.execute(sql.SQL("CREATE INDEX ON {} ({})").format(table, idents(index)))
        cur.execute(sql.SQL("ANALYZE {}").format(table))

    def _create_groups_table(self, cur: psycopg.Cursor, relation: Relation) -> None:
        """groups_<name>, empty: (kh, h) and the group key of each group (job) of the relation."""
        from psycopg import sql

        key_types = {c.name: c.pg_type for c in relation.columns}
        key = sql.SQL(", ").join(
            sql.SQL("{} {} NOT NULL").format(sql.Identifier(c), sql.SQL(key_types[c])) for c in relation.layout.group_key)
        cur.execute(sql.SQL("CREATE TABLE {} (kh bigint NOT NULL, h bigint NOT NULL, {})").format(
            self._groups_table(relation.name), key))

    def _key_groups_table(self, cur: psycopg.Cursor, relation: Relation) -> None:
        from psycopg import sql

        cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (kh)").format(self._groups_table(relation.name)))

    def _drop(self, cur: psycopg.Cursor, name: str) -> None:
        """A served table that is no longer a model: gone, with its groups and its manifest row."""
        from psycopg import sql

        self.step = f"dropping table {self.schema}.{name} (no longer a model)"
        self.lock_relation = f"{self.schema}.{name}"
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._table(name)))
        self.lock_relation = None
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._groups_table(name)))
        cur.execute(sql.SQL("DELETE FROM {} WHERE relation = %s").format(self._meta_table(MANIFEST)), [name])
        self.report.dropped.append(name)

    def _grant(self, cur: psycopg.Cursor) -> None:
        from psycopg import sql

        for role in self.readers:
            self.step = f"granting {role} read access to schema {self.schema}"
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(self.schema),
                                                                         sql.Identifier(role)))
            cur.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(self.schema), sql.Identifier(role)))
