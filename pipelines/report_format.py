"""How the report writes values: escaped text, percentages, counts and human durations."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

# Duration units, smallest first: (seconds in one, name, decimals shown). A duration reads in
# the largest unit it holds one and a half of: 90 s is 1.5 min, 36 h is 1.5 days.
DURATION_UNITS = ((1, "s", 0), (60, "min", 0), (3600, "h", 1), (86400, "days", 1))


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def count(n: int | None) -> str:
    return "0" if n is None else f"{n:,}"


def duration_unit(seconds: float) -> tuple[int, str, int]:
    """The unit `seconds` reads best in: s under 90 s, min under 90 min, h under 36 h, else days."""
    for unit, (next_size, _, _) in zip(DURATION_UNITS, DURATION_UNITS[1:], strict=False):
        if seconds < 1.5 * next_size:
            return unit
    return DURATION_UNITS[-1]


def duration(seconds: float | None, unit: tuple[int, str, int] | None = None) -> str:
    """Seconds as a short human duration (45 s, 12 min, 3.5 h, 2.1 days), in `unit` if given.

    A positive duration too small to show in the unit reads "<1 min", "<0.1 days".
    """
    if seconds is None:
        return "n/a"
    size, name, digits = unit or duration_unit(seconds)
    text = f"{seconds / size:.{digits}f}"
    if seconds > 0 and float(text) == 0:
        return f"<{10**-digits:g} {name}"
    return f"{text} {name}"


def durations(values: Sequence[float | None]) -> list[str]:
    """A column of durations in one unit, the one its largest value reads best in."""
    known = [v for v in values if v is not None]
    unit = duration_unit(max(known)) if known else None
    return [duration(v, unit) for v in values]
