"""What one publish knows while it runs, and the names of what it writes in PostgreSQL.

:class:`PublishState` is the base of the publish's parts (schema changes, loading, the
manifest, the connection and its failures; see :mod:`pipelines.publish.postgres`): the
target, the schemas, ``step`` (what it is doing, for error messages), the table a lock is
being waited for, and what it has sent so far.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pipelines.publish.report import PublishReport
from pipelines.publish.snapshot import Snapshot
from pipelines.publish.target import PostgresTarget

if TYPE_CHECKING:
    from psycopg import sql

    from pipelines.settings import Settings


class PublishState:
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

    @property
    def _lock_key(self) -> str:
        """The advisory lock that makes publishes to one schema take turns."""
        return f"voicejobs publish {self.schema}"

    def _table(self, name: str) -> sql.Identifier:
        """A served table: ``<schema>.<name>``."""
        from psycopg import sql

        return sql.Identifier(self.schema, name)

    def _meta_table(self, name: str) -> sql.Identifier:
        """A table of the publish's own bookkeeping: ``<schema>_publish.<name>``."""
        from psycopg import sql

        return sql.Identifier(self.meta, name)

    def _groups_table(self, name: str) -> sql.Identifier:
        """The fingerprints of a job-level relation's groups: ``<schema>_publish.groups_<name>``."""
        return self._meta_table(f"groups_{name}")


def idents(columns: Iterable[str]) -> sql.Composed:
    """``"a", "b"``: column names quoted for PostgreSQL."""
    from psycopg import sql

    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)
