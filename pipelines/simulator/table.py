"""The job table: one growable numpy column per field, one row per job, and its caches.

Row number = insertion order, so a million jobs cost tens of megabytes. Beside the columns
the table keeps what is derived from them: each row's served JSON bytes (filled by
:mod:`.render`) and each project's sort indexes (built by :mod:`.listing`). Every change
goes through :meth:`JobTable.append`, :meth:`JobTable.touch` or :meth:`JobTable.delete`,
which drop exactly the cached bytes and indexes the change makes stale.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from . import catalog as C

DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Bits of the "flags" column.
F_NULLS = 1  # empty fields sent as null instead of omitted
F_EXTRA = 2  # unknown top-level fields
F_ASSESS_EXTRA = 4  # unknown fields inside assess_result
F_SIGNED_AUTH = 8  # voice_authorization_url is a pre-signed URL
F_SIGNED_INPUT = 16  # training_input_source_url is a pre-signed URL
F_PHONE = 32
F_DHTMS = 64
F_ASSESS = 128

COLUMNS: dict[str, type] = {
    "project": np.int16,
    "id_hi": np.uint64,
    "id_lo": np.uint64,
    "salt": np.uint64,
    "create_ms": np.int64,
    "update_ms": np.int64,
    "secs": np.bool_,  # timestamps served in epoch seconds instead of milliseconds
    "state": np.int8,
    "job_type": np.int8,
    "sex": np.int8,
    "language": np.int8,
    "output_language": np.int8,
    "tag": np.int8,
    "create_type": np.int8,
    "voice": np.int16,
    "batch": np.int16,
    "app_user": np.int16,
    "reject": np.int8,
    "failure": np.int8,
    "charge": np.int8,
    "ondemand": np.int8,
    "remake": np.int8,
    "flags": np.uint8,
    "deleted": np.bool_,
}

APP_USERS: tuple[str, ...] = tuple(f"app-user-{k:04d}" for k in range(400)) + tuple(
    f"tenant{t}.studio-{k:02d}" for t in range(4) for k in range(25)
)
SUCCEED = C.STATE_CODE["SUCCEED"]
FAILED = C.STATE_CODE["FAILED"]
REJECT = C.STATE_CODE["USER_REVIEW_REJECT"]


def ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(ms))


def datetime_to_ms(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(milliseconds=1)


def rfc3339(ms: int) -> str:
    """``2025-01-10T08:43:17Z``, or with milliseconds when they are not zero."""
    moment = ms_to_datetime(ms)
    if ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class JobTable:
    """Columns of :data:`COLUMNS` (``cols[name][:n]`` is live), cached JSON bytes per row
    (``blobs``) and sort indexes per ``(project code, "create" | "update")`` (``indexes``)."""

    def __init__(self) -> None:
        self.cols: dict[str, np.ndarray] = {name: np.zeros(0, dtype=dtype) for name, dtype in COLUMNS.items()}
        self.n = 0
        self.blobs: list[bytes | None] = []
        self.indexes: dict[tuple[int, str], Any] = {}

    def col(self, name: str) -> np.ndarray:
        """The live part of one column (a view: writes go to the table)."""
        return self.cols[name][: self.n]

    def append(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Append rows (one array per column, all the same length); returns their row numbers."""
        count = len(columns["create_ms"])
        needed = self.n + count
        capacity = len(self.cols["create_ms"])
        if needed > capacity:
            new_capacity = max(needed, int(capacity * 1.5) + 1024)
            for name, array in self.cols.items():
                grown = np.zeros(new_capacity, dtype=array.dtype)
                grown[: self.n] = array[: self.n]
                self.cols[name] = grown
        for name, array in self.cols.items():
            array[self.n : needed] = columns.get(name, 0)
        rows = np.arange(self.n, needed)
        self.n = needed
        self.blobs.extend([None] * count)
        for code in np.unique(columns["project"]).tolist():
            self.indexes.pop((code, "create"), None)
            self.indexes.pop((code, "update"), None)
        return rows

    def touch(self, rows: np.ndarray, *, updated: bool = False, deleted: bool = False) -> None:
        """Drop caches that ``rows`` feed into: their bytes, and with ``updated`` the update-time
        indexes of their projects, with ``deleted`` those indexes' listed counts."""
        for row in rows.tolist():
            self.blobs[row] = None
        for code in np.unique(self.cols["project"][rows]).tolist():
            if updated:
                self.indexes.pop((code, "update"), None)
            if deleted:
                for key in ("create", "update"):
                    index = self.indexes.get((code, key))
                    if index is not None:
                        index.forget_counts()

    def recreate(self, rows: np.ndarray, create_ms: int) -> None:
        """Give ``rows`` another creation time (and an update time not before it)."""
        self.cols["create_ms"][rows] = create_ms
        self.cols["update_ms"][rows] = np.maximum(self.cols["update_ms"][rows], create_ms)
        self.touch(rows, updated=True)
        for code in np.unique(self.cols["project"][rows]).tolist():
            self.indexes.pop((code, "create"), None)

    def delete(self, rows: np.ndarray) -> None:
        self.cols["deleted"][rows] = True
        self.touch(rows, deleted=True)

    def job_id(self, row: int) -> str:
        return f"{int(self.cols['id_hi'][row]):016x}{int(self.cols['id_lo'][row]):016x}"

    def job_ids(self, rows: np.ndarray) -> list[str]:
        return [
            f"{hi:016x}{lo:016x}"
            for hi, lo in zip(
                self.cols["id_hi"][rows].tolist(), self.cols["id_lo"][rows].tolist(), strict=True
            )
        ]

    def listed_rows_with_ids(self, job_ids: set[str]) -> np.ndarray:
        """Rows of listed (not deleted) jobs whose id is in ``job_ids``, in row order."""
        rows = np.flatnonzero(~self.col("deleted"))
        return np.array([r for r in rows.tolist() if self.job_id(r) in job_ids], dtype=np.int64)
