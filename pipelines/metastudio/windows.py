"""Time on the wire and windows of it: how a listing's creation or update times are asked for.

A window's bounds go on the wire as whole seconds; a creation day's window is its UTC day.
The interval conventions (closed windows, half-open owner ranges) are stated in
:mod:`pipelines.sync.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from pipelines.contract import EPOCH_MS_THRESHOLD, WIRE_TIME_FORMAT

ONE_SECOND = timedelta(seconds=1)


def format_time(dt: datetime) -> str:
    """The wire format of time parameters: RFC 3339 UTC, whole seconds (``2025-01-10T08:43:17Z``).

    Sub-second parts are dropped (floored). Naive datetimes are rejected: their zone is a guess.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()} has no time zone; pass a timezone-aware datetime")
    return dt.astimezone(UTC).strftime(WIRE_TIME_FORMAT)


def floor_second(dt: datetime) -> datetime:
    """``dt`` in UTC with the sub-second part dropped (what :func:`format_time` sends)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()} has no time zone; pass a timezone-aware datetime")
    return dt.astimezone(UTC).replace(microsecond=0)


def epoch_seconds(value: object) -> int | None:
    """Whole epoch seconds of an API timestamp (seconds or milliseconds, per value); None if not one."""
    if type(value) is not int:  # an int is what the API sends; the rest, what it should not
        value = _whole_number(value)
    if value is None or value < 0:
        return None
    return value // 1000 if value >= EPOCH_MS_THRESHOLD else value


def _whole_number(value: object) -> int | None:
    """A timestamp sent as digits in a string or as a float, as an int; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        return int(text) if text.isdigit() else None
    if isinstance(value, float):
        return None if value != value else int(value)  # NaN
    return value if isinstance(value, int) else None


def _epoch_millis(value: object) -> int | None:
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        value = int(value)
    return value if value >= EPOCH_MS_THRESHOLD else value * 1000


@dataclass(frozen=True, order=True)
class Window:
    """A closed time interval ``[since, until]``, timezone-aware, ``since <= until``."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"Window.{name} must be a timezone-aware datetime, got {value!r}")
        if self.since > self.until:
            raise ValueError(f"Window since {self.since.isoformat()} is after until {self.until.isoformat()}")

    @property
    def seconds(self) -> float:
        return (self.until - self.since).total_seconds()

    def _midpoint(self) -> datetime:
        # Floored to the second so that the bound sent on the wire is the bound recorded here.
        return floor_second(self.since + (self.until - self.since) / 2)

    def can_split(self) -> bool:
        """True when both halves would be strictly smaller (the window spans at least two seconds)."""
        mid = self._midpoint()
        return self.since < mid < self.until

    def split(self) -> tuple[Window, Window]:
        """Two closed halves sharing the midpoint instant; jobs there appear in both (dedup by job_id)."""
        mid = self._midpoint()
        if not self.since < mid < self.until:
            raise ValueError(f"window {self} is too short to split at whole seconds")
        return Window(self.since, mid), Window(mid, self.until)

    def __str__(self) -> str:
        return f"[{format_time(self.since)}, {format_time(self.until)}]"


def day_window(day: date) -> Window:
    """``[day 00:00:00Z, next day 00:00:00Z]``, closed.

    Adjacent days share one instant, so days tile time without a gap at any
    precision the server may compare with; a job at exactly midnight is listed
    in both, and downstream assigns each job to the day of its own create_time.
    """
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return Window(start, start + timedelta(days=1))


def day_windows(first: date, last: date) -> list[Window]:
    """One :func:`day_window` per day from ``first`` to ``last``, both included."""
    if last < first:
        raise ValueError(f"last day {last} is before first day {first}")
    return [day_window(first + timedelta(days=n)) for n in range((last - first).days + 1)]
