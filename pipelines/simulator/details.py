"""A job's free-text details, each derived from the job's salt alone.

A salt yields a fixed sequence of 64-bit words (splitmix64), one slot per detail, so each
detail has its own word whatever else the job has: asset ids, pre-signed URL credentials,
phone numbers, resource ids, assessment results, unknown extra fields.
"""

from __future__ import annotations

import functools
import random
import time

import numpy as np

from . import catalog as C
from .table import F_ASSESS_EXTRA

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# Fixed slots of a job's random words.
W_ASSET, W_AUTH_URL, W_INPUT_URL, W_PHONE, W_DHTMS_HI, W_DHTMS_LO, W_RESOURCE, W_STATUS, W_ACTUAL, W_EXTRA = (
    range(10)
)
WORDS = 10

REGIONS = ("cn-north-4", "cn-east-3")
PHONE_FORMAT: dict[str | None, tuple[str, int]] = {
    "CN": ("+86 1", 10),
    "EN": ("+1 415", 7),
    "ES": ("+34 6", 8),
    "AR": ("+971 5", 8),
    "JA": ("+81 90", 8),
    "KO": ("+82 10", 8),
    None: ("+44 7", 9),
}
STYLES = ("calm", "lively", "温柔", "news")
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_SIG_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def word(salt: int, slot: int) -> int:
    """splitmix64: the ``slot``-th deterministic 64-bit word of a job's salt."""
    z = (salt + (slot + 1) * _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def words(salt: np.ndarray, slot: int) -> list[int]:
    """:func:`word` for many salts at once (uint64 arithmetic wraps like the masks above)."""
    z = salt + np.uint64(((slot + 1) * _GOLDEN) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))).tolist()


def storage_hosts(project_id: str) -> list[str]:
    """The object-storage hosts a project's URLs point at, one per region."""
    return [f"https://metastudio-{project_id}.obs.{region}.myhuaweicloud.com" for region in REGIONS]


@functools.lru_cache(maxsize=4096)
def _day_text(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def rfc3339_seconds(epoch_seconds: int) -> str:
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


def presigned(word: int, expires: int) -> str:
    """An object-storage pre-signed query string: the credential a sync must not keep."""
    key = _ACCESS_KEYS[word & 4095]
    signature = _SIGNATURE_PARTS[(word >> 12) & 4095] + _SIGNATURE_PARTS[(word >> 24) & 4095]
    return f"?AccessKeyId={key}&Expires={expires}&Signature={signature}%3D"


def assess(statuses: int, actuals: int, flags: int) -> dict:
    """The ``assess_result`` object: one check per assessed parameter, about 15% failing."""
    result: dict = {}
    failing = 0
    for name, expected, low, high, unit, zh, en in C.ASSESS_PARAMS:
        status = 1 if statuses & 1023 < 154 else 0
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
