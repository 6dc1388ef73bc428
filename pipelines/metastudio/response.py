"""What a MetaStudio answer means: a page, a failure worth retrying, or an error to report.

A 200 must carry a whole JSON object with an integer ``count`` and a list of job objects,
else it is "malformed" and retried. Any other status is translated once, here: throttling
(429, with its ``Retry-After``), server errors and 408 are retried; refused credentials, a
rejected parameter, a wrong endpoint (404) and anything unexpected end the request.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import orjson

from pipelines.metastudio.clock import MAX_DATE_CHARS, parse_http_date
from pipelines.metastudio.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    MetaStudioError,
)
from pipelines.metastudio.retry import Retryable
from pipelines.metastudio.wire import wire_jobs

#: A real page of 100 jobs is 100-300 KB; a body past this is not a page (an endless or hostile stream).
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Page:
    """One page of the listing: the total ``count`` matching the filters and this page's jobs.

    ``server_time`` is the response's ``Date`` when the client believes it (present, readable and
    within the clock-skew bound), else None.
    """

    count: int
    jobs: list[dict]
    server_time: datetime | None


def parse_page(body: bytes, server_time: datetime | None, *, lean: bool = False) -> Page:
    """A validated page, or a retryable "malformed" failure (truncated, HTML or wrongly shaped bodies).

    ``lean``: the jobs as WireJobs (paging's fields and each job's bytes: metastudio/wire.py)
    where the page allows, else decoded whole as always."""
    if lean and (split := wire_jobs(body)) is not None:
        count, jobs = split
        return Page(count=count, jobs=jobs, server_time=server_time)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        snippet = "an HTML page" if body.lstrip()[:1] == b"<" else "a body that is not complete JSON"
        raise Retryable("malformed", f"HTTP 200 with {snippet}") from None
    if not isinstance(data, dict):
        raise Retryable("malformed", "HTTP 200 with JSON that is not an object")
    count, jobs = data.get("count"), data.get("jobs")
    if jobs is None and count == 0:
        jobs = []  # servers omit empty fields
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise Retryable("malformed", "HTTP 200 without an integer 'count'")
    if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
        raise Retryable("malformed", "HTTP 200 without a list of job objects in 'jobs'")
    return Page(count=count, jobs=jobs, server_time=server_time)


def failure_for_status(
    status: int,
    headers: httpx.Headers,
    body: bytes,
    server_time: datetime | None,
    *,
    token_auth: bool,
    wall_clock: Callable[[], datetime],
) -> Exception:
    """The exception a non-200 answer raises: :class:`Retryable` or a :class:`MetaStudioError`.

    A 429's ``Retry-After`` date is measured against the answer's own ``Date`` when it has one,
    else against ``wall_clock()``. ``token_auth`` says an IAM token was sent (not a signature).
    """
    error_code, error_msg = error_fields(body)
    if status == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"), server_time or wall_clock())
        return Retryable("429", "HTTP 429 throttled", retry_after=retry_after, status=429, error_code=error_code)
    if status >= 500 or status == 408:
        cause = "timeout" if status == 408 else "5xx"
        return Retryable(cause, f"HTTP {status}", status=status, error_code=error_code)
    if status in (401, 403):
        return AuthenticationError.from_response(status, error_code, error_msg, token_auth=token_auth)
    if status == 400:
        return BadRequestError(error_code, error_msg)
    if status == 404:
        return ConfigurationError(
            "MetaStudio answered 404 for the job listing; check METASTUDIO_ENDPOINT (the API's base URL) "
            "and HUAWEICLOUD_SDK_PROJECT_ID.",
            status=404,
            error_code=error_code,
        )
    return MetaStudioError(
        f"MetaStudio answered HTTP {status}, which the sync does not expect; "
        "check METASTUDIO_ENDPOINT points at the MetaStudio API and not at a proxy page.",
        status=status,
        error_code=error_code,
    )


def error_fields(body: bytes) -> tuple[str | None, str | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    code, msg = data.get("error_code"), data.get("error_msg")
    return (str(code) if code is not None else None, str(msg) if msg is not None else None)


def content_length(headers: httpx.Headers) -> int | None:
    value = headers.get("Content-Length")
    if value is None or not value.strip().isdigit() or len(value) > 30:
        return None
    return int(value)


def parse_retry_after(value: str | None, reference: datetime) -> float | None:
    """Seconds the server asked to wait: delta-seconds, or an HTTP-date measured against ``reference``.

    ``reference`` is the server's own ``Date`` of the same response when it sent one (both then
    come from one clock, however wrong it is), else the local clock. Non-finite or unreadable
    values are ignored (None); the caller never sleeps past its retry budget.
    """
    if value is None or len(value) > MAX_DATE_CHARS:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    when = parse_http_date(value)
    if when is None:
        return None
    return max(0.0, (when - reference) / timedelta(seconds=1))
