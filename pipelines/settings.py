"""Settings of a sync, from environment variables or from Dagster resources.

The CLI builds :class:`Settings` with :meth:`Settings.from_env`; the Dagster
resources build the same object from ``EnvVar`` fields. Either way secrets are
registered with :mod:`pipelines.redact` the moment they are read, and never
shown by ``repr``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import httpx

from pipelines.metastudio.auth import AKSKAuth, TokenAuth
from pipelines.metastudio.errors import ConfigurationError
from pipelines.redact import register_secret

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

#: The earliest creation day a sync accepts: MetaStudio did not exist before. Days before
#: it (or far in the future) only made a sync page through decades of empty windows.
EARLIEST_DAY = date(2018, 1, 1)


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _out_of_bounds(name: str, shown: str) -> ConfigurationError:
    bound = NUMBER_BOUNDS[name]
    kind = "a whole number" if bound.whole else "a number"
    return ConfigurationError(
        f"{bound.var}={shown} is not {kind} between {_plain(bound.low)} and {_plain(bound.high)}."
    )


def _check_number(name: str, value: object, shown: str | None = None) -> None:
    """Raise the ConfigurationError of NUMBER_BOUNDS[name] unless ``value`` is a finite number in range."""
    bound = NUMBER_BOUNDS[name]
    shown = str(value) if shown is None else shown
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _out_of_bounds(name, shown)
    if bound.whole and not isinstance(value, int):
        raise _out_of_bounds(name, shown)
    if not (math.isfinite(value) and bound.low <= value <= bound.high):
        raise _out_of_bounds(name, shown)


def _env_number(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """The Settings field ``name`` from its variable (NUMBER_BOUNDS), or ``default`` when unset."""
    bound = NUMBER_BOUNDS[name]
    raw = env.get(bound.var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if bound.whole else float(raw)
    except ValueError:
        raise _out_of_bounds(name, raw) from None
    _check_number(name, value, raw)
    return value


def day_range(today: date | None = None) -> tuple[date, date]:
    """The creation days a sync accepts: EARLIEST_DAY to the day after ``today`` (default: today in UTC)."""
    today = datetime.now(UTC).date() if today is None else today
    return EARLIEST_DAY, today + timedelta(days=1)


def _check_day(day: date, what: str, today: date | None = None) -> date:
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
    return _check_day(day, what, today)


@dataclass(frozen=True)
class Settings:
    """Everything a sync needs to know; secrets are hidden from repr."""

    endpoint: str | None = None
    region: str | None = None
    ak: str | None = field(default=None, repr=False)
    sk: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    auth_token: str | None = field(default=None, repr=False)
    project_ids: tuple[str, ...] = ()
    app_user_id: str | None = None
    data_dir: Path = Path("data")
    lake_uri: str | None = None  # None: <data_dir>/lake
    object_store: ObjectStoreAccess = field(default_factory=lambda: ObjectStoreAccess(), repr=False)
    first_day: date = DEFAULT_FIRST_DAY
    max_in_flight: int = 8
    max_rps: float | None = None
    timeout: float = 30.0
    max_attempts: int = 6
    max_retry_seconds: float = 300.0
    safety_lag_seconds: float = 120.0
    lookback_seconds: float = 7200.0
    split_threshold: int = 10_000
    personal_data: str = "mask"
    max_clock_skew_seconds: float = 300.0  # 0: believe every Date the source sends
    max_response_bytes: int = 64 << 20
    # Set only by the code that starts the embedded simulator: the run reads simulated jobs.
    embedded_simulator: bool = False
    # PostgreSQL serving (pipelines/publish): the URL may hold a password, so it is a secret.
    postgres_url: str | None = field(default=None, repr=False)
    postgres_schema: str = "analytics"
    postgres_readers: tuple[str, ...] = ()
    postgres_lock_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        for secret in (self.ak, self.sk, self.security_token, self.auth_token):
            register_secret(secret)
        if self.lake_uri and parse_lake_uri(self.lake_uri):
            self.object_store.validate()
        if self.personal_data not in ("mask", "raw"):
            raise ConfigurationError(
                f"VOICEJOBS_PERSONAL_DATA={self.personal_data!r} is not known; use 'mask' (default) or 'raw'."
            )
        if self.endpoint:
            self.base_url()  # an endpoint that is not an http(s) URL is refused where it is read
        if self.app_user_id is not None and any("\u4e00" <= ch <= "\u9fff" for ch in self.app_user_id):
            raise ConfigurationError("METASTUDIO_APP_USER_ID must not contain Chinese characters (an API rule).")
        for name in NUMBER_BOUNDS:
            value = getattr(self, name)
            if not (name == "max_rps" and value is None):
                _check_number(name, value)
        self._check_postgres()
        if not isinstance(self.first_day, date):
            raise ConfigurationError(f"VOICEJOBS_FIRST_DAY {self.first_day!r} is not a date.")
        _check_day(self.first_day, "VOICEJOBS_FIRST_DAY")

    def _check_postgres(self) -> None:
        """Register the PostgreSQL URL's password as a secret; check the names it will create and grant to."""
        if self.postgres_url:
            from pipelines.publish.target import PublishError, parse_postgres_url

            try:
                parse_postgres_url(self.postgres_url)
            except PublishError as exc:
                raise ConfigurationError(str(exc)) from None
        if not POSTGRES_NAME.fullmatch(self.postgres_schema or "") or len(self.postgres_schema) > 50:
            raise ConfigurationError(
                f"VOICEJOBS_POSTGRES_SCHEMA={self.postgres_schema!r} is not a plain schema name; use 1 to 50 "
                "lowercase letters, digits or '_', starting with a letter or '_' (default analytics).")
        for role in self.postgres_readers:
            if not POSTGRES_NAME.fullmatch(role):
                raise ConfigurationError(
                    f"VOICEJOBS_POSTGRES_READERS names {role!r}, which is not a plain role name; use lowercase "
                    "letters, digits or '_', starting with a letter or '_' (as PostgreSQL folds CREATE ROLE names).")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Read every variable of :data:`ENV_VARS`; ``overrides`` win (CLI flags)."""
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        first_day = text("VOICEJOBS_FIRST_DAY")
        values = dict(
            endpoint=text("METASTUDIO_ENDPOINT"),
            region=text("METASTUDIO_REGION"),
            ak=text("HUAWEICLOUD_SDK_AK"),
            sk=text("HUAWEICLOUD_SDK_SK"),
            security_token=text("HUAWEICLOUD_SDK_SECURITY_TOKEN"),
            auth_token=text("METASTUDIO_AUTH_TOKEN"),
            project_ids=split_project_ids(text("HUAWEICLOUD_SDK_PROJECT_ID")),
            app_user_id=text("METASTUDIO_APP_USER_ID"),
            data_dir=Path(text("VOICEJOBS_DATA_DIR") or "data"),
            lake_uri=text("VOICEJOBS_LAKE_URI"),
            object_store=ObjectStoreAccess.from_env(env),
            first_day=parse_day(first_day, "VOICEJOBS_FIRST_DAY") if first_day else DEFAULT_FIRST_DAY,
            max_in_flight=_env_number(env, "max_in_flight", 8),
            max_rps=_env_number(env, "max_rps", None),
            timeout=_env_number(env, "timeout", 30.0),
            max_attempts=_env_number(env, "max_attempts", 6),
            max_retry_seconds=_env_number(env, "max_retry_seconds", 300.0),
            safety_lag_seconds=_env_number(env, "safety_lag_seconds", 120.0),
            lookback_seconds=_env_number(env, "lookback_seconds", 7200.0),
            split_threshold=_env_number(env, "split_threshold", 10_000),
            max_clock_skew_seconds=_env_number(env, "max_clock_skew_seconds", 300.0),
            max_response_bytes=_env_number(env, "max_response_bytes", 64 << 20),
            personal_data=(text("VOICEJOBS_PERSONAL_DATA") or "mask").lower(),
            postgres_url=text("VOICEJOBS_POSTGRES_URL"),
            postgres_schema=text("VOICEJOBS_POSTGRES_SCHEMA") or "analytics",
            postgres_readers=split_names(text("VOICEJOBS_POSTGRES_READERS")),
            postgres_lock_timeout_seconds=_env_number(env, "postgres_lock_timeout_seconds", 30.0),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    @property
    def has_credentials(self) -> bool:
        return bool(self.auth_token or self.ak or self.sk)

    @property
    def nothing_configured(self) -> bool:
        """No endpoint, region, credential or project: the embedded simulator may stand in."""
        return not (self.endpoint or self.region or self.has_credentials or self.project_ids)

    def base_url(self) -> str:
        if self.endpoint:
            url = self.endpoint.rstrip("/")
            parsed = httpx.URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ConfigurationError(
                    f"METASTUDIO_ENDPOINT={url!r} is not an http(s) URL; "
                    "set it like https://metastudio.cn-north-4.myhuaweicloud.com."
                )
            return url
        if self.region:
            return f"https://metastudio.{self.region}.myhuaweicloud.com"
        raise ConfigurationError(
            "No API endpoint is configured; set METASTUDIO_REGION (e.g. cn-north-4) or METASTUDIO_ENDPOINT."
        )

    def auth(self) -> httpx.Auth:
        """The configured authentication; AK/SK wins over a token when both are set."""
        if self.ak or self.sk:
            if not (self.ak and self.sk):
                missing = "HUAWEICLOUD_SDK_SK" if self.ak else "HUAWEICLOUD_SDK_AK"
                raise ConfigurationError(f"AK/SK signing needs both keys; {missing} is not set.")
            return AKSKAuth(self.ak, self.sk, self.security_token)
        if self.auth_token:
            return TokenAuth(self.auth_token)
        raise ConfigurationError(
            "No credentials are configured; set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK "
            "(AK/SK signing) or METASTUDIO_AUTH_TOKEN (an IAM token)."
        )

    def require_projects(self) -> tuple[str, ...]:
        if not self.project_ids:
            raise ConfigurationError(
                "No project id is configured; set HUAWEICLOUD_SDK_PROJECT_ID (comma-separated for several)."
            )
        return self.project_ids


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
    if not value:
        return ()
    ids = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    for pid in ids:
        if not PROJECT_ID_PATTERN.fullmatch(pid):
            shown = repr(pid) if len(pid) <= 40 else f"{pid[:32]!r}... ({len(pid)} characters)"
            raise ConfigurationError(
                f"Project id {shown} in HUAWEICLOUD_SDK_PROJECT_ID is not valid; a project id is 1 to 64 "
                "ASCII letters, digits, '-' or '_' (the 32-character id from the console's 'My Credentials' page)."
            )
    return ids


#: An S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens.
S3_BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse_lake_uri(uri: str) -> tuple[str, str] | None:
    """(bucket, prefix) of an ``s3://bucket/prefix`` lake, None for a local directory.

    Any other scheme is refused with a ConfigurationError: OBS and MinIO are reached as
    s3:// with AWS_ENDPOINT_URL."""
    scheme, sep, rest = uri.strip().partition("://")
    if not sep or scheme.lower() == "file":
        return None
    if scheme.lower() not in ("s3", "s3a"):
        raise ConfigurationError(
            f"VOICEJOBS_LAKE_URI={uri!r} has the scheme {scheme!r}; use a local directory or s3://bucket/prefix "
            "(Huawei OBS, MinIO and other S3-compatible stores too, with AWS_ENDPOINT_URL)."
        )
    bucket, _, prefix = rest.partition("/")
    if not S3_BUCKET_PATTERN.fullmatch(bucket):
        raise ConfigurationError(
            f"VOICEJOBS_LAKE_URI={uri!r} does not name a bucket; write it as s3://bucket/prefix "
            "(3 to 63 lowercase letters, digits, '.' or '-')."
        )
    return bucket, prefix.strip("/")


