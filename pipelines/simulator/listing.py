"""Listing: which rows a list request matches, in which order, and which of them its page holds.

Each project has one sort index per time key (creation, last update), built on first use and
dropped by the table when a change makes it stale. An index narrows a request to its time
window by binary search; without further filters, counts and pages come from prefix sums of
listed rows, so deep pages of a large project cost no more than the first.
"""

from __future__ import annotations

import numpy as np

from . import catalog as C
from .params import ListParams
from .table import APP_USERS, JobTable

_APP_USER_CODE = {name: code for code, name in enumerate(APP_USERS)}
_VOICE_CODE = {name: code for code, name in enumerate(C.VOICE_NAMES)}
_BATCH_CODE = {name: code for code, name in enumerate(C.BATCH_NAMES)}
_TAG_CODE = {name: code for code, name in enumerate(C.TAGS)}
_JOB_TYPE_CODE = {name: code for code, name in enumerate(C.JOB_TYPES)}
_HEX = frozenset("0123456789abcdef")


class SortIndex:
    """Rows of one project ordered by one time key; ties keep insertion order."""

    __slots__ = ("order", "keys", "_cum")

    def __init__(self, rows: np.ndarray, key: np.ndarray) -> None:
        perm = np.argsort(key[rows], kind="stable")
        self.order = rows[perm]
        self.keys = key[self.order]
        self._cum: np.ndarray | None = None

    def cum(self, deleted: np.ndarray) -> np.ndarray:
        """Prefix counts of listed (not deleted) rows: cum[i] = listed among order[:i]."""
        if self._cum is None:
            cum = np.zeros(len(self.order) + 1, dtype=np.int64)
            np.cumsum(~deleted[self.order], out=cum[1:])
            self._cum = cum
        return self._cum

    def forget_counts(self) -> None:
        """Rows were deleted: the order stands, the prefix counts must be recounted."""
        self._cum = None


def sort_index(table: JobTable, project: int, key: str) -> SortIndex:
    """The ``"create"`` or ``"update"`` index of ``project``, from the table's cache."""
    index = table.indexes.get((project, key))
    if index is None:
        rows = np.flatnonzero(table.col("project") == project)
        index = SortIndex(rows, table.col("create_ms" if key == "create" else "update_ms"))
        table.indexes[(project, key)] = index
    return index


def _filtered(params: ListParams, app_user: str | None) -> bool:
    """Whether the request filters beyond the sort key's window."""
    return (
        app_user is not None
        or params.states is not None
        or params.job_id is not None
        or params.voice_name is not None
        or params.tag is not None
        or params.job_type is not None
        or params.batch_name is not None
        or params.is_ondemand_resource is not None
    )


def _matching(
    table: JobTable, project: int, params: ListParams, app_user: str | None
) -> tuple[SortIndex, np.ndarray | None, int, int]:
    """Narrow by the sort key's window; returns (index, filtered rows or None, lo, hi).

    ``None`` means no filter beyond the window, so counts come from prefix sums.
    """
    index = sort_index(table, project, params.sort_key)
    if params.sort_key == "create":
        since, until = params.create_since, params.create_until
        other = ("update_ms", params.update_since, params.update_until)
    else:
        since, until = params.update_since, params.update_until
        other = ("create_ms", params.create_since, params.create_until)
    lo = 0 if since is None else int(np.searchsorted(index.keys, since, "left"))
    hi = len(index.keys) if until is None else int(np.searchsorted(index.keys, until, "right"))
    if other[1] is None and other[2] is None and not _filtered(params, app_user):
        return index, None, lo, hi
    rows = index.order[lo:hi]
    mask = ~table.cols["deleted"][rows]
    if other[1] is not None:
        mask &= table.cols[other[0]][rows] >= other[1]
    if other[2] is not None:
        mask &= table.cols[other[0]][rows] <= other[2]
    mask &= _filter_mask(table, rows, params, app_user)
    return index, rows[mask], lo, hi


def _filter_mask(table: JobTable, rows: np.ndarray, params: ListParams, app_user: str | None) -> np.ndarray:
    """Which of ``rows`` pass the request's filters other than time."""
    cols = table.cols
    mask = np.ones(len(rows), dtype=np.bool_)

    def equals(column: str, code: int | None) -> None:
        nonlocal mask
        if code is None:
            mask &= False
        else:
            mask &= cols[column][rows] == code

    if app_user is not None:
        equals("app_user", _APP_USER_CODE.get(app_user))
    if params.states is not None:
        codes = [C.STATE_CODE[s] for s in params.states if s in C.STATE_CODE]
        mask &= np.isin(cols["state"][rows], np.array(codes, dtype=np.int8))
    if params.job_id is not None:
        job_id = params.job_id
        if len(job_id) == 32 and all(ch in _HEX for ch in job_id):
            mask &= (cols["id_hi"][rows] == np.uint64(int(job_id[:16], 16))) & (
                cols["id_lo"][rows] == np.uint64(int(job_id[16:], 16))
            )
        else:
            mask &= False
    if params.voice_name is not None:
        equals("voice", _VOICE_CODE.get(params.voice_name))
    if params.tag is not None:
        equals("tag", _TAG_CODE.get(params.tag))
    if params.job_type is not None:
        equals("job_type", _JOB_TYPE_CODE.get(params.job_type))
    if params.batch_name is not None:
        equals("batch", _BATCH_CODE.get(params.batch_name))
    if params.is_ondemand_resource is not None:
        if params.is_ondemand_resource:
            mask &= cols["ondemand"][rows] == 1
        else:
            mask &= cols["ondemand"][rows] != 1
    return mask


def select(
    table: JobTable, project: int, params: ListParams, app_user: str | None, everything: bool = False
) -> tuple[int, np.ndarray]:
    """(count, rows of the requested page in served order); ``everything`` ignores offset/limit."""
    index, filtered, lo, hi = _matching(table, project, params, app_user)
    offset, limit = (0, None) if everything else (params.offset, params.limit)
    if filtered is not None:
        ordered = filtered[::-1] if params.sort_dir == "desc" else filtered
        end = None if limit is None else offset + limit
        return len(filtered), ordered[offset:end]
    cum = index.cum(table.col("deleted"))
    base = int(cum[lo])
    count = int(cum[hi]) - base
    end = count if limit is None else min(count, offset + limit)
    if offset >= end:
        return count, np.zeros(0, dtype=np.int64)
    ranks = np.arange(offset, end, dtype=np.int64)
    if params.sort_dir == "desc":
        ranks = count - 1 - ranks
    positions = np.searchsorted(cum, base + ranks + 1, "left") - 1
    return count, index.order[positions]


def page_body(count: int, blobs: list[bytes]) -> bytes:
    """The 200 body of a list request: ``{"count": N, "jobs": [...]}``."""
    return b'{"count":%d,"jobs":[%b]}' % (count, b",".join(blobs))


def listed_rows(table: JobTable, project: int | None) -> np.ndarray:
    """Listed (not deleted) rows of one project code (or of all when None), oldest first."""
    if project is None:
        mask = ~table.col("deleted")
    else:
        mask = ~table.col("deleted") & (table.col("project") == project)
    rows = np.flatnonzero(mask)
    return rows[np.argsort(table.col("create_ms")[rows], kind="stable")]
