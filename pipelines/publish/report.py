"""What a publish did: a line per table (created, replaced, incremental or unchanged) and the totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
