"""Pages read for paging only: each job split out as its bytes, three fields decoded.

A sync's paging reads a job's key, creation time and update time; the rest of the job goes
to normalization, which parses the bytes into Arrow outside the GIL (pipelines/ingest/wire.py).
Decoding every job into a dict only to read three fields was most of the event loop's work per
job (``orjson`` about 9 us a job, ``msgspec`` splitting and reading these 1.2 + 1.7 us: see
benchmarks/parse.py). Whatever this reader cannot take as documented (a field of another type,
a page that is not an object of ``count`` and ``jobs``, bytes that are not UTF-8) it leaves
to parse_page's full decoding, which keeps every rule and every message.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from pipelines.contract import WireJob

#: Integers within 64 bits; past them the full decoding (orjson) judges.
_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Keys(msgspec.Struct):
    job_id: str | None | msgspec.UnsetType = msgspec.UNSET
    create_time: _Int | None | msgspec.UnsetType = msgspec.UNSET
    lastupdate_time: _Int | None | msgspec.UnsetType = msgspec.UNSET


class _KeysPage(msgspec.Struct):
    count: _Int
    jobs: list[_Keys] | None = None


class _SpansPage(msgspec.Struct):
    count: int
    jobs: list[msgspec.Raw] | None = None


_KEYS = msgspec.json.Decoder(_KeysPage)
_SPANS = msgspec.json.Decoder(_SpansPage)
_FIELDS = ("job_id", "create_time", "lastupdate_time")


def wire_jobs(body: bytes) -> tuple[int, list[WireJob]] | None:
    """(count, jobs) of a page as WireJobs, or None where the full decoding must judge it."""
    try:
        body.decode("utf-8")  # msgspec leaves the strings inside a job's bytes unchecked
        keys, spans = _KEYS.decode(body), _SPANS.decode(body)
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None
    if keys.count < 0 or keys.jobs is None or spans.jobs is None:
        return None
    jobs = []
    for job_keys, raw in zip(keys.jobs, spans.jobs, strict=True):
        job = WireJob()
        for name in _FIELDS:
            value = getattr(job_keys, name)
            if value is not msgspec.UNSET:
                job[name] = value
        job.raw = raw
        jobs.append(job)
    return keys.count, jobs
