"""The sync: windows -> pages -> normalized Arrow -> lake and warehouse.

One code path for the CLI and the Dagster assets. Three modes:

* ``days``: creation-day windows (partitions, backfills, ``voicejobs sync --since --until``).
  A window the source really listed, with a count that agrees, also reconciles deletions
  for its day; a window that was not listed (it lies after the source's clock) proves
  nothing and deletes nothing.
* ``incremental``: change capture. The creation days no run listed whole are backfilled
  first; then every change since the watermark (before the first one: since the days were
  listed) minus a lookback is read by ``update_since``, and count bisection finds deletions.
* ``reconcile``: the same as ``days``, run to find deletions over a range.

Fetching runs concurrently across windows (the client bounds requests in
flight); each finished window is normalized and buffered, and the buffer is
applied to the warehouse in one transaction per flush. The watermark moves
only in the last transaction, after the data it covers is committed.

Deletions need evidence: a reconciling window whose listing would mark more than
:data:`MASS_DELETION_SHARE` of its range's live jobs deleted is listed a second time,
and the run stops unless both listings hold the same jobs.

Rooms: :mod:`.plan` (modes and the windows each reads), :mod:`.pipeline` (the async
fetch-absorb-apply pipeline and deletion evidence), :mod:`.buffer` (what a run holds between
the fetch and the warehouse, and its transactions), :mod:`.run` (one run, start to end),
:mod:`.report` (progress and summary). Count bisection lives beside paging, in
:mod:`pipelines.metastudio.bisection`.
"""

from pipelines.sync.buffer import FLUSH_ROWS, listed_completely
from pipelines.sync.pipeline import MASS_DELETION_MIN, MASS_DELETION_SHARE, SourceDisagreementError
from pipelines.sync.plan import Mode, days_between
from pipelines.sync.report import MODE_NAMES, SyncProgress, SyncReport
from pipelines.sync.run import make_client, refresh_and_publish, sync

__all__ = [
    "FLUSH_ROWS",
    "MASS_DELETION_MIN",
    "MASS_DELETION_SHARE",
    "MODE_NAMES",
    "Mode",
    "SourceDisagreementError",
    "SyncProgress",
    "SyncReport",
    "days_between",
    "listed_completely",
    "make_client",
    "refresh_and_publish",
    "sync",
]
