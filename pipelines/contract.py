"""The source API's contract, said once (see ../shared/API.md).

Every module that speaks the API's language takes these from here: the page size a sync
asks for, how an epoch number is read, the wire format of time parameters, the states, and
the Arrow type every timestamp is stored as.
"""

from __future__ import annotations

import orjson
import pyarrow as pa

#: Jobs per page a sync asks for: the API's largest `limit`.
PAGE_LIMIT = 100
#: An epoch number at or above this is milliseconds, a smaller one seconds (the year 5138 in
#: seconds; the API's documents say seconds, services of this family send milliseconds).
EPOCH_MS_THRESHOLD = 100_000_000_000
#: Time parameters on the wire: RFC 3339 in UTC, whole seconds.
WIRE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: Terminal states: a job in one of them is finished. Every other state can still move on.
TERMINAL_STATES = frozenset({"SUCCEED", "FAILED"})
#: How every timestamp is stored (the API's resolution).
TIMESTAMP = pa.timestamp("ms", tz="UTC")


def newer_update_wins(candidate_ms: int | None, current_ms: int | None) -> bool:
    """The rule "the newest lastupdate_time wins", said once for Python (paging and
    normalization; the warehouse's upsert orders ``lastupdate_time DESC NULLS LAST`` and then
    by arrival, the same rule in SQL).

    A version seen later (``candidate``) replaces the current one unless it is older; a
    missing time is the oldest, so an equal time or two missing ones go to the later version."""
    return (candidate_ms if candidate_ms is not None else -1) >= (current_ms if current_ms is not None else -1)


class WireJob(dict):
    """A listed job as paging reads it, without decoding the rest: the fields paging needs
    (``job_id``, ``create_time``, ``lastupdate_time``, those the job has) and ``raw``, the
    job's JSON bytes as its page carried them. Normalization parses the bytes into Arrow
    (pipelines/ingest/wire.py); ``record()`` is the job decoded whole, the dict every other
    reader of a job gets."""

    __slots__ = ("raw",)

    def record(self) -> dict:
        return orjson.loads(memoryview(self.raw))


def full_record(job: dict) -> dict:
    """The job decoded whole (a WireJob's bytes decoded; any other record as it is)."""
    return job.record() if type(job) is WireJob else job
