"""Query parameters of the list endpoint, validated the way the service does.

Invalid input raises :class:`ParamError`, which the server answers with 400
``MSS.00000001`` and the message naming the parameter and the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MAX_OFFSET = 2_147_483_647
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)

# RFC 3339 date-time: an explicit offset (or Z) is required, fractions optional.
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_STATE = re.compile(r"^[A-Z][A-Z_]*$")
_SORT_KEYS = {"create_time": "create", "ceate_time": "create", "update_time": "update"}


class ParamError(ValueError):
    """A query parameter the service would reject with 400."""


@dataclass(frozen=True)
class ListParams:
    """A validated list request. Time bounds are epoch milliseconds, both inclusive."""

    offset: int = 0
    limit: int = DEFAULT_LIMIT
    create_since: int | None = None
    create_until: int | None = None
    update_since: int | None = None
    update_until: int | None = None
    states: tuple[str, ...] | None = None
    job_id: str | None = None
    voice_name: str | None = None
    tag: str | None = None
    job_type: str | None = None
    batch_name: str | None = None
    sort_key: str = "create"  # "create" | "update"
    sort_dir: str = "desc"  # "desc" | "asc"
    is_ondemand_resource: bool | None = None

    @property
    def windowed(self) -> bool:
        return any(
            v is not None
            for v in (self.create_since, self.create_until, self.update_since, self.update_until)
        )


def parse_rfc3339_ms(name: str, value: str) -> int:
    """Epoch milliseconds (floored) of an RFC 3339 time; raises ParamError naming ``name``."""
    # A '+' sent unencoded in a query string arrives as a space.
    if len(value) > 6 and value[-6] == " ":
        value = value[:-6] + "+" + value[-5:]
    match = _RFC3339.match(value)
    if not match:
        raise ParamError(f"{name} must be an RFC 3339 time such as 2025-01-10T08:43:17Z")
    day, clock, fraction, offset = match.groups()
    if offset in ("Z", "z"):
        offset = "+00:00"
    micros = (fraction or ".0")[1:7].ljust(6, "0")
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}.{micros}{offset}")
    except ValueError as exc:
        raise ParamError(f"{name} is not a valid time: {exc}") from None
    # timedelta floor division is exact, unlike float timestamps.
    return (parsed - _EPOCH) // _MILLISECOND


def _int(name: str, value: str, low: int, high: int) -> int:
    if not value.isascii() or not value.isdigit():
        raise ParamError(f"{name} must be an integer within {low}..{high}")
    number = int(value)
    if not low <= number <= high:
        raise ParamError(f"{name} must be within {low}..{high}, got {number}")
    return number


def parse_list_params(pairs: list[tuple[str, str]]) -> ListParams:
    """Validate decoded query pairs; unknown parameters are ignored like the service does."""
    raw: dict[str, str] = {}
    for key, value in pairs:
        raw[key] = value  # the last occurrence wins
    fields: dict[str, object] = {}
    if "offset" in raw:
        fields["offset"] = _int("offset", raw["offset"], 0, MAX_OFFSET)
    if "limit" in raw:
        fields["limit"] = _int("limit", raw["limit"], 1, MAX_LIMIT)
    for name in ("create_since", "create_until", "update_since", "update_until"):
        if raw.get(name):
            fields[name] = parse_rfc3339_ms(name, raw[name])
    for low, high in (("create_since", "create_until"), ("update_since", "update_until")):
        if low in fields and high in fields and fields[low] > fields[high]:  # type: ignore[operator]
            raise ParamError(f"{low} must not be later than {high}")
    if raw.get("state"):
        states = tuple(s.strip() for s in raw["state"].split(","))
        for state in states:
            if not _STATE.match(state):
                raise ParamError(f"state must be a comma-separated list of job states, got {state!r}")
        fields["states"] = states
    for name in ("job_id", "voice_name", "tag", "job_type", "batch_name"):
        if raw.get(name):
            fields[name] = raw[name]
    if "sort_key" in raw:
        key = _SORT_KEYS.get(raw["sort_key"])
        if key is None:
            raise ParamError("sort_key must be create_time or update_time")
        fields["sort_key"] = key
    if "sort_dir" in raw:
        direction = raw["sort_dir"].lower()
        if direction not in ("asc", "desc"):
            raise ParamError("sort_dir must be asc or desc")
        fields["sort_dir"] = direction
    if "is_ondemand_resource" in raw:
        flag = raw["is_ondemand_resource"].lower()
        if flag not in ("true", "false"):
            raise ParamError("is_ondemand_resource must be true or false")
        fields["is_ondemand_resource"] = flag == "true"
    return ListParams(**fields)  # type: ignore[arg-type]
