"""The simulated job store: generation, listing, clock and mutations.

Jobs live in growable numpy columns (one row per job, row number = insertion
order), so a million jobs cost tens of megabytes. Everything random derives from
the configured seed, so the same configuration yields the same jobs byte for byte.
A job's JSON object is built from its row on first use and cached as bytes; every
mutation drops the cached bytes of the rows it touches and the sort indexes of
the project it touches.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson

from . import catalog as C
from .config import SimulatorConfig
from .params import ListParams

DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BEIJING_MS = 8 * 3_600_000  # users of the service are mostly in UTC+8: their day drives the load

# Bits of the "flags" column.
F_NULLS = 1  # empty fields sent as null instead of omitted
F_EXTRA = 2  # unknown top-level fields
F_ASSESS_EXTRA = 4  # unknown fields inside assess_result
F_SIGNED_AUTH = 8  # voice_authorization_url is a pre-signed URL
F_SIGNED_INPUT = 16  # training_input_source_url is a pre-signed URL
F_PHONE = 32
F_DHTMS = 64
F_ASSESS = 128

_COLUMNS: dict[str, type] = {
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
_APP_USER_CODE = {name: code for code, name in enumerate(APP_USERS)}
_VOICE_CODE = {name: code for code, name in enumerate(C.VOICE_NAMES)}
_BATCH_CODE = {name: code for code, name in enumerate(C.BATCH_NAMES)}
_TAG_CODE = {name: code for code, name in enumerate(C.TAGS)}
_JOB_TYPE_CODE = {name: code for code, name in enumerate(C.JOB_TYPES)}
_IN_PROGRESS_CODES = np.array([C.STATE_CODE[s] for s in C.STATES if s not in C.TERMINAL], dtype=np.int8)
_SUCCEED = C.STATE_CODE["SUCCEED"]
_WAITING_FOR_USER = frozenset({"AUDIT_FAILED", "SPLIT_FAILED", "USER_REVIEW_REJECT"})
_ABANDONED_AFTER_MS = 30 * DAY_MS
_FAILED = C.STATE_CODE["FAILED"]
_REJECT = C.STATE_CODE["USER_REVIEW_REJECT"]
_PHONE_PREFIX = {"CN": "+86 1", "EN": "+1 415", "ES": "+34 6", "AR": "+971 5", "JA": "+81 90", "KO": "+82 10"}
_NULLABLE = ("asset_id", "job_failed_code", "job_failed_reason", "tag", "batch_name", "dhtms_job_id", "phone")
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


_MASK64 = (1 << 64) - 1
_REGIONS = ("cn-north-4", "cn-east-3")
_PHONE_FORMAT: dict[str | None, tuple[str, int]] = {
    "CN": ("+86 1", 10),
    "EN": ("+1 415", 7),
    "ES": ("+34 6", 8),
    "AR": ("+971 5", 8),
    "JA": ("+81 90", 8),
    "KO": ("+82 10", 8),
    None: ("+44 7", 9),
}
_STYLES = ("calm", "lively", "温柔", "news")
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_SIG_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


_GOLDEN = 0x9E3779B97F4A7C15
# Fixed slots of a job's random words, so each detail has its own word whatever else the job has.
W_ASSET, W_AUTH_URL, W_INPUT_URL, W_PHONE, W_DHTMS_HI, W_DHTMS_LO, W_RESOURCE, W_STATUS, W_ACTUAL, W_EXTRA = (
    range(10)
)
_WORDS = 10


def _word(salt: int, slot: int) -> int:
    """splitmix64: the ``slot``-th deterministic 64-bit word of a job's salt."""
    z = (salt + (slot + 1) * _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _words(salt: np.ndarray, slot: int) -> list[int]:
    """:func:`_word` for many salts at once (uint64 arithmetic wraps like the masks above)."""
    z = salt + np.uint64(((slot + 1) * _GOLDEN) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))).tolist()


