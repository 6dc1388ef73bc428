"""Generation of the job columns: attributes, creation times and where each job stands now.

Everything random comes from a numpy generator the caller seeds from the configured seed,
and the draws happen in a fixed order, so the same configuration yields the same jobs byte
for byte.
"""

from __future__ import annotations

import numpy as np

from . import catalog as C
from .table import (
    APP_USERS,
    DAY_MS,
    F_ASSESS,
    F_ASSESS_EXTRA,
    F_DHTMS,
    F_EXTRA,
    F_NULLS,
    F_PHONE,
    F_SIGNED_AUTH,
    F_SIGNED_INPUT,
    FAILED,
    REJECT,
    SUCCEED,
)

_BEIJING_MS = 8 * 3_600_000  # users of the service are mostly in UTC+8: their day drives the load
_DIURNAL = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.4, 0.8, 1.5, 3, 5, 6, 6, 5, 5, 6, 6, 5.5, 5, 4, 3.5, 3, 2.5, 2, 1.5]
)
# Lumpy traffic: office hours in UTC+8 carry most of the load, weekends little of it.
_DIURNAL_BUSINESS = np.array(
    [0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.1, 0.3, 1, 6, 9, 9, 5, 7, 9, 9, 8, 6, 1.5, 0.8, 0.6, 0.5, 0.3, 0.2]
)
_BURST_DAYS_PER_YEAR = 4
_BURST_FACTOR = 20.0  # a burst day carries about this many usual days' jobs
_EMPTY_DAY_SHARE = 0.02  # outages and holidays: nothing is created
_FLAG_SHARES = (
    (F_NULLS, 0.02),
    (F_EXTRA, 0.01),
    (F_SIGNED_AUTH, 0.35),
    (F_SIGNED_INPUT, 0.25),
    (F_PHONE, 0.7),
    (F_DHTMS, 0.1),
)


# ------------------------------------------------------------------------------ attributes
def draw_attributes(rng: np.random.Generator, n: int, projects: int) -> dict[str, np.ndarray]:
    """Everything about ``n`` jobs that does not depend on time or state."""
    cols = _draw_identity(rng, n, projects)
    cols.update(_draw_languages(rng, n))
    cols.update(_draw_details(rng, n))
    cols["flags"] = _draw_flags(rng, n)
    return cols


def _draw_identity(rng: np.random.Generator, n: int, projects: int) -> dict[str, np.ndarray]:
    project_weights = 1.0 / np.arange(1, projects + 1)  # the first project is the busiest
    cols: dict[str, np.ndarray] = {
        "project": rng.choice(projects, size=n, p=project_weights / project_weights.sum()).astype(np.int16),
        "id_hi": rng.integers(0, 2**64, size=n, dtype=np.uint64),
        "id_lo": rng.integers(0, 2**64, size=n, dtype=np.uint64),
        "salt": rng.integers(0, 2**63, size=n, dtype=np.uint64),
        "secs": rng.random(n) < 0.10,
        "job_type": rng.choice(len(C.JOB_TYPES), size=n, p=C.JOB_TYPE_WEIGHTS).astype(np.int8),
        "create_type": (rng.random(n) < 0.3).astype(np.int8),
        "voice": rng.integers(0, len(C.VOICE_NAMES), size=n).astype(np.int16),
    }
    sex = (rng.random(n) < 0.4).astype(np.int8)
    sex[rng.random(n) < 0.02] = -1
    cols["sex"] = sex
    return cols


