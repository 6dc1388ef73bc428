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

The publish's parts, each in its own module of this package: what it knows while it runs and
the names it writes (state), the connection and its failures (connection), the catalog
changes (ddl), COPY (loading), the fingerprints of the last publish (manifest) and what a
publish reports (report). This module holds the transaction and what it does per relation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa

from pipelines.publish.connection import APPLICATION_NAME, LOCK_TIMEOUT_VAR, Connecting, reason
from pipelines.publish.ddl import SchemaChanges
from pipelines.publish.loading import Loading, unique
from pipelines.publish.manifest import MANIFEST, Manifest, Published
from pipelines.publish.report import PublishReport, TablePublish
from pipelines.publish.snapshot import HASH_ALGORITHM, Fingerprinted, Relation, Snapshot
from pipelines.publish.target import URL_VAR, PublishError, parse_postgres_url

if TYPE_CHECKING:
    import psycopg

    from pipelines.settings import Settings

__all__ = ["APPLICATION_NAME", "LOCK_TIMEOUT_VAR", "MANIFEST", "PublishReport", "TablePublish", "publish"]

log = logging.getLogger("voicejobs.publish")


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


class _Publish(Connecting, SchemaChanges, Manifest, Loading):
    """One publish over one connection; ``step`` says what it is doing, for error messages."""

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
                               f"({reason(str(exc))}); nothing was changed in PostgreSQL; run `voicejobs sync` "
                               "to write a new snapshot and publish again.") from None
        finally:
            conn.close()
        return self.report

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

    # ------------------------------------------------------------------ one relation

    def _relation(self, cur: psycopg.Cursor, measured: Fingerprinted, published: Published | None,
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
        self._create_table(cur, relation, replacing=replacing)
        sent = self._copy_rows(cur, relation, None)
        self._index_table(cur, relation)
        if groups is not None:
            self._create_groups_table(cur, relation)
            self.tracked[relation.name] = self._track_groups(cur, relation, groups)
            self._key_groups_table(cur, relation)
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
        if not unique(groups.column("kh")):
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
        deleted = self._delete_groups(cur, relation, gone) if len(gone) else 0
        sent = 0
        if sent_groups.num_rows:
            sent = self._copy_rows(cur, relation, sent_groups)
            self._track_groups(cur, relation, sent_groups)
        self.tracked[relation.name] = True
        changed = len(np.union1d(gone, sent_groups.column("kh").to_numpy()))
        return TablePublish(relation.name, "incremental", rows, rows_sent=sent, rows_deleted=deleted,
                            groups_changed=changed)
