"""Settings of a sync, from environment variables or from Dagster resources.

The CLI builds :class:`Settings` with :meth:`Settings.from_env`; the Dagster
resources build the same object from ``EnvVar`` fields. Either way secrets are
registered with :mod:`pipelines.redact` the moment they are read, and never
shown by ``repr``.

The variables, their bounds and the parsers of their values are in pipelines/settings_vars.py;
the lake's location and object-store access in pipelines/settings_lake.py. Every name they
define that callers use is importable from here as well.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import httpx

from pipelines.metastudio.auth import AKSKAuth, TokenAuth
from pipelines.metastudio.errors import ConfigurationError
from pipelines.redact import register_secret
from pipelines.settings_lake import S3_BUCKET_PATTERN, ObjectStoreAccess, parse_lake_uri
from pipelines.settings_vars import (
    DEFAULT_FIRST_DAY,
    EARLIEST_DAY,
    ENV_VARS,
    NUMBER_BOUNDS,
    POSTGRES_NAME,
    PROJECT_ID_PATTERN,
    Bound,
    check_day,
    check_number,
    day_range,
    env_number,
    parse_day,
    split_names,
    split_project_ids,
)

__all__ = [
    "DEFAULT_FIRST_DAY",
    "EARLIEST_DAY",
    "ENV_VARS",
    "NUMBER_BOUNDS",
    "POSTGRES_NAME",
    "PROJECT_ID_PATTERN",
    "S3_BUCKET_PATTERN",
    "Bound",
    "ObjectStoreAccess",
    "Settings",
    "day_range",
    "parse_day",
    "parse_lake_uri",
    "split_names",
    "split_project_ids",
]


#: Characters no HTTP header value may hold (a tab may): a line break would end the header.
_HEADER_BREAKING = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


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
        for name, value in (("METASTUDIO_APP_USER_ID", self.app_user_id), ("HUAWEICLOUD_SDK_AK", self.ak),
                            ("HUAWEICLOUD_SDK_SECURITY_TOKEN", self.security_token),
                            ("METASTUDIO_AUTH_TOKEN", self.auth_token)):
            if value is not None and _HEADER_BREAKING.search(value):
                raise ConfigurationError(
                    f"{name} must not contain control characters such as line breaks: it is sent in an HTTP "
                    "header. Set it again without them.")
        for name in NUMBER_BOUNDS:
            value = getattr(self, name)
            if not (name == "max_rps" and value is None):
                check_number(name, value)
        self._check_postgres()
        if not isinstance(self.first_day, date):
            raise ConfigurationError(f"VOICEJOBS_FIRST_DAY {self.first_day!r} is not a date.")
        check_day(self.first_day, "VOICEJOBS_FIRST_DAY")

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
            max_in_flight=env_number(env, "max_in_flight", 8),
            max_rps=env_number(env, "max_rps", None),
            timeout=env_number(env, "timeout", 30.0),
            max_attempts=env_number(env, "max_attempts", 6),
            max_retry_seconds=env_number(env, "max_retry_seconds", 300.0),
            safety_lag_seconds=env_number(env, "safety_lag_seconds", 120.0),
            lookback_seconds=env_number(env, "lookback_seconds", 7200.0),
            split_threshold=env_number(env, "split_threshold", 10_000),
            max_clock_skew_seconds=env_number(env, "max_clock_skew_seconds", 300.0),
            max_response_bytes=env_number(env, "max_response_bytes", 64 << 20),
            personal_data=(text("VOICEJOBS_PERSONAL_DATA") or "mask").lower(),
            postgres_url=text("VOICEJOBS_POSTGRES_URL"),
            postgres_schema=text("VOICEJOBS_POSTGRES_SCHEMA") or "analytics",
            postgres_readers=split_names(text("VOICEJOBS_POSTGRES_READERS")),
            postgres_lock_timeout_seconds=env_number(env, "postgres_lock_timeout_seconds", 30.0),
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
