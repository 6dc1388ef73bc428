"""A monotonic clock for client tests that moves only when the client sleeps."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Monotonic time that only moves when the client sleeps; records every wait.

    With ``yields``, a sleep also lets other tasks run, as a real sleep would (tests of
    concurrent requests need that; tests of one request's retries do not)."""

    def __init__(self, *, yields: bool = True) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []
        self._yields = yields

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self._yields:
            await asyncio.sleep(0)
