"""Publish the serving snapshot's analytics relations to PostgreSQL, for BI tools on other hosts.

    report = publish(Path("data/serving.duckdb"), Settings.from_env())

One publish is ONE PostgreSQL transaction that changes the served tables in place:

* **Readers are never blocked and never see a mix.** Rows are replaced with DELETE and
  INSERT (COPY), which take only ROW EXCLUSIVE locks; a BI query holds ACCESS SHARE, which
  does not conflict. Until the publish commits every reader sees the previous tables; a
  query (or a REPEATABLE READ transaction) that started before keeps its consistent old
  snapshot after the commit too, through PostgreSQL's MVCC; one that starts after sees the
  new tables. Renaming a freshly loaded schema into place would not do this: PostgreSQL
  resolves names against the newest catalog, so an open REPEATABLE READ transaction would
  find the new tables and, their rows being newer than its snapshot, see them empty.
* **What needs an exclusive lock waits a bounded time.** Replacing a table whose columns,
  keys or indexes changed, or dropping one that is no longer a model, needs the table to
  itself. The publish waits at most ``VOICEJOBS_POSTGRES_LOCK_TIMEOUT_SECONDS`` (default
  30) for sessions that hold it, then stops with one line naming them; nothing is changed.
  Such a table, new to readers, looks empty to a transaction that began before the publish.
* **Only what changed moves.** Each relation's fingerprint (see
  :mod:`pipelines.publish.snapshot`) is compared with the one stored at the last publish:
  an unchanged relation is skipped; a changed aggregate is replaced whole (it is small); a
  job-level relation sends only the jobs whose rows changed, and deletes the jobs that left.
  The fingerprints live in the schema ``<schema>_publish`` (``manifest`` and one
  ``groups_<relation>`` table per job-level relation), written in the same transaction.
* **Grants follow the tables**: each publish grants USAGE on the schema and SELECT on its
  tables to every role of ``VOICEJOBS_POSTGRES_READERS``, so a table created or replaced by
  a publish is readable at once.
* **Failures change nothing and say one line.** An unreachable server, a refused password, a
  missing privilege or a lock that does not come raise :class:`PublishError` naming the
  cause and the fix; the transaction rolls back. The warehouse is only read (the serving
  snapshot, attached read-only). The password never appears in a message: the server is
  named ``user@host:port/database``.

Data travels as CSV through ``COPY ... FROM STDIN``: DuckDB renders times as text and Arrow
writes the CSV in a worker thread while the previous chunk is sent (psycopg 3). ADBC's binary
COPY from Arrow was measured too: no faster for 100,000 job rows (2.26 s against 2.24 s, the
server parsing rows being the bound), and ``jsonb`` would need a text column and a cast after
it (0.7 s more); psycopg also gives the SQLSTATE classes the error messages are built on.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa

from pipelines.publish.snapshot import HASH_ALGORITHM, Fingerprinted, Relation, Snapshot, quote
from pipelines.publish.target import URL_VAR, PostgresTarget, PublishError, parse_postgres_url
from pipelines.redact import redact

if TYPE_CHECKING:
    import psycopg

    from pipelines.settings import Settings

log = logging.getLogger("voicejobs.publish")

LOCK_TIMEOUT_VAR = "VOICEJOBS_POSTGRES_LOCK_TIMEOUT_SECONDS"
APPLICATION_NAME = "voicejobs publish"
MANIFEST = "manifest"


@dataclass
class TablePublish:
    """What one publish did to one table.

    mode: ``created`` (new table), ``replaced`` (every row sent again: an aggregate that
    changed, or a table whose columns changed), ``incremental`` (only changed jobs sent) or
    ``unchanged`` (skipped)."""

    name: str
    mode: str
    rows: int
    rows_sent: int = 0
    rows_deleted: int = 0
    groups_changed: int = 0
    seconds: float = 0.0


@dataclass
class PublishReport:
    target: str
    schema: str
    publish_id: str
    tables: list[TablePublish] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    readers: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def unchanged(self) -> list[str]:
        return [t.name for t in self.tables if t.mode == "unchanged"]

    @property
    def rewritten(self) -> list[str]:
        return [t.name for t in self.tables if t.mode != "unchanged"]

    @property
    def rows_sent(self) -> int:
        return sum(t.rows_sent for t in self.tables)

    @property
    def rows(self) -> dict[str, int]:
        return {t.name: t.rows for t in self.tables}

    def summary(self) -> str:
        moved = ", ".join(f"{t.name} {t.mode} ({t.rows_sent:,} rows sent)" for t in self.tables if t.mode != "unchanged")
        lines = [
            f"published {len(self.tables)} tables to schema {self.schema} at {self.target} in {self.seconds:.1f} s: "
            f"{self.rows_sent:,} rows sent, {len(self.unchanged)} tables unchanged",
        ]
        if moved:
            lines.append(f"  changed: {moved}")
        if self.dropped:
            lines.append(f"  dropped (no longer a model): {', '.join(self.dropped)}")
        if self.readers:
            lines.append(f"  readable by: {', '.join(self.readers)}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "schema": self.schema,
            "publish_id": self.publish_id,
            "seconds": round(self.seconds, 3),
            "rows_sent": self.rows_sent,
            "rows": self.rows,
            "unchanged": self.unchanged,
            "dropped": self.dropped,
            "tables": {t.name: {"mode": t.mode, "rows": t.rows, "rows_sent": t.rows_sent,
                                "rows_deleted": t.rows_deleted, "groups_changed": t.groups_changed,
                                "seconds": round(t.seconds, 3)} for t in self.tables},
        }


@dataclass(frozen=True)
class _Published:
    """A manifest row: what the last publish left in a table."""

    signature: str
    rows: int
    fingerprint: int
    hash_algorithm: str
    tracked: bool  # its groups_<name> table lists its groups


def publish(serving_path: Path, settings: Settings) -> PublishReport:
    """Publish every relation of ``serving_path``'s analytics schema to ``settings.postgres_url``.

    Raises PublishError (one line, nothing changed) when it cannot; see the module docstring."""
    if not settings.postgres_url:
        raise PublishError(f"{URL_VAR} is not set; set it to the PostgreSQL database BI tools read, "
                           "e.g. postgresql://voicejobs@db:5432/analytics.")
    target = parse_postgres_url(settings.postgres_url)
    started = time.monotonic()
    with Snapshot(serving_path) as snapshot:
        relations = snapshot.relations()
        run = _Publish(target, settings, snapshot)
        report = run.run(relations)
    report.seconds = time.monotonic() - started
    log.info("%s", report.summary())
    return report


class _Publish:
    """One publish over one connection; ``step`` says what it is doing, for error messages."""

    def __init__(self, target: PostgresTarget, settings: Settings, snapshot: Snapshot) -> None:
        self.target = target
        self.schema = settings.postgres_schema
        self.meta = f"{self.schema}_publish"
        self.readers = tuple(settings.postgres_readers)
        self.lock_timeout = float(settings.postgres_lock_timeout_seconds)
        self.snapshot = snapshot
        self.step = "connecting"
        self.lock_relation: str | None = None  # the table a lock is being waited for
        self.report = PublishReport(target=target.display, schema=self.schema, publish_id=uuid.uuid4().hex,
                                    readers=self.readers)
        # relation -> (rows, fingerprint) sent, and whether its groups_<name> table lists its groups
        self.fingerprints: dict[str, tuple[int, int]] = {}
        self.tracked: dict[str, bool] = {}

    # ------------------------------------------------------------------ the transaction

    def run(self, relations: list[Relation]) -> PublishReport:
        import psycopg

        conn = self._connect()
        try:
            with conn.transaction():
                cur = conn.cursor()
                self._prepare(cur)
                published = self._manifest(cur)
                existing = self._existing_tables(cur)
                for measured in self._measured(relations):
                    self.report.tables.append(self._relation(cur, measured, published.get(measured.relation.name),
                                                             existing))
                names = {r.name for r in relations}
                for gone in sorted(set(published) - names):
                    self._drop(cur, gone)
                self._grant(cur)
                self._write_manifest(cur, relations, published)
                self.step = "committing"
        except psycopg.Error as exc:
            raise self._explain(conn, exc) from None
        except duckdb.Error as exc:
            raise PublishError(f"reading the serving snapshot {self.snapshot.path} failed while {self.step} "
                               f"({_reason(str(exc))}); nothing was changed in PostgreSQL; run `voicejobs sync` "
                               "to write a new snapshot and publish again.") from None
        finally:
            conn.close()
        return self.report

    def _connect(self) -> psycopg.Connection:
        import psycopg

        options: dict[str, Any] = {"autocommit": True, "application_name": APPLICATION_NAME}
        if "connect_timeout" not in self.target.conninfo:
            options["connect_timeout"] = 10
        try:
            return psycopg.connect(self.target.conninfo, **options)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None

    def _prepare(self, cur: psycopg.Cursor) -> None:
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

    def _manifest(self, cur: psycopg.Cursor) -> dict[str, _Published]:
        from psycopg import sql

        cur.execute(sql.SQL("SELECT relation, signature, rows, fingerprint, hash_algorithm, tracked FROM {}")
                    .format(self._meta_table(MANIFEST)))
        return {name: _Published(sig, rows, fp, algo, tracked) for name, sig, rows, fp, algo, tracked in cur.fetchall()}

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

    # ------------------------------------------------------------------ one relation

    def _measured(self, relations: list[Relation]) -> Iterator[Fingerprinted]:
        """Each relation measured in DuckDB, the next one in a worker thread while PostgreSQL
        applies the current one (one ahead: the groups of a big relation take ~100 MB)."""
        if not relations:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-measure") as pool:
            ahead = pool.submit(self.snapshot.measure, relations[0])
            for following in [*relations[1:], None]:
                current = ahead
                self.step = "fingerprinting the serving snapshot's relations"
                measured = current.result()
                ahead = pool.submit(self.snapshot.measure, following) if following is not None else None
                try:
                    yield measured
                except BaseException:
                    if ahead is not None:
                        ahead.cancel()
                    raise

    def _relation(self, cur: psycopg.Cursor, measured: Fingerprinted, published: _Published | None,
                  existing: dict[str, int]) -> TablePublish:
        started = time.monotonic()
        relation, rows, fingerprint, groups = measured.relation, measured.rows, measured.fingerprint, measured.groups
        in_place = relation.name in existing
        if published is None or not in_place or published.signature != relation.signature:
            result = self._create(cur, relation, rows, groups, replacing=in_place)
        else:
            # The stored fingerprints describe the table only if they were made by this hash and
            # nobody changed its rows since; otherwise every row is sent again (still MVCC-safe).
            trusted = published.hash_algorithm == HASH_ALGORITHM and published.rows == existing[relation.name]
            if trusted and published.fingerprint == fingerprint and published.rows == rows:
                result = TablePublish(relation.name, "unchanged", rows)
            elif trusted and groups is not None and published.tracked:
                result = self._incremental(cur, relation, rows, groups)
            else:
                result = self._replace_rows(cur, relation, rows, groups)
        result.seconds = time.monotonic() - started
        if result.mode != "unchanged":
            self.fingerprints[relation.name] = (rows, fingerprint)
        log.info("%s.%s: %s, %d rows sent in %.2f s", self.schema, relation.name, result.mode, result.rows_sent,
                 result.seconds)
        return result

    def _create(self, cur: psycopg.Cursor, relation: Relation, rows: int, groups: pa.Table | None, *,
                replacing: bool) -> TablePublish:
        """A new table (or one whose columns, keys or indexes changed): create, load, index."""
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
        sent = self._copy_rows(cur, relation, None)
        self.step = f"indexing {self.schema}.{relation.name}"
        layout = relation.layout
        if layout.primary_key:
            cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(table, _idents(layout.primary_key)))
        for index in layout.indexes:
            cur.execute(sql.SQL("CREATE INDEX ON {} ({})").format(table, _idents(index)))
        cur.execute(sql.SQL("ANALYZE {}").format(table))
        if groups is not None:
            key_types = {c.name: c.pg_type for c in relation.columns}
            key = sql.SQL(", ").join(
                sql.SQL("{} {} NOT NULL").format(sql.Identifier(c), sql.SQL(key_types[c])) for c in layout.group_key)
            cur.execute(sql.SQL("CREATE TABLE {} (kh bigint NOT NULL, h bigint NOT NULL, {})").format(
                self._groups_table(relation.name), key))
            self.tracked[relation.name] = self._track_groups(cur, relation, groups)
            cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (kh)").format(self._groups_table(relation.name)))
        return TablePublish(relation.name, "replaced" if replacing else "created", rows, rows_sent=sent,
                            groups_changed=groups.num_rows if groups is not None else 0)

    def _replace_rows(self, cur: psycopg.Cursor, relation: Relation, rows: int,
                      groups: pa.Table | None) -> TablePublish:
        """Every row of an existing table deleted and sent again (in the transaction, so readers never notice)."""
        from psycopg import sql

        self.step = f"replacing the rows of {self.schema}.{relation.name}"
        cur.execute(sql.SQL("DELETE FROM {}").format(self._table(relation.name)))
        deleted = cur.rowcount
        sent = self._copy_rows(cur, relation, None)
        if groups is not None:
            cur.execute(sql.SQL("DELETE FROM {}").format(self._groups_table(relation.name)))
            self.tracked[relation.name] = self._track_groups(cur, relation, groups)
        cur.execute(sql.SQL("ANALYZE {}").format(self._table(relation.name)))
        return TablePublish(relation.name, "replaced", rows, rows_sent=sent, rows_deleted=deleted,
                            groups_changed=groups.num_rows if groups is not None else 0)

    def _incremental(self, cur: psycopg.Cursor, relation: Relation, rows: int, groups: pa.Table) -> TablePublish:
        """Only the groups (jobs) whose fingerprint changed: their old rows deleted, their new rows sent.

        No ANALYZE: a nightly change moves the statistics little, and autovacuum's own analyze
        follows larger changes."""
        from psycopg import sql

        if not _unique(groups.column("kh")):
            return self._replace_rows(cur, relation, rows, groups)
        self.step = f"comparing the jobs of {self.schema}.{relation.name}"
        previous = self._stored_groups(cur, relation)
        sent_groups = self.snapshot.query_arrow(
            "SELECT * FROM cur_groups c ANTI JOIN old_groups o ON o.kh = c.kh AND o.h = c.h",
            cur_groups=groups, old_groups=previous)
        gone = self.snapshot.query_arrow(
            "SELECT kh FROM old_groups o ANTI JOIN cur_groups c ON c.kh = o.kh AND c.h = o.h",
            cur_groups=groups.select(["kh", "h"]), old_groups=previous).column("kh").to_numpy()
        self.step = f"updating the changed jobs of {self.schema}.{relation.name}"
        table, stored = self._table(relation.name), self._groups_table(relation.name)
        deleted = 0
        if len(gone):
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
        sent = 0
        if sent_groups.num_rows:
            sent = self._copy_rows(cur, relation, sent_groups)
            self._track_groups(cur, relation, sent_groups)
        self.tracked[relation.name] = True
        changed = len(np.union1d(gone, sent_groups.column("kh").to_numpy()))
        return TablePublish(relation.name, "incremental", rows, rows_sent=sent, rows_deleted=deleted,
                            groups_changed=changed)

    # ------------------------------------------------------------------ data movement

    def _copy_rows(self, cur: psycopg.Cursor, relation: Relation, only: pa.Table | None) -> int:
        """COPY the relation's rows (of the groups in ``only``, else all) into the served table."""
        from psycopg import sql

        self.step = f"copying rows into {self.schema}.{relation.name}"
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            self._table(relation.name), _idents(c.name for c in relation.columns))
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

        if not _unique(groups.column("kh")):
            return False
        self.step = f"recording the fingerprints of {self.schema}.{relation.name}"
        statement = sql.SQL("COPY {} (kh, h, {}) FROM STDIN (FORMAT csv)").format(
            self._groups_table(relation.name), _idents(relation.layout.group_key))
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

    # ------------------------------------------------------------------ the rest of the transaction

    def _drop(self, cur: psycopg.Cursor, name: str) -> None:
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

    def _write_manifest(self, cur: psycopg.Cursor, relations: list[Relation], published: dict[str, _Published]) -> None:
        from psycopg import sql

        self.step = f"writing {self.meta}.{MANIFEST}"
        now = datetime.now(UTC)
        manifest = self._meta_table(MANIFEST)
        for relation in relations:
            if relation.name not in self.fingerprints:
                continue  # unchanged: its manifest row stands
            rows, fingerprint = self.fingerprints[relation.name]
            tracked = self.tracked.get(relation.name, False)
            cur.execute(sql.SQL(
                "INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (relation) DO UPDATE SET"
                " signature = excluded.signature, rows = excluded.rows, fingerprint = excluded.fingerprint,"
                " hash_algorithm = excluded.hash_algorithm, tracked = excluded.tracked,"
                " published_at = excluded.published_at, publish_id = excluded.publish_id").format(manifest),
                [relation.name, relation.signature, rows, fingerprint, HASH_ALGORITHM, tracked, now,
                 self.report.publish_id])

    # ------------------------------------------------------------------ names

    @property
    def _lock_key(self) -> str:
        """The advisory lock that makes publishes to one schema take turns."""
        return f"voicejobs publish {self.schema}"

    def _table(self, name: str):
        from psycopg import sql

        return sql.Identifier(self.schema, name)

    def _groups_table(self, name: str):
        from psycopg import sql

        return sql.Identifier(self.meta, f"groups_{name}")

    def _meta_table(self, name: str):
        from psycopg import sql

        return sql.Identifier(self.meta, name)

    # ------------------------------------------------------------------ errors

    def _connect_error(self, exc: BaseException) -> PublishError:
        where, user, db = self.target.display, self.target.role, self.target.database
        text = str(exc)
        lower = text.lower()
        detail = _reason(text)
        if "password authentication failed" in lower or "authentication failed" in lower:
            return PublishError(f"PostgreSQL at {where} refused the password of user {user}; set the right password "
                                f"in {URL_VAR} (postgresql://user:password@host/db), PGPASSWORD or ~/.pgpass.")
        if "no password supplied" in lower or "password is required" in lower:
            return PublishError(f"PostgreSQL at {where} asks user {user} for a password and none was given; put it "
                                f"in {URL_VAR} (postgresql://user:password@host/db), PGPASSWORD or ~/.pgpass.")
        if "does not exist" in lower and "database" in lower:
            return PublishError(f"database {db} does not exist at {where}; create it (CREATE DATABASE {db} OWNER "
                                f"{user}) or correct the database name in {URL_VAR}.")
        if "does not exist" in lower and "role" in lower:
            return PublishError(f"user {user} does not exist at {where}; create it (CREATE ROLE {user} LOGIN "
                                f"PASSWORD '...') or correct the user in {URL_VAR}.")
        if "pg_hba.conf" in lower:
            return PublishError(f"PostgreSQL at {where} does not accept connections from this machine for user "
                                f"{user} (pg_hba.conf); ask its administrator to allow them.")
        if "connect privilege" in lower or "permission denied for database" in lower:
            return PublishError(f"user {user} may not connect to database {db} at {where}; as its owner run: "
                                f"GRANT CONNECT ON DATABASE {db} TO {user}.")
        if any(s in lower for s in ("connection refused", "could not translate host name", "timeout expired",
                                     "no route to host", "network is unreachable", "name or service not known",
                                     "could not connect", "connection timed out", "no such file or directory")):
            return PublishError(f"cannot reach PostgreSQL at {where} ({detail}); check the host and port in "
                                f"{URL_VAR} and that the server runs and accepts TCP connections from this machine.")
        return PublishError(f"cannot connect to PostgreSQL at {where} ({detail}); check {URL_VAR}.")

    def _explain(self, conn: psycopg.Connection, exc: BaseException) -> PublishError:
        import psycopg
        from psycopg import errors

        where, user, db = self.target.display, self.target.role, self.target.database
        detail = _reason(str(exc))
        unchanged = "nothing was changed"
        if isinstance(exc, errors.LockNotAvailable):
            holders = self._lock_holders(conn)
            return PublishError(
                f"the publish waited {self.lock_timeout:g} s ({LOCK_TIMEOUT_VAR}) while {self.step}, for "
                f"{holders}; {unchanged}; publish again once it is free, or raise {LOCK_TIMEOUT_VAR}.")
        if isinstance(exc, errors.InsufficientPrivilege):
            if self.step.startswith("creating schema"):
                return PublishError(
                    f"user {user} may not create schemas in database {db} at {where} ({detail}); as an owner of the "
                    f"database run: GRANT CREATE ON DATABASE {db} TO {user}; or create the schemas {self.schema} "
                    f"and {self.meta} owned by {user}.")
            return PublishError(
                f"user {user} lacks a privilege while {self.step} at {where} ({detail}); the publisher must own "
                f"the schemas {self.schema} and {self.meta} and their tables: ALTER SCHEMA {self.schema} OWNER TO "
                f"{user} (likewise {self.meta}); {unchanged}.")
        if isinstance(exc, errors.DiskFull | errors.OutOfMemory):
            return PublishError(f"PostgreSQL at {where} ran out of space while {self.step} ({detail}); {unchanged}; "
                                "free space on the server and publish again.")
        if isinstance(exc, psycopg.OperationalError) and conn.closed:
            return PublishError(f"the connection to PostgreSQL at {where} was lost while {self.step} ({detail}); "
                                f"{unchanged} (a publish is one transaction); publish again.")
        return PublishError(f"publishing to PostgreSQL at {where} failed while {self.step} ({detail}); {unchanged}.")

    def _lock_holders(self, conn: psycopg.Connection) -> str:
        """Who holds what the publish waited for (a table, or another publish's lock), from pg_locks."""
        if self.lock_relation is not None:
            what = f"table {self.lock_relation}"
            where, param = "l.relation = to_regclass(%s)", _qualified_text(self.lock_relation)
        elif self.step.startswith("waiting for another publish"):
            what = f"the publish lock of schema {self.schema}"
            where = ("l.locktype = 'advisory' AND l.objsubid = 1"
                     " AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(%s, 0)")
            param = self._lock_key
        else:
            return "a lock another session holds"
        rows = []
        if not conn.closed:
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT DISTINCT a.pid, a.usename, a.application_name, a.state, a.xact_start FROM pg_locks l"
                        f" JOIN pg_stat_activity a ON a.pid = l.pid WHERE {where} AND l.granted"
                        " AND a.pid <> pg_backend_pid() ORDER BY a.pid", [param])
                    rows = cur.fetchall()
            except Exception:  # the explanation must not fail on its own
                rows = []
        if not rows:
            return f"{what}, held by another session"
        who = "; ".join(
            f"pid {pid} (user {usename}{', ' + app if app else ''}, {state}"
            f"{' since ' + started.astimezone(UTC).strftime('%H:%M:%S UTC') if started else ''})"
            for pid, usename, app, state, started in rows[:3])
        return f"{what}, held by {who}"


def _qualified_text(relation: str) -> str:
    schema, _, name = relation.partition(".")
    return f'"{schema}"."{name}"'


def _idents(columns: Iterable[str]):
    from psycopg import sql

    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)


def _unique(column: pa.ChunkedArray) -> bool:
    values = column.to_numpy()
    return len(np.unique(values)) == len(values)


def _reason(text: str) -> str:
    """The useful part of a libpq/PostgreSQL message, on one line, redacted."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else "unknown error"
    for prefix in ("connection failed:",):
        if line.startswith(prefix):
            line = line[len(prefix):].strip()
    if "failed:" in line:
        line = line.split("failed:", 1)[1].strip() or line
    line = line.replace("FATAL:", "").strip()
    return redact(line)[:300]