def _draw_languages(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    language = rng.choice(len(C.LANGUAGES), size=n, p=C.LANGUAGE_WEIGHTS).astype(np.int8)
    output_language = language.copy()
    switch = rng.random(n) < 0.08
    output_language[switch] = rng.integers(0, 2, size=int(switch.sum()))  # CN or EN output
    output_language[rng.random(n) < 0.05] = -1
    language[rng.random(n) < 0.02] = -1
    return {"language": language, "output_language": output_language}


def _draw_details(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Optional fields; code -1 means the field is absent."""
    tag = rng.choice(len(C.TAGS), size=n, p=C.TAG_WEIGHTS).astype(np.int8)
    tag[rng.random(n) < 0.04] = -1
    batch = rng.integers(0, len(C.BATCH_NAMES), size=n).astype(np.int16)
    batch[rng.random(n) >= 0.2] = -1
    app_user = rng.integers(0, len(APP_USERS), size=n).astype(np.int16)
    app_user[rng.random(n) < 0.1] = -1
    charge = rng.choice(3, size=n, p=(0.5, 0.2, 0.3)).astype(np.int8)
    charge[rng.random(n) < 0.4] = -1
    ondemand = (charge == 2).astype(np.int8)
    ondemand[rng.random(n) < 0.1] = -1
    remake = (rng.random(n) < 0.05).astype(np.int8)
    remake[rng.random(n) < 0.3] = -1
    return {
        "tag": tag,
        "batch": batch,
        "app_user": app_user,
        "charge": charge,
        "ondemand": ondemand,
        "remake": remake,
    }


def _draw_flags(rng: np.random.Generator, n: int) -> np.ndarray:
    flags = np.zeros(n, dtype=np.uint8)
    assess = rng.random(n) < 0.4
    for bit, share in _FLAG_SHARES:
        flags |= np.where(rng.random(n) < share, bit, 0).astype(np.uint8)
    flags |= np.where(assess, F_ASSESS, 0).astype(np.uint8)
    flags |= np.where(assess & (rng.random(n) < 0.03), F_ASSESS_EXTRA, 0).astype(np.uint8)
    return flags


# --------------------------------------------------------------------------- creation times
def _lumpy_day_weights(rng: np.random.Generator, weekday: np.ndarray) -> np.ndarray:
    """Relative job volume per day for ``lumpy`` traffic, placed deterministically by ``rng``.

    Growth and noise as in steady traffic but quieter weekends; then burst days (weekdays when
    there are any) at ``_BURST_FACTOR`` times the median day, and empty days of weight 0. The
    first two days hold no burst or gap: jobs drawn before the window's start fold into day 1.
    """
    days = len(weekday)
    weights = np.where(weekday >= 5, 0.25, 1.0) * np.exp(np.linspace(0.0, np.log(3.0), days))
    weights *= rng.lognormal(0.0, 0.3, days)
    candidates = np.arange(2, days)
    if not len(candidates):
        return weights
    usual = float(np.median(weights))
    bursts = min(len(candidates), max(1, round(days * _BURST_DAYS_PER_YEAR / 365)))
    workdays = candidates[weekday[candidates] < 5]
    pool = workdays if len(workdays) >= bursts else candidates
    burst = rng.choice(pool, size=bursts, replace=False)
    weights[burst] = _BURST_FACTOR * usual
    rest = np.setdiff1d(candidates, burst)
    empty = min(len(rest), int(days * _EMPTY_DAY_SHARE + 0.5))
    weights[rng.choice(rest, size=empty, replace=False)] = 0.0
    return weights


def draw_create_times(rng: np.random.Generator, n: int, now_ms: int, days: int, traffic: str) -> np.ndarray:
    """Sorted creation times over ``days`` days ending ``now_ms``: weekly rhythm, growth, daytime
    peak (``lumpy`` traffic: burst days, empty days and business-hour peaks on top)."""
    start_ms = now_ms - days * DAY_MS
    day_start = start_ms + np.arange(days, dtype=np.int64) * DAY_MS
    local_midnight = (day_start + _BEIJING_MS) // DAY_MS * DAY_MS - _BEIJING_MS
    weekday = ((day_start + _BEIJING_MS) // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
    if traffic == "lumpy":
        weights = _lumpy_day_weights(rng, weekday)
        diurnal = _DIURNAL_BUSINESS
    else:
        weights = np.where(weekday >= 5, 0.45, 1.0) * np.exp(np.linspace(0.0, np.log(3.0), days))
        weights *= rng.lognormal(0.0, 0.15, days)
        diurnal = _DIURNAL
    counts = rng.multinomial(n, weights / weights.sum())
    day = np.repeat(np.arange(days), counts)
    hour = rng.choice(24, size=n, p=diurnal / diurnal.sum())
    times = local_midnight[day] + hour * 3_600_000 + rng.integers(0, 3_600_000, size=n)
    times = np.where(times > now_ms, times - DAY_MS, times)
    times = np.where(times < start_ms, times + DAY_MS, times)
    times.sort()
    if n > 1:
        # Exact ties: some jobs share a creation millisecond with the previous one.
        tie = np.flatnonzero(rng.random(n - 1) < 0.02) + 1
        times[tie] = times[tie - 1]
    return times


# ---------------------------------------------------------------------------------- history
def generate(seed: int, n: int, now_ms: int, days: int, traffic: str, projects: int) -> dict[str, np.ndarray]:
    """The columns of the ``n`` jobs of the initial history, oldest first."""
    rng = np.random.default_rng([seed, 0])
    create = draw_create_times(rng, n, now_ms, days, traffic)
    cols = draw_attributes(rng, n, projects)
    secs = cols["secs"]
    create = np.where(secs, create // 1000 * 1000, create)
    order = np.argsort(create, kind="stable")  # flooring to seconds may reorder neighbours
    create = create[order]
    cols["secs"] = secs[order]
    cols.update(_draw_lifecycle(rng, create, cols["secs"], now_ms))
    return cols


def _draw_lifecycle(
    rng: np.random.Generator, create: np.ndarray, secs: np.ndarray, now: int
) -> dict[str, np.ndarray]:
    """State, update time, rejections and failure of jobs created at ``create``, as of ``now``:
    young jobs are mostly in progress, old ones settled."""
    n = len(create)
    age_days = (now - create) / DAY_MS
    in_progress = rng.random(n) < 0.9 * np.exp(-age_days / 2.5)
    stage_cap = np.clip(age_days * 4 + 1, 1, 11)
    stage = np.minimum((rng.random(n) * stage_cap).astype(np.int8), 10)
    settled_states = np.array(
        [SUCCEED, FAILED, C.STATE_CODE["AUDIT_FAILED"], C.STATE_CODE["SPLIT_FAILED"], REJECT],
        dtype=np.int8,
    )
    settled = settled_states[rng.choice(5, size=n, p=(0.80, 0.11, 0.04, 0.02, 0.03))]
    state = np.where(in_progress, stage, settled).astype(np.int8)
    span = now - create
    duration = (rng.lognormal(np.log(1.5 * DAY_MS), 0.8, n)).astype(np.int64)
    late = duration > span
    duration[late] = (rng.random(int(late.sum())) * span[late]).astype(np.int64)
    progress = (rng.random(n) * span).astype(np.int64)
    update = create + np.where(in_progress, progress, duration)
    update = np.where(secs, update // 1000 * 1000, update)
    reject = np.zeros(n, dtype=np.int8)
    rejected_once = (rng.random(n) < 0.12) & ((state >= C.STATE_CODE["WAITING"]) & (state <= SUCCEED))
    reject[rejected_once] = 1 + (rng.random(int(rejected_once.sum())) < 0.3)
    is_reject = state == REJECT
    reject[is_reject] = rng.integers(1, 4, size=int(is_reject.sum()))
    failure = np.where(state == FAILED, rng.integers(0, len(C.FAILURES), size=n), -1).astype(np.int8)
    return {
        "create_ms": create,
        "update_ms": update,
        "state": state,
        "reject": reject,
        "failure": failure,
        "deleted": np.zeros(n, dtype=np.bool_),
    }
