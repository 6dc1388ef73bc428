"""What one failed attempt of a MetaStudio request means for the next: retry, or give up.

An attempt that failed with a cause worth retrying raises :class:`Retryable`; the client
then waits (full-jitter backoff, or longer when the server asked) and tries again within the
request's :class:`RetryBudget`. A retry that could only start after the budget is not sent
(:class:`OutOfBudget`). The loop itself is :meth:`MetaStudioClient.list_jobs
<pipelines.metastudio.client.MetaStudioClient.list_jobs>`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The causes a retry is counted under (ClientStats.retries), in the order they are reported.
RETRY_CAUSES = ("429", "5xx", "timeout", "connection", "malformed")


class Retryable(Exception):
    """One attempt failed with a cause worth retrying."""

    def __init__(
        self,
        cause: str,
        detail: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        error_code: str | None = None,
        unreachable: bool = False,
        final: bool = False,
    ) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail
        self.retry_after = retry_after
        self.status = status
        self.error_code = error_code
        self.unreachable = unreachable
        self.final = final  # no retry can mend it (a name that does not resolve): stop at this attempt


class OutOfBudget(Exception):
    """The next attempt could only start after the retry budget has run out."""


@dataclass
class RetryBudget:
    """One request's retry budget: measured from its first send, so queueing for a slot costs none of it."""

    started: float | None = None
    start_by: float | None = None  # the latest monotonic time a retry may still be sent
