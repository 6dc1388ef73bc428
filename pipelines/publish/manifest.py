"""The publish's memory: ``<schema>_publish.manifest``, one row per served table.

A row says what the last publish left in the table (its signature, row count and
fingerprint, the hash that made it, and whether ``groups_<name>`` lists its groups), so the
next publish skips what did not change and sends only the jobs that did.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pipelines.publish.snapshot import HASH_ALGORITHM, Relation
from pipelines.publish.state import PublishState

if TYPE_CHECKING:
    import psycopg

MANIFEST = "manifest"


@dataclass(frozen=True)
class Published:
    """A manifest row: what the last publish left in a table."""

    signature: str
    rows: int
    fingerprint: int
    hash_algorithm: str
    tracked: bool  # its groups_<name> table lists its groups


class Manifest(PublishState):
    """The manifest part of a publish (see :mod:`pipelines.publish.postgres`)."""

    def _manifest(self, cur: psycopg.Cursor) -> dict[str, Published]:
        from psycopg import sql

        cur.execute(sql.SQL("SELECT relation, signature, rows, fingerprint, hash_algorithm, tracked FROM {}")
                    .format(self._meta_table(MANIFEST)))
        return {name: Published(sig, rows, fp, algo, tracked) for name, sig, rows, fp, algo, tracked in cur.fetchall()}

    def _write_manifest(self, cur: psycopg.Cursor, relations: list[Relation], published: dict[str, Published]) -> None:
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
