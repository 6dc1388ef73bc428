"""Running client coroutines in tests: with a hang guard, and one listing request."""

from __future__ import annotations

import asyncio

from pipelines.metastudio.client import MetaStudioClient, Page

#: Seconds; only ever reached when the bound under test does not hold.
HANG_GUARD = 60.0


def run(coro):
    """Run with a hang guard: a bound that does not hold fails the test instead of hanging it."""

    async def guarded():
        return await asyncio.wait_for(coro, HANG_GUARD)

    return asyncio.run(guarded())


async def list_once(client: MetaStudioClient, params=None) -> Page:
    async with client:
        return await client.list_jobs("proj-1", params or {})
