"""The variables a sync reads and what each may hold: the one place both settings paths check.

:class:`pipelines.settings.Settings` is built from these by ``Settings.from_env`` (the CLI) and
directly by the Dagster resources; both check numbers against NUMBER_BOUNDS, days against
:func:`day_range`, and lists of names with the parsers here, so both refuse the same values
with the same message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from pipelines.metastudio.errors import ConfigurationError

DEFAULT_FIRST_DAY = date(2025, 1, 1)

# Every variable the project reads; .env.example and the README list the same names.
ENV_VARS = {
    "METASTUDIO_ENDPOINT": "full base URL of the API, e.g. https://metastudio.cn-north-4.myhuaweicloud.com",
    "METASTUDIO_REGION": "region, meaning https://metastudio.{region}.myhuaweicloud.com",
    "HUAWEICLOUD_SDK_AK": "access key for AK/SK signing",
    "HUAWEICLOUD_SDK_SK": "secret key for AK/SK signing",
    "HUAWEICLOUD_SDK_SECURITY_TOKEN": "security token of temporary AK/SK credentials",
    "METASTUDIO_AUTH_TOKEN": "IAM token, sent as X-Auth-Token (instead of AK/SK)",
    "HUAWEICLOUD_SDK_PROJECT_ID": "project id; several comma-separated, all synced into one warehouse",
    "METASTUDIO_APP_USER_ID": "optional X-App-UserId: narrow the listing to one end user",
    "VOICEJOBS_DATA_DIR": "data directory holding lake/, warehouse.duckdb and serving.duckdb (default ./data)",
    "VOICEJOBS_LAKE_URI": "where the Parquet lake goes: a local directory (default <data dir>/lake) or "
    "s3://bucket/prefix on an S3-compatible store (AWS S3, Huawei OBS, MinIO)",
    "AWS_ACCESS_KEY_ID": "access key of the object store holding an s3:// lake",
    "AWS_SECRET_ACCESS_KEY": "secret key of the object store holding an s3:// lake",
    "AWS_SESSION_TOKEN": "session token of temporary object-store credentials",
    "AWS_REGION": "region of the object store (e.g. cn-north-4 for OBS, us-east-1)",
    "AWS_ENDPOINT_URL": "endpoint of a store other than AWS, e.g. https://obs.cn-north-4.myhuaweicloud.com",
    "VOICEJOBS_LAKE_URL_STYLE": "vhost (bucket in the host name, as OBS requires) or path (bucket in the path, as "
    "MinIO usually wants); default: path for an IP address or localhost endpoint, vhost otherwise",
    "VOICEJOBS_FIRST_DAY": "first creation day of the Dagster partitions (default 2025-01-01)",
    "VOICEJOBS_MAX_IN_FLIGHT": "requests outstanding at once (default 8)",
    "VOICEJOBS_MAX_RPS": "cap on requests per second (default: none)",
    "VOICEJOBS_TIMEOUT_SECONDS": "timeout of one request (default 30)",
    "VOICEJOBS_MAX_ATTEMPTS": "attempts per request before giving up (default 6)",
    "VOICEJOBS_MAX_RETRY_SECONDS": "total time one request may spend retrying (default 300)",
    "VOICEJOBS_SAFETY_LAG_SECONDS": "windows end this long before the source's now (default 120)",
    "VOICEJOBS_LOOKBACK_SECONDS": "change capture re-reads this long before the watermark (default 7200)",
    "VOICEJOBS_SPLIT_THRESHOLD": "windows holding more jobs than this are split (default 10000)",
    "VOICEJOBS_MAX_CLOCK_SKEW_SECONDS": "the source's Date may differ this much from this machine's clock before "
    "it is ignored (default 300; 0 believes every Date)",
    "VOICEJOBS_MAX_RESPONSE_BYTES": "a response larger than this is refused as malformed (default 67108864, 64 MiB)",
    "VOICEJOBS_PERSONAL_DATA": "mask (default): phones keep last 4 digits, URLs lose query strings; raw: keep",
    "VOICEJOBS_POSTGRES_URL": "PostgreSQL database to publish the analytics tables to, a libpq URL such as "
    "postgresql://voicejobs@db:5432/analytics (password in the URL, PGPASSWORD or ~/.pgpass); unset: no publish",
    "VOICEJOBS_POSTGRES_SCHEMA": "schema the published tables go to (default analytics)",
    "VOICEJOBS_POSTGRES_READERS": "roles granted read access to the published tables, comma-separated (e.g. bi_reader)",
    "VOICEJOBS_POSTGRES_LOCK_TIMEOUT_SECONDS": "a publish waits this long for a table a BI session holds before "
    "giving up (default 30)",
}


# ---------------------------------------------------------------- numbers


class Bound(NamedTuple):
    """The allowed range of one numeric setting and the variable that sets it."""

    var: str
    low: float
    high: float
    whole: bool = False  # an integer setting


#: Every numeric field of Settings -> its variable and range. The one table both
#: Settings.from_env (the CLI) and Settings.__post_init__ (the Dagster resources build
#: Settings directly) check against, so both refuse the same values with the same message.
#: The maxima are far beyond any useful value; they stop nan/inf and typos (1e12 seconds of
#: safety lag overflowed datetime arithmetic mid-run).
NUMBER_BOUNDS: dict[str, Bound] = {
    "max_in_flight": Bound("VOICEJOBS_MAX_IN_FLIGHT", 1, 64, whole=True),
    "max_rps": Bound("VOICEJOBS_MAX_RPS", 0.01, 1000),
    "timeout": Bound("VOICEJOBS_TIMEOUT_SECONDS", 0.1, 3600),
    "max_attempts": Bound("VOICEJOBS_MAX_ATTEMPTS", 1, 100, whole=True),
    "max_retry_seconds": Bound("VOICEJOBS_MAX_RETRY_SECONDS", 0, 86_400),
    "safety_lag_seconds": Bound("VOICEJOBS_SAFETY_LAG_SECONDS", 0, 86_400),
    "lookback_seconds": Bound("VOICEJOBS_LOOKBACK_SECONDS", 0, 30 * 86_400),
    "split_threshold": Bound("VOICEJOBS_SPLIT_THRESHOLD", 100, 1_000_000, whole=True),
    "max_clock_skew_seconds": Bound("VOICEJOBS_MAX_CLOCK_SKEW_SECONDS", 0, 10 * 365 * 86_400),
    "max_response_bytes": Bound("VOICEJOBS_MAX_RESPONSE_BYTES", 1 << 20, 1 << 32, whole=True),
    "postgres_lock_timeout_seconds": Bound("VOICEJOBS_POSTGRES_LOCK_TIMEOUT_SECONDS", 0.1, 3600),
}


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _out_of_bounds(name: str, shown: str) -> ConfigurationError:
    bound = NUMBER_BOUNDS[name]
    kind = "a whole number" if bound.whole else "a number"
    return ConfigurationError(
        f"{bound.var}={shown} is not {kind} between {_plain(bound.low)} and {_plain(bound.high)}."
    )


def check_number(name: str, value: object, shown: str | None = None) -> None:
    """Raise the ConfigurationError of NUMBER_BOUNDS[name] unless ``value`` is a finite number in range."""
    bound = NUMBER_BOUNDS[name]
    shown = str(value) if shown is None else shown
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _out_of_bounds(name, shown)
    if bound.whole and not isinstance(value, int):
        raise _out_of_bounds(name, shown)
    if not (math.isfinite(value) and bound.low <= value <= bound.high):
        raise _out_of_bounds(name, shown)


def env_number(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """The Settings field ``name`` from its variable (NUMBER_BOUNDS), or ``default`` when unset."""
    bound = NUMBER_BOUNDS[name]
    raw = env.get(bound.var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if bound.whole else float(raw)
    except ValueError:
        raise _out_of_bounds(name, raw) from None
    check_number(name, value, raw)
    return value


# ---------------------------------------------------------------- days

#: The earliest creation day a sync accepts: MetaStudio did not exist before. Days before
#: it (or far in the future) only made a sync page through decades of empty windows.
EARLIEST_DAY = date(2018, 1, 1)


def day_range(today: date | None = None) -> tuple[date, date]:
    """The creation days a sync accepts: EARLIEST_DAY to the day after ``today`` (default: today in UTC)."""
    today = datetime.now(UTC).date() if today is None else today
    return EARLIEST_DAY, today + timedelta(days=1)


def check_day(day: date, what: str, today: date | None = None) -> date:
    first, last = day_range(today)
    if not first <= day <= last:
        raise ConfigurationError(
            f"{what} {day.isoformat()} is out of range; creation days run from {first.isoformat()} "
            f"to {last.isoformat()}."
        )
    return day


def parse_day(text: str, what: str = "date", *, today: date | None = None) -> date:
    """A ``YYYY-MM-DD`` day within :func:`day_range`, or a ConfigurationError saying what was wrong."""
    try:
        day = date.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise ConfigurationError(f"{what} {text!r} is not a valid date; write it as YYYY-MM-DD, e.g. 2025-03-01.") from None
    return check_day(day, what, today)


# ---------------------------------------------------------------- names


#: What a project id may be: Huawei's are 32 hex characters; other ASCII letters, digits,
#: '-' and '_' up to 64 pass too. Each id becomes a URL path segment and a lake directory
#: name, so non-ASCII ids (UnicodeEncodeError) and long ones (ENAMETOOLONG) are refused here.
PROJECT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


#: A schema or role name the publisher creates or grants to: what PostgreSQL keeps as written
#: without quotes, so the names in SQL and in BI tools need no quoting either.
POSTGRES_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def split_names(value: str | None) -> tuple[str, ...]:
    """A comma-separated list, trimmed, empty parts and repeats left out."""
    if not value:
        return ()
    return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def split_project_ids(value: str | None) -> tuple[str, ...]:
    """The project ids of a comma-separated list (as split_names), each checked against PROJECT_ID_PATTERN."""
    ids = split_names(value)
    for pid in ids:
        if not PROJECT_ID_PATTERN.fullmatch(pid):
            shown = repr(pid) if len(pid) <= 40 else f"{pid[:32]!r}... ({len(pid)} characters)"
            raise ConfigurationError(
                f"Project id {shown} in HUAWEICLOUD_SDK_PROJECT_ID is not valid; a project id is 1 to 64 "
                "ASCII letters, digits, '-' or '_' (the 32-character id from the console's 'My Credentials' page)."
            )
    return ids