@functools.lru_cache(maxsize=4096)
def _day_text(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def _rfc3339_seconds(epoch_seconds: int) -> str:
    day, second = divmod(epoch_seconds, 86400)
    hours, rest = divmod(second, 3600)
    return f"{_day_text(day)}T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


def _pool(alphabet: str, length: int, size: int, seed: int) -> tuple[str, ...]:
    rnd = random.Random(seed)
    return tuple("".join(rnd.choices(alphabet, k=length)) for _ in range(size))


# Pools indexed by a job's random bits: building strings character by character per job
# costs more than the rest of the record.
_ACCESS_KEYS = _pool(_KEY_ALPHABET, 20, 4096, 1)
_SIGNATURE_PARTS = _pool(_SIG_ALPHABET, 13, 4096, 2)


def _presigned(word: int, expires: int) -> str:
    """An object-storage pre-signed query string: the credential a sync must not keep."""
    key = _ACCESS_KEYS[word & 4095]
    signature = _SIGNATURE_PARTS[(word >> 12) & 4095] + _SIGNATURE_PARTS[(word >> 24) & 4095]
    return f"?AccessKeyId={key}&Expires={expires}&Signature={signature}%3D"


def _assess(statuses: int, actuals: int, flags: int) -> dict:
    result: dict = {}
    failing = 0
    for name, expected, low, high, unit, zh, en in C.ASSESS_PARAMS:
        status = 1 if statuses & 1023 < 154 else 0  # about 15% of checks fail
        statuses >>= 10
        actual = low + (high - low) * (actuals & 1023) / 1023
        actuals >>= 10
        failing += status
        item: dict = {"expected": expected, "actual": f"{actual:.2f}{unit}"}
        if status:
            item["suggestion"], item["suggestion_en"] = zh, en
        item["status"] = status
        result[name] = item
    result["suggestion"] = C.ASSESS_SUMMARY[1] if failing else C.ASSESS_SUMMARY[(statuses & 1) * 2]
    if flags & F_ASSESS_EXTRA:
        result["pitch"] = {"expected": "80-300Hz", "actual": f"{60 + (actuals >> 4) % 260}Hz", "status": 0}
    return result


def _json_text(value: str) -> str:
    """``value`` escaped for use inside a JSON string (without the quotes)."""
    return orjson.dumps(value).decode()[1:-1]


def _fragments(key: str, values, *, absent: bool = True) -> tuple[str, ...]:
    """``,"key":<value>`` per code; with ``absent`` a last "" entry, so code -1 yields nothing."""
    encoded = tuple(f',"{key}":{orjson.dumps(value).decode()}' for value in values)
    return encoded + ("",) if absent else encoded


_J_JOB_TYPE = _fragments("job_type", C.JOB_TYPES, absent=False)
_J_APP_USER = _fragments("app_user_id", APP_USERS)
_J_VOICE = _fragments("voice_name", C.VOICE_NAMES, absent=False)
_J_SEX = _fragments("sex", C.SEXES)
_J_LANGUAGE = _fragments("language", C.LANGUAGES)
_J_LANGUAGE_OUT = _fragments("output_language", C.LANGUAGES)
_J_STATE = _fragments("state", C.STATES, absent=False)
_J_FAILURE = tuple(
    f',"job_failed_code":{orjson.dumps(code).decode()},"job_failed_reason":{orjson.dumps(reason).decode()}'
    for code, reason in C.FAILURES
)
_J_CREATE_TYPE = _fragments("create_type", C.CREATE_TYPES, absent=False)
_J_TAG = _fragments("tag", C.TAGS)
_J_BATCH = _fragments("batch_name", C.BATCH_NAMES)
_J_CHARGE = _fragments("charge_mode", C.CHARGE_MODES, absent=False)
_J_REMAKE = _fragments("is_remake", (False, True))
_J_ONDEMAND = _fragments("is_ondemand_resource", (False, True))
_J_REJECT = tuple(f',"reject_times":{n}' for n in range(128))
_J_STYLES = tuple(orjson.dumps(style).decode() for style in _STYLES)
_PERIODIC, _ON_DEMAND = C.CHARGE_MODES.index("PERIODIC"), C.CHARGE_MODES.index("ON_DEMAND")


class _SortIndex:
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


class SimulatorState:
    """All jobs of all hosted projects plus the simulated clock; thread-safe.

    ``truth()`` returns exactly the JSON objects the API serves; ``advance()`` moves
    the clock and the jobs along; ``hostile_mutation()`` is what hostile paging does.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self._lock = threading.RLock()
        self.config = config  # as generated; run-time behaviour lives on the server
        self._seed = config.seed % 2**63  # numpy seed sequences take non-negative entropy
        self._days = config.days
        self._traffic = config.traffic
        self._base_jobs = config.jobs
        self.projects: tuple[str, ...] = tuple(config.projects)
        self._hosts = [
            [f"https://metastudio-{p}.obs.{region}.myhuaweicloud.com" for region in _REGIONS]
            for p in self.projects
        ]
        self._json_hosts = [[_json_text(host) for host in pair] for pair in self._hosts]
        self._project_code = {p: i for i, p in enumerate(self.projects)}
        now = config.now or datetime.now(UTC).replace(microsecond=0)
        self._now_ms = datetime_to_ms(now.astimezone(UTC))
        self._cols: dict[str, np.ndarray] = {
            name: np.zeros(0, dtype=dtype) for name, dtype in _COLUMNS.items()
        }
        self._n = 0
        self._blobs: list[bytes | None] = []
        self._indexes: dict[tuple[int, str], _SortIndex] = {}
        self._advances = 0
        self._hostile_rng = random.Random(config.seed * 1_000_003 + 17)
        self.hostile_mutations = 0
        self._generate(config.jobs)

    # ----------------------------------------------------------------- basics
    @property
    def now(self) -> datetime:
        """The simulated clock (UTC); it only moves through :meth:`advance`."""
        return ms_to_datetime(self._now_ms)

    @property
    def now_ms(self) -> int:
        return self._now_ms

    def has_project(self, project_id: str) -> bool:
        return project_id in self._project_code

    def __len__(self) -> int:
        """Listed (not deleted) jobs across all projects."""
        with self._lock:
            return int(self._n - np.count_nonzero(self._col("deleted")))

    def _col(self, name: str) -> np.ndarray:
        return self._cols[name][: self._n]

    def _append(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Append rows (one array per column, all the same length); returns their row numbers."""
        count = len(columns["create_ms"])
        needed = self._n + count
        capacity = len(self._cols["create_ms"])
        if needed > capacity:
            new_capacity = max(needed, int(capacity * 1.5) + 1024)
            for name, array in self._cols.items():
                grown = np.zeros(new_capacity, dtype=array.dtype)
                grown[: self._n] = array[: self._n]
                self._cols[name] = grown
        for name, array in self._cols.items():
            array[self._n : needed] = columns.get(name, 0)
        rows = np.arange(self._n, needed)
        self._n = needed
        self._blobs.extend([None] * count)
        for code in np.unique(columns["project"]).tolist():
            self._indexes.pop((code, "create"), None)
            self._indexes.pop((code, "update"), None)
        return rows

    # ------------------------------------------------------------- generation
    def _draw_attributes(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Everything about a job that does not depend on time or state."""
        projects = len(self.projects)
        project_weights = 1.0 / np.arange(1, projects + 1)  # the first project is the busiest
        cols: dict[str, np.ndarray] = {
            "project": rng.choice(projects, size=n, p=project_weights / project_weights.sum()).astype(
                np.int16
            ),
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
        language = rng.choice(len(C.LANGUAGES), size=n, p=C.LANGUAGE_WEIGHTS).astype(np.int8)
        output_language = language.copy()
        switch = rng.random(n) < 0.08
        output_language[switch] = rng.integers(0, 2, size=int(switch.sum()))  # CN or EN output
        output_language[rng.random(n) < 0.05] = -1
        language[rng.random(n) < 0.02] = -1
        cols["language"], cols["output_language"] = language, output_language
        tag = rng.choice(len(C.TAGS), size=n, p=C.TAG_WEIGHTS).astype(np.int8)
        tag[rng.random(n) < 0.04] = -1
        cols["tag"] = tag
        batch = rng.integers(0, len(C.BATCH_NAMES), size=n).astype(np.int16)
        batch[rng.random(n) >= 0.2] = -1
        cols["batch"] = batch
        app_user = rng.integers(0, len(APP_USERS), size=n).astype(np.int16)
        app_user[rng.random(n) < 0.1] = -1
        cols["app_user"] = app_user
        charge = rng.choice(3, size=n, p=(0.5, 0.2, 0.3)).astype(np.int8)
        charge[rng.random(n) < 0.4] = -1
        cols["charge"] = charge
        ondemand = (charge == 2).astype(np.int8)
        ondemand[rng.random(n) < 0.1] = -1
        cols["ondemand"] = ondemand
        remake = (rng.random(n) < 0.05).astype(np.int8)
        remake[rng.random(n) < 0.3] = -1
        cols["remake"] = remake
        flags = np.zeros(n, dtype=np.uint8)
        assess = rng.random(n) < 0.4
        for bit, share in (
            (F_NULLS, 0.02),
            (F_EXTRA, 0.01),
            (F_SIGNED_AUTH, 0.35),
            (F_SIGNED_INPUT, 0.25),
            (F_PHONE, 0.7),
            (F_DHTMS, 0.1),
        ):
            flags |= np.where(rng.random(n) < share, bit, 0).astype(np.uint8)
        flags |= np.where(assess, F_ASSESS, 0).astype(np.uint8)
        flags |= np.where(assess & (rng.random(n) < 0.03), F_ASSESS_EXTRA, 0).astype(np.uint8)
        cols["flags"] = flags
        return cols

    def _draw_create_times(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Sorted creation times over ``days`` days ending now: weekly rhythm, growth, daytime peak
        (``lumpy`` traffic: burst days, empty days and business-hour peaks on top)."""
        days = self._days
        start_ms = self._now_ms - days * DAY_MS
        day_start = start_ms + np.arange(days, dtype=np.int64) * DAY_MS
        local_midnight = (day_start + _BEIJING_MS) // DAY_MS * DAY_MS - _BEIJING_MS
        weekday = ((day_start + _BEIJING_MS) // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
        if self._traffic == "lumpy":
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
        times = np.where(times > self._now_ms, times - DAY_MS, times)
        times = np.where(times < start_ms, times + DAY_MS, times)
        times.sort()
        if n > 1:
            # Exact ties: some jobs share a creation millisecond with the previous one.
            tie = np.flatnonzero(rng.random(n - 1) < 0.02) + 1
            times[tie] = times[tie - 1]
        return times

    def _generate(self, n: int) -> None:
        rng = np.random.default_rng([self._seed, 0])
        create = self._draw_create_times(rng, n)
        cols = self._draw_attributes(rng, n)
        secs = cols["secs"]
        create = np.where(secs, create // 1000 * 1000, create)
        order = np.argsort(create, kind="stable")  # flooring to seconds may reorder neighbours
        create = create[order]
        cols["secs"] = secs[order]
        secs = cols["secs"]
        now = self._now_ms
        age_days = (now - create) / DAY_MS
        in_progress = rng.random(n) < 0.9 * np.exp(-age_days / 2.5)
        stage_cap = np.clip(age_days * 4 + 1, 1, 11)
        stage = np.minimum((rng.random(n) * stage_cap).astype(np.int8), 10)
        settled_states = np.array(
            [_SUCCEED, _FAILED, C.STATE_CODE["AUDIT_FAILED"], C.STATE_CODE["SPLIT_FAILED"], _REJECT],
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
        rejected_once = (rng.random(n) < 0.12) & ((state >= C.STATE_CODE["WAITING"]) & (state <= _SUCCEED))
        reject[rejected_once] = 1 + (rng.random(int(rejected_once.sum())) < 0.3)
        is_reject = state == _REJECT
        reject[is_reject] = rng.integers(1, 4, size=int(is_reject.sum()))
        failure = np.where(state == _FAILED, rng.integers(0, len(C.FAILURES), size=n), -1).astype(np.int8)
        cols.update(
            create_ms=create,
            update_ms=update,
            state=state,
            reject=reject,
            failure=failure,
            deleted=np.zeros(n, dtype=np.bool_),
        )
        self._append(cols)

    # ---------------------------------------------------------- serialization
    def _records(self, rows: list[int]) -> list[dict]:
        """The JSON objects of ``rows`` as the API serves them."""
        if not rows:
            return []
        idx = np.asarray(rows, dtype=np.int64)
        columns = [self._cols[name][idx].tolist() for name in _COLUMNS]
        record = self._record
        return [record(*values) for values in zip(*columns, strict=True)]

    def _record(
        self,
        project,
        id_hi,
        id_lo,
        salt,
        create_ms,
        update_ms,
        secs,
        state_code,
        job_type,
        sex,
        language_code,
        output_language,
        tag,
        create_type,
        voice,
        batch,
        app_user,
        reject,
        failure,
        charge,
        ondemand,
        remake,
        flags,
        deleted,
    ) -> dict:
        """One job's JSON object; every free-text detail derives from the row's salt."""
        job_id = f"{id_hi:016x}{id_lo:016x}"
        state = C.STATES[state_code]
        rec: dict = {"job_id": job_id, "job_type": C.JOB_TYPES[job_type]}
        if app_user >= 0:
            rec["app_user_id"] = APP_USERS[app_user]
        rec["voice_name"] = C.VOICE_NAMES[voice]
        if sex >= 0:
            rec["sex"] = C.SEXES[sex]
        language = C.LANGUAGES[language_code] if language_code >= 0 else None
        if language:
            rec["language"] = language
        rec["state"] = state
        if reject > 0:
            rec["reject_times"] = reject
        word = _word(salt, W_ASSET)
        if state_code == _SUCCEED:
            rec["asset_id"] = f"{word:016x}{id_lo ^ word:016x}"
        if failure >= 0 and state_code == _FAILED:
            rec["job_failed_code"], rec["job_failed_reason"] = C.FAILURES[failure]
        if secs:
            rec["create_time"], rec["lastupdate_time"] = create_ms // 1000, update_ms // 1000
        else:
            rec["create_time"], rec["lastupdate_time"] = create_ms, update_ms
        host = self._hosts[project][word & 1]
        expires = create_ms // 1000 + 7 * 86400
        url = f"{host}/voice-authorization/{job_id}/authorization.mp4"
        if flags & F_SIGNED_AUTH:
            url += _presigned(_word(salt, W_AUTH_URL), expires)
        rec["voice_authorization_url"] = url
        url = f"{host}/training-input/{job_id}/corpus.zip"
        if flags & F_SIGNED_INPUT:
            url += _presigned(_word(salt, W_INPUT_URL), expires)
        rec["training_input_source_url"] = url
        rec["create_type"] = C.CREATE_TYPES[create_type]
        if tag >= 0:
            rec["tag"] = C.TAGS[tag]
        if flags & F_PHONE:
            prefix, digits = _PHONE_FORMAT.get(language, _PHONE_FORMAT[None])
            rec["phone"] = f"{prefix}{_word(salt, W_PHONE) % 10**digits:0{digits}d}"
        if flags & F_DHTMS:
            rec["dhtms_job_id"] = f"{_word(salt, W_DHTMS_HI):016x}{_word(salt, W_DHTMS_LO):016x}"
        if batch >= 0:
            rec["batch_name"] = C.BATCH_NAMES[batch]
        if charge >= 0:
            mode = C.CHARGE_MODES[charge]
            resource = {
                "resource_id": f"{_word(salt, W_RESOURCE) >> 16:012x}{word >> 32:08x}",
                "charge_mode": mode,
            }
            if mode != "ON_DEMAND":
                lifetime = 365 if mode == "PERIODIC" else 30
                resource["expire_time"] = _rfc3339_seconds(create_ms // 1000 + lifetime * 86400)
            rec["allocated_resource"] = resource
        if output_language >= 0:
            rec["output_language"] = C.LANGUAGES[output_language]
        if remake >= 0:
            rec["is_remake"] = remake == 1
        if flags & F_ASSESS:
            rec["assess_result"] = _assess(_word(salt, W_STATUS), _word(salt, W_ACTUAL), flags)
        if ondemand >= 0:
            rec["is_ondemand_resource"] = ondemand == 1
        if flags & F_NULLS:
            for name in _NULLABLE:
                rec.setdefault(name, None)
        if flags & F_EXTRA:
            word = _word(salt, W_EXTRA)
            rec["voice_style"] = _STYLES[word & 3]
            rec["quality_score"] = (word >> 8) % 1000 / 1000
        return rec

    def _serialize(self, rows: list[int]) -> list[bytes]:
        """JSON bytes of ``rows``, built from pre-encoded fragments.

        Produces the same JSON objects as ``orjson.dumps(self._record(...))`` (a test holds
        the two together) at a fraction of the cost, which is what cold pages pay.
        """
        idx = np.asarray(rows, dtype=np.int64)
        cols = self._cols
        salt = cols["salt"][idx]
        lists = [cols[name][idx].tolist() for name in _COLUMNS if name not in ("salt", "deleted")]
        words = [_words(salt, slot) for slot in range(_WORDS)]
        hosts = self._json_hosts
        out: list[bytes] = []
        for (
            project,
            hi,
            lo,
            create_ms,
            update_ms,
            secs,
            state,
            job_type,
            sex,
            language,
            output_language,
            tag,
            create_type,
            voice,
            batch,
            app_user,
            reject,
            failure,
            charge,
            ondemand,
            remake,
            flags,
            w_asset,
            w_auth,
            w_input,
            w_phone,
            w_dhtms_hi,
            w_dhtms_lo,
            w_resource,
            w_status,
            w_actual,
            w_extra,
        ) in zip(*lists, *words, strict=True):
            job_id = f"{hi:016x}{lo:016x}"
            succeed = state == _SUCCEED
            failed = failure >= 0 and state == _FAILED
            divisor = 1000 if secs else 1
            host = hosts[project][w_asset & 1]
            expires = create_ms // 1000 + 7 * 86400
            auth_url = f"{host}/voice-authorization/{job_id}/authorization.mp4"
            if flags & F_SIGNED_AUTH:
                auth_url += _presigned(w_auth, expires)
            asset = f',"asset_id":"{w_asset:016x}{lo ^ w_asset:016x}"' if succeed else ""
            input_url = f"{host}/training-input/{job_id}/corpus.zip"
            if flags & F_SIGNED_INPUT:
                input_url += _presigned(w_input, expires)
            text = (
                f'{{"job_id":"{job_id}"{_J_JOB_TYPE[job_type]}{_J_APP_USER[app_user]}{_J_VOICE[voice]}'
                f"{_J_SEX[sex]}{_J_LANGUAGE[language]}{_J_STATE[state]}"
                f"{_J_REJECT[reject] if reject > 0 else ''}{asset}"
                f"{_J_FAILURE[failure] if failed else ''}"
                f',"create_time":{create_ms // divisor},"lastupdate_time":{update_ms // divisor}'
                f',"voice_authorization_url":"{auth_url}","training_input_source_url":"{input_url}"'
                f"{_J_CREATE_TYPE[create_type]}{_J_TAG[tag]}"
            )
            if flags & F_PHONE:
                prefix, digits = _PHONE_FORMAT.get(
                    C.LANGUAGES[language] if language >= 0 else None, _PHONE_FORMAT[None]
                )
                text += f',"phone":"{prefix}{w_phone % 10**digits:0{digits}d}"'
            if flags & F_DHTMS:
                text += f',"dhtms_job_id":"{w_dhtms_hi:016x}{w_dhtms_lo:016x}"'
            text += _J_BATCH[batch]
            if charge >= 0:
                text += f',"allocated_resource":{{"resource_id":"{w_resource >> 16:012x}{w_asset >> 32:08x}"{_J_CHARGE[charge]}'
                if charge != _ON_DEMAND:
                    lifetime = 365 if charge == _PERIODIC else 30
                    text += f',"expire_time":"{_rfc3339_seconds(create_ms // 1000 + lifetime * 86400)}"'
                text += "}"
            text += _J_LANGUAGE_OUT[output_language] + _J_REMAKE[remake]
            if flags & F_ASSESS:
                text += ',"assess_result":' + orjson.dumps(_assess(w_status, w_actual, flags)).decode()
            text += _J_ONDEMAND[ondemand]
            if flags & F_NULLS:
                if not succeed:
                    text += ',"asset_id":null'
                if not failed:
                    text += ',"job_failed_code":null,"job_failed_reason":null'
                if tag < 0:
                    text += ',"tag":null'
                if batch < 0:
                    text += ',"batch_name":null'
                if not flags & F_DHTMS:
                    text += ',"dhtms_job_id":null'
                if not flags & F_PHONE:
                    text += ',"phone":null'
            if flags & F_EXTRA:
                text += f',"voice_style":{_J_STYLES[w_extra & 3]},"quality_score":{(w_extra >> 8) % 1000 / 1000!r}'
            out.append((text + "}").encode())
        return out

    def _blobs_for(self, rows: list[int]) -> list[bytes]:
        blobs = self._blobs
        missing = [row for row in rows if blobs[row] is None]
        if missing:
            for row, blob in zip(missing, self._serialize(missing), strict=True):
                blobs[row] = blob
        return [blobs[row] for row in rows]  # type: ignore[misc]

    def warm(self) -> None:
        """Serialize every job now rather than on first request (for benchmarks)."""
        with self._lock:
            step = 20_000
            for start in range(0, self._n, step):
                self._blobs_for(list(range(start, min(start + step, self._n))))

    # ------------------------------------------------------------------ query
    def _index(self, project: int, key: str) -> _SortIndex:
        index = self._indexes.get((project, key))
        if index is None:
            rows = np.flatnonzero(self._col("project") == project)
            index = _SortIndex(rows, self._col("create_ms" if key == "create" else "update_ms"))
            self._indexes[(project, key)] = index
        return index

    def _matching(
        self, project: int, params: ListParams, app_user: str | None
    ) -> tuple[_SortIndex, np.ndarray | None, int, int]:
        """Narrow by the sort key's window; returns (index, filtered rows or None, lo, hi).

        ``None`` means no filter beyond the window, so counts come from prefix sums.
        """
        index = self._index(project, params.sort_key)
        if params.sort_key == "create":
            since, until = params.create_since, params.create_until
            other = ("update_ms", params.update_since, params.update_until)
        else:
            since, until = params.update_since, params.update_until
            other = ("create_ms", params.create_since, params.create_until)
        lo = 0 if since is None else int(np.searchsorted(index.keys, since, "left"))
        hi = len(index.keys) if until is None else int(np.searchsorted(index.keys, until, "right"))
        filtered = (
            other[1] is not None
            or other[2] is not None
            or app_user is not None
            or params.states is not None
            or params.job_id is not None
            or params.voice_name is not None
            or params.tag is not None
            or params.job_type is not None
            or params.batch_name is not None
            or params.is_ondemand_resource is not None
        )
        if not filtered:
            return index, None, lo, hi
        rows = index.order[lo:hi]
        cols = self._cols
        mask = ~cols["deleted"][rows]
        if other[1] is not None:
            mask &= cols[other[0]][rows] >= other[1]
        if other[2] is not None:
            mask &= cols[other[0]][rows] <= other[2]

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
            if len(job_id) == 32 and all(ch in "0123456789abcdef" for ch in job_id):
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
        return index, rows[mask], lo, hi

    def _select(
        self, project: int, params: ListParams, app_user: str | None, everything: bool = False
    ) -> tuple[int, np.ndarray]:
        """(count, rows of the requested page in served order); ``everything`` ignores offset/limit."""
        index, filtered, lo, hi = self._matching(project, params, app_user)
        offset, limit = (0, None) if everything else (params.offset, params.limit)
        if filtered is not None:
            ordered = filtered[::-1] if params.sort_dir == "desc" else filtered
            end = None if limit is None else offset + limit
            return len(filtered), ordered[offset:end]
        cum = index.cum(self._cols["deleted"][: self._n])
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

    def list_page(self, project_id: str, params: ListParams, app_user: str | None = None) -> bytes:
        """The 200 body for one list request: ``{"count": N, "jobs": [...]}``."""
        with self._lock:
            count, rows = self._select(self._project_code[project_id], params, app_user)
            blobs = self._blobs_for(rows.tolist())
        return b'{"count":%d,"jobs":[%b]}' % (count, b",".join(blobs))

    def truth(self, project_id: str | None = None) -> list[dict]:
        """Exactly the JSON objects the API currently lists (oldest first), deleted jobs excluded."""
        with self._lock:
            rows = self._listed_rows(project_id)
            return [orjson.loads(blob) for blob in self._blobs_for(rows.tolist())]

    def _listed_rows(self, project_id: str | None) -> np.ndarray:
        if project_id is None:
            mask = ~self._col("deleted")
        else:
            code = self._project_code.get(project_id)
            if code is None:
                return np.zeros(0, dtype=np.int64)
            mask = ~self._col("deleted") & (self._col("project") == code)
        rows = np.flatnonzero(mask)
        return rows[np.argsort(self._col("create_ms")[rows], kind="stable")]

    def deleted_ids(self, project_id: str | None = None) -> set[str]:
        """job_ids of deleted jobs (of one project, or of all)."""
        with self._lock:
            mask = self._col("deleted").copy()
            if project_id is not None:
                mask &= self._col("project") == self._project_code.get(project_id, -1)
            rows = np.flatnonzero(mask)
            return {
                f"{hi:016x}{lo:016x}"
                for hi, lo in zip(
                    self._col("id_hi")[rows].tolist(), self._col("id_lo")[rows].tolist(), strict=True
                )
            }

    def job_ids(self, project_id: str | None = None) -> list[str]:
        """job_ids of listed jobs, oldest first."""
        with self._lock:
            rows = self._listed_rows(project_id)
            return [
                f"{hi:016x}{lo:016x}"
                for hi, lo in zip(
                    self._cols["id_hi"][rows].tolist(), self._cols["id_lo"][rows].tolist(), strict=True
                )
            ]

    # -------------------------------------------------------------- mutations
    def _touch(self, rows: np.ndarray, *, updated: bool = False, deleted: bool = False) -> None:
        """Drop caches that ``rows`` feed into."""
        for row in rows.tolist():
            self._blobs[row] = None
        for code in np.unique(self._cols["project"][rows]).tolist():
            if updated:
                self._indexes.pop((code, "update"), None)
            if deleted:
                for key in ("create", "update"):
                    index = self._indexes.get((code, key))
                    if index is not None:
                        index._cum = None

    def move_created(self, job_id: str, create_ms: int) -> None:
        """Give one job another creation time (and an update time not before it), e.g. exactly
        on a midnight, where two creation-day windows meet."""
        with self._lock:
            rows = np.array([r for r in np.flatnonzero(~self._col("deleted")).tolist()
                             if self._job_id(r) == job_id], dtype=np.int64)
            if not len(rows):
                raise KeyError(job_id)
            self._cols["create_ms"][rows] = create_ms
            self._cols["update_ms"][rows] = np.maximum(self._cols["update_ms"][rows], create_ms)
            self._touch(rows, updated=True)
            for code in np.unique(self._cols["project"][rows]).tolist():
                self._indexes.pop((code, "create"), None)

    def delete(self, job_ids: set[str]) -> int:
        """Delete the listed jobs among ``job_ids`` now (as a user would); returns how many."""
        with self._lock:
            rows = np.flatnonzero(~self._col("deleted"))
            rows = np.array([r for r in rows.tolist() if self._job_id(r) in job_ids], dtype=np.int64)
            if len(rows):
                self._delete(rows)
            return len(rows)

    def _delete(self, rows: np.ndarray) -> None:
        self._cols["deleted"][rows] = True
        self._touch(rows, deleted=True)

    def advance(self, seconds: float, *, seed_step: int | None = None) -> dict:
        """Move the simulated clock forward and the jobs with it.

        Creates new jobs inside the advanced interval, walks in-progress jobs through
        the state machine (each change stamped with its event time, never later than
        the new now) and deletes a few jobs. Deterministic for a given seed and
        ``seed_step`` (default: the number of earlier advances).
        Returns ``{"created", "transitioned", "transitions", "deleted", "now"}``.
        """
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
        with self._lock:
            step = self._advances if seed_step is None else seed_step
            self._advances += 1
            rng = np.random.default_rng([self._seed, 1, step])
            walk = random.Random(int(rng.integers(0, 2**62)))
            old_now, new_now = self._now_ms, self._now_ms + max(1, round(seconds * 1000))
            self._now_ms = new_now

            per_day = max(self._base_jobs, 1) / self._days * 2.5  # the growth trend's recent rate
            created = max(1, int(rng.poisson(per_day * (new_now - old_now) / DAY_MS)))
            cols = self._draw_attributes(rng, created)
            create = np.sort(rng.integers(old_now + 1, new_now + 1, size=created, dtype=np.int64))
            ceiled = -(-create // 1000) * 1000
            cols["secs"] &= ceiled <= new_now
            create = np.where(cols["secs"], ceiled, create)
            cols.update(
                create_ms=create,
                update_ms=create.copy(),
                state=np.full(created, C.STATE_CODE["CREATING"], dtype=np.int8),
                failure=np.full(created, -1, dtype=np.int8),
            )
            self._append(cols)

            moving = np.flatnonzero(~self._col("deleted") & np.isin(self._col("state"), _IN_PROGRESS_CODES))
            transitions, changed = self._walk(moving, old_now, new_now, walk)

            listed = np.flatnonzero(~self._col("deleted"))
            share = min(0.05, 0.0005 * (new_now - old_now) / DAY_MS)
            deleted = min(len(listed), max(1, int(rng.binomial(len(listed), share))))
            if deleted:
                self._delete(np.sort(rng.choice(listed, size=deleted, replace=False)))
            return {
                "created": created,
                "transitioned": changed,
                "transitions": transitions,
                "deleted": deleted,
                "now": rfc3339(new_now),
            }

    def _walk(self, rows: np.ndarray, old_now: int, new_now: int, walk: random.Random) -> tuple[int, int]:
        """Run the state machine for ``rows`` up to ``new_now``; returns (events, jobs changed)."""
        cols = self._cols
        state_col, update_col, secs_col = cols["state"], cols["update_ms"], cols["secs"]
        events = 0
        touched: list[int] = []
        for row in rows.tolist():
            state = C.STATES[int(state_col[row])]
            last = int(update_col[row])
            secs = bool(secs_col[row])
            if state in _WAITING_FOR_USER and old_now - last > _ABANDONED_AFTER_MS:
                continue  # users come back within weeks or never
            t = max(last, old_now)  # memoryless dwell: start counting where the last step left off
            moved = False
            while state in C.TRANSITIONS:
                t += max(1, int(walk.expovariate(1.0 / C.MEAN_DWELL_SECONDS[state]) * 1000))
                if t > new_now:
                    break
                stamp = t // 1000 * 1000 if secs else t
                if stamp <= last:
                    stamp = last + (1000 if secs else 1)
                    if stamp > new_now:
                        break
                roll, nxt = walk.random(), None
                for candidate, probability in C.TRANSITIONS[state]:
                    roll -= probability
                    nxt = candidate
                    if roll < 0:
                        break
                state, last, moved = nxt, stamp, True  # type: ignore[assignment]
                t = max(t, stamp)
                events += 1
                if state == "USER_REVIEW_REJECT":
                    cols["reject"][row] = min(10, int(cols["reject"][row]) + 1)
                if state == "FAILED":
                    cols["failure"][row] = walk.randrange(len(C.FAILURES))
            if moved:
                state_col[row] = C.STATE_CODE[state]
                update_col[row] = last
                touched.append(row)
        if touched:
            self._touch(np.array(touched, dtype=np.int64), updated=True)
        return events, len(touched)

    def hostile_mutation(
        self, project_id: str, params: ListParams, app_user: str | None = None
    ) -> dict | None:
        """Delete one listed job of the requested set and back-date a new one into its window.

        The victim is sometimes on a page already served (rank < offset), sometimes
        not yet; the new job copies the victim's attributes so it matches the same
        filters, and gets a creation (and update) time inside the requested window.
        Returns ``{"deleted": job_id, "created": job_id | None}`` or None when the set is empty.
        """
        with self._lock:
            project = self._project_code[project_id]
            count, ordered = self._select(project, params, app_user, everything=True)
            if count == 0:
                return None
            rnd = self._hostile_rng
            if params.offset > 0 and (params.offset >= count or rnd.random() < 0.5):
                rank = rnd.randrange(min(params.offset, count))
            else:
                rank = rnd.randrange(min(params.offset, count - 1), count)
            victim = int(ordered[rank])
            creates = self._cols["create_ms"][ordered]
            victim_id = self._job_id(victim)
            self._delete(np.array([victim]))
            self.hostile_mutations += 1
            new_row = (
                None
                if params.job_id is not None
                else self._backdate(victim, params, int(creates.min()), int(creates.max()), rnd)
            )
            return {"deleted": victim_id, "created": None if new_row is None else self._job_id(new_row)}

    def _backdate(
        self, template: int, params: ListParams, first: int, last: int, rnd: random.Random
    ) -> int | None:
        now = self._now_ms
        c_lo = params.create_since if params.create_since is not None else first
        c_hi = min(params.create_until if params.create_until is not None else last, now)
        u_lo = params.update_since if params.update_since is not None else c_lo
        u_hi = min(params.update_until if params.update_until is not None else now, now)
        c_hi = min(c_hi, u_hi)
        if c_lo > c_hi:
            return None
        create = rnd.randint(c_lo, c_hi)
        low = max(create, u_lo)
        if low > u_hi:
            return None
        update = rnd.randint(low, min(u_hi, max(low, create + 3 * DAY_MS)))
        row = {name: self._cols[name][template] for name in _COLUMNS}
        row.update(
            id_hi=rnd.getrandbits(64),
            id_lo=rnd.getrandbits(64),
            salt=rnd.getrandbits(63),
            create_ms=create,
            update_ms=update,
            secs=False,
            deleted=False,
        )
        rows = self._append({name: np.array([value], dtype=_COLUMNS[name]) for name, value in row.items()})
        return int(rows[0])

    def _job_id(self, row: int) -> str:
        return f"{int(self._cols['id_hi'][row]):016x}{int(self._cols['id_lo'][row]):016x}"