@dataclass(frozen=True)
class ObjectStoreAccess:
    """Credentials, region and endpoint of the S3-compatible store of an s3:// lake.

    From the standard AWS_* variables, and VOICEJOBS_LAKE_URL_STYLE. Without keys, the store's client looks in its usual
    places (~/.aws, an instance role). Secrets are registered for redaction when read."""

    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint_url: str | None = None
    url_style: str | None = None  # "vhost" or "path"; None: path for IP and localhost endpoints

    def __post_init__(self) -> None:
        for secret in (self.access_key_id, self.secret_access_key, self.session_token):
            register_secret(secret)
        if self.url_style not in (None, "vhost", "path"):
            raise ConfigurationError(
                f"VOICEJOBS_LAKE_URL_STYLE={self.url_style!r} is not known; use 'vhost' or 'path'."
            )

    def validate(self) -> None:
        """Raise a ConfigurationError unless these settings can work (checked when an s3:// lake uses them)."""
        if bool(self.access_key_id) != bool(self.secret_access_key):
            missing = "AWS_SECRET_ACCESS_KEY" if self.access_key_id else "AWS_ACCESS_KEY_ID"
            raise ConfigurationError(f"object-store credentials need both keys; {missing} is not set.")
        if self.endpoint_url:
            parsed = httpx.URL(self.endpoint_url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ConfigurationError(
                    f"AWS_ENDPOINT_URL={self.endpoint_url!r} is not an http(s) URL; set it like "
                    "https://obs.cn-north-4.myhuaweicloud.com or http://127.0.0.1:9000."
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ObjectStoreAccess:
        def text(name: str) -> str | None:
            return env.get(name, "").strip() or None

        return cls(
            access_key_id=text("AWS_ACCESS_KEY_ID"),
            secret_access_key=text("AWS_SECRET_ACCESS_KEY"),
            session_token=text("AWS_SESSION_TOKEN"),
            region=text("AWS_REGION"),
            endpoint_url=text("AWS_ENDPOINT_URL"),
            url_style=(text("VOICEJOBS_LAKE_URL_STYLE") or "").lower() or None,
        )
