"""The source's clock as one MetaStudio client sees it: the ``Date`` of its answers.

A ``Date`` is believed only when it is readable and within ``max_clock_skew_seconds`` of the
local clock; the newest believed one, plus monotonic time since it arrived, is the source's
current time (:meth:`SourceClock.server_now`). A ``Date`` too far off is kept as the largest
skew seen and logged once, and never moves the source's clock.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import httpx

log = logging.getLogger("voicejobs.client")

#: A source ``Date`` further than this from the local clock is not taken as the source's clock.
DEFAULT_MAX_CLOCK_SKEW_SECONDS = 300.0
#: Longer header values are not dates (an RFC 7231 date has 29 characters); never parse a megabyte.
MAX_DATE_CHARS = 100


class SourceClock:
    """The source-clock part of :class:`pipelines.metastudio.client.MetaStudioClient`.

    The client's ``__init__`` calls :meth:`_init_clock`; the client supplies ``_host`` and
    ``_monotonic``.
    """

    _host: str
    _monotonic: Callable[[], float]

    def _init_clock(self, wall_clock: Callable[[], datetime] | None, max_clock_skew_seconds: float | None) -> None:
        self.max_clock_skew_seconds = max_clock_skew_seconds
        self._wall_clock = wall_clock or utc_now
        # Source clock: the newest believed server Date and the local monotonic time it arrived.
        self._server_date: tuple[datetime, float] | None = None
        #: The largest skew (server Date minus local clock) of a Date not believed; None when none.
        self.clock_skew: timedelta | None = None

    def server_now(self) -> datetime:
        """The source's current time: newest server ``Date`` plus monotonic time since; local clock before any.

        ``Date`` has whole seconds and is stamped before the answer travels, so this errs
        early, never late: the safe side for deciding which windows are complete. A ``Date``
        too far from the local clock (see ``max_clock_skew_seconds``) is never used.
        """
        if self._server_date is None:
            return self._wall_clock()
        date_value, received_at = self._server_date
        try:
            return date_value + timedelta(seconds=max(0.0, self._monotonic() - received_at))
        except OverflowError:  # only when every Date is believed and one said year 9999
            return datetime.max.replace(tzinfo=UTC)

    def _observe_date(self, headers: httpx.Headers, received_at: float) -> tuple[datetime | None, bool]:
        """The response's ``Date`` as sent (None if absent or not a date) and whether it is believed.

        A Date further than the skew bound from the local clock is not: it never moves
        :meth:`server_now`, however far off (year 9999 included).
        """
        server_time = parse_http_date(headers.get("Date"))
        if server_time is None:
            return None, False
        if self.max_clock_skew_seconds is not None:
            local = self._wall_clock()
            skew = server_time - local
            if abs(skew) > timedelta(seconds=self.max_clock_skew_seconds):
                self._note_skew(skew, server_time, local)
                return server_time, False
        if self._server_date is None or server_time >= self._server_date[0]:
            self._server_date = (server_time, received_at)
        return server_time, True

    def _note_skew(self, skew: timedelta, server_time: datetime, local: datetime) -> None:
        first = self.clock_skew is None
        if first or abs(skew) > abs(self.clock_skew):
            self.clock_skew = skew
        if first:
            log.warning(
                "The MetaStudio endpoint at host %r sends a Date of %s, %s %s the local clock (%s), more than "
                "VOICEJOBS_MAX_CLOCK_SKEW_SECONDS=%g allows; using the local clock as the source's clock "
                "(check the machine's clock or the endpoint).",
                self._host,
                server_time.isoformat(),
                describe_seconds(abs(skew) / timedelta(seconds=1)),
                "ahead of" if skew > timedelta(0) else "behind",
                local.isoformat(timespec="seconds"),
                self.max_clock_skew_seconds,
            )


def utc_now() -> datetime:
    return datetime.now(UTC)


@lru_cache(maxsize=16)  # a busy source sends the same Date, to the second, to many answers
def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP-date as an aware UTC datetime; None for anything else (never raises, never parses much)."""
    if not value or len(value) > MAX_DATE_CHARS:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed is None:
            return None
        if parsed.tzinfo is None:  # "-0000" form: RFC 7231 dates are GMT
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):  # year 10000, day 32, year 1 at -0100
        return None


def describe_seconds(seconds: float) -> str:
    if seconds >= 2 * 86_400 * 365:
        return f"{seconds / (86_400 * 365.25):,.0f} years"
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:,.0f} days"
    if seconds >= 2 * 3_600:
        return f"{seconds / 3_600:,.0f} hours"
    return f"{seconds:,.0f} s"
