"""The pace of one MetaStudio client's requests: a rate cap and the pause a 429 asks for.

Requests start at least one interval apart (2% under the cap, ``PACING_MARGIN``), and a
``Retry-After`` pauses every request of the client, not only the one that was throttled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pipelines.metastudio.retry import OutOfBudget

if TYPE_CHECKING:
    from pipelines.metastudio.client import ClientStats

# 2% under the cap, so scheduling jitter between here and the server never brings two
# requests closer together than the server's own spacing.
PACING_MARGIN = 1.02


class Pacing:
    """The pacing part of :class:`pipelines.metastudio.client.MetaStudioClient`.

    The client's ``__init__`` calls :meth:`_init_pacing`; the client supplies ``_monotonic``,
    ``_sleep`` and ``stats``, and raises ``_blocked_until`` when a server asks for a pause.
    """

    _monotonic: Callable[[], float]
    _sleep: Callable[[float], Awaitable[None]]
    stats: ClientStats

    def _init_pacing(self, max_requests_per_second: float | None) -> None:
        # Pacing: requests start at least one interval apart; a 429 pauses every request.
        self._interval = PACING_MARGIN / max_requests_per_second if max_requests_per_second else 0.0
        self._next_slot = 0.0
        self._blocked_until = 0.0
        self._pace_lock = asyncio.Lock()

    async def _pace(self, start_by: float | None = None) -> None:
        """Wait for this request's start slot (rate cap) and for any server-requested pause.

        Requests pass one at a time on an ideal schedule, one interval apart: a late wake-up
        (a busy event loop oversleeps by milliseconds) is made up by the next slot instead of
        adding up over thousands of requests, but two requests never leave less than half an
        interval apart, and after an idle spell the schedule restarts from now (no burst).
        A retry whose slot falls after ``start_by`` gives its slot up (:class:`OutOfBudget`).
        """
        if not self._interval and self._blocked_until <= self._monotonic():
            return
        async with self._pace_lock:
            slot = max(self._next_slot, self._blocked_until)
            if start_by is not None and slot > start_by:
                raise OutOfBudget
            wait = slot - self._monotonic()
            if wait > 0:
                await self._sleep(wait)
                self.stats.wait_seconds += wait
            left = self._monotonic()
            self._next_slot = max(max(slot, left - self._interval) + self._interval, left + self._interval / 2)
