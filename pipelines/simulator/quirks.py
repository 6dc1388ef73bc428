"""Bad data on purpose: deterministic corruptions of served pages, and what a sync must make of them.

Each quirk picks its jobs by a hash of the job_id (about one job in 40 per quirk, never
two quirks on one job), so every page, retry and re-run corrupts the same jobs the same
way. :func:`corrupt_page` rewrites a 200 body; :func:`expected` turns the simulator's
truth into what the warehouse must hold and which jobs must be quarantined, following
the rules of :mod:`pipelines.ingest.rules`.

=====================  ====================================================  =========================
quirk                  served                                                the warehouse holds
=====================  ====================================================  =========================
numbers_as_strings     create/lastupdate_time, reject_times as "123" strings, the typed values
                       is_remake as "true"/"false"
nulls                  sex, tag, batch_name sent as null                     NULL
missing_fields         language, voice_name, allocated_resource left out     NULL
unknown_enums          state, job_type, tag with undocumented values         the values as sent
uncoercible            reject_times "several"                                nothing: quarantined
no_job_id              the job without job_id                                nothing: quarantined
duplicates             an older copy of the job later in the same answer     the newest version, once
count_mismatch         the page's count two more than the jobs it lists      all jobs; window recorded
=====================  ====================================================  =========================
"""

from __future__ import annotations

import hashlib

import orjson

QUIRKS: tuple[str, ...] = (
    "numbers_as_strings", "nulls", "missing_fields", "unknown_enums",
    "uncoercible", "no_job_id", "duplicates", "count_mismatch",
)
_SPREAD = 40
UNKNOWN_STATE, UNKNOWN_JOB_TYPE, UNKNOWN_TAG = "QUANTUM_REVIEW", "HOLOGRAM", "PODCAST"


def quirk_of(job_id: str, quirks: tuple[str, ...]) -> str | None:
    """The quirk applied to this job, if any."""
    slot = int(hashlib.md5(job_id.encode()).hexdigest()[:8], 16) % _SPREAD
    return QUIRKS[slot] if slot < len(QUIRKS) and QUIRKS[slot] in quirks else None


def _meaning(job: dict, quirk: str | None) -> dict | None:
    """The job as the warehouse must read it (None: quarantined)."""
    job = dict(job)
    if quirk in ("uncoercible", "no_job_id"):
        return None
    if quirk == "nulls" or quirk == "missing_fields":
        for name in (("sex", "tag", "batch_name") if quirk == "nulls" else ("language", "voice_name", "allocated_resource")):
            job.pop(name, None)
    elif quirk == "unknown_enums":
        job.update(state=UNKNOWN_STATE, job_type=UNKNOWN_JOB_TYPE, tag=UNKNOWN_TAG)
    return job


def _served(job: dict, quirk: str | None) -> list[dict]:
    if quirk is None or quirk == "count_mismatch":
        return [job]
    job = dict(job)
    if quirk == "numbers_as_strings":
        for name in ("create_time", "lastupdate_time", "reject_times"):
            if isinstance(job.get(name), int):
                job[name] = str(job[name])
        if isinstance(job.get("is_remake"), bool):
            job["is_remake"] = "true" if job["is_remake"] else "false"
    elif quirk == "nulls":
        job.update(sex=None, tag=None, batch_name=None)
    elif quirk in ("missing_fields", "unknown_enums"):
        job = _meaning(job, quirk)
    elif quirk == "uncoercible":
        job["reject_times"] = "several"
    elif quirk == "no_job_id":
        del job["job_id"]
    elif quirk == "duplicates":
        older = dict(job, state="WAITING")
        stamp = job.get("lastupdate_time")
        if isinstance(stamp, int):
            older["lastupdate_time"] = stamp - (3_600_000 if stamp >= 100_000_000_000 else 3600)
        return [job, older]
    return [job]


def corrupt_page(body: bytes, quirks: tuple[str, ...]) -> bytes:
    """A 200 body with the quirks applied to its jobs (and its count)."""
    page = orjson.loads(body)
    jobs, count = [], page["count"]
    for job in page.get("jobs") or []:
        quirk = quirk_of(job["job_id"], quirks)
        if quirk == "count_mismatch":
            count += 2
        jobs.extend(_served(job, quirk))
    return orjson.dumps({"count": count, "jobs": jobs})


def expected(truth: list[dict], quirks: tuple[str, ...]) -> tuple[list[dict], dict[str, str]]:
    """(jobs as the warehouse must hold them, {job_id: quirk} of jobs that must be quarantined)."""
    kept, quarantined = [], {}
    for job in truth:
        quirk = quirk_of(job["job_id"], quirks)
        meaning = _meaning(job, quirk)
        if meaning is None:
            quarantined[job["job_id"]] = quirk
        else:
            kept.append(meaning)
    return kept, quarantined
