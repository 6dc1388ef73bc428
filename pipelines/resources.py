"""Dagster resources: the only place the Dagster deployment reads the environment.

Secrets are passed as ``EnvVar`` so the UI shows the variable's name, never its
value. The resources only build plain objects (:class:`Settings`,
:class:`Warehouse`); the assets call plain functions with them.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import dagster as dg

from pipelines.settings import DEFAULT_FIRST_DAY, ObjectStoreAccess, Settings, parse_day, split_project_ids
from pipelines.warehouse import Warehouse

SECRET_VARS = {
    "ak": "HUAWEICLOUD_SDK_AK",
    "sk": "HUAWEICLOUD_SDK_SK",
    "security_token": "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    "auth_token": "METASTUDIO_AUTH_TOKEN",
}


class MetaStudioResource(dg.ConfigurableResource):
    """Where and how to reach the MetaStudio API; nothing set means the embedded simulator."""

    endpoint: str | None = None
    region: str | None = None
    ak: str | None = None
    sk: str | None = None
    security_token: str | None = None
    auth_token: str | None = None
    project_ids: str | None = None
    app_user_id: str | None = None
    max_in_flight: int = 8
    max_rps: float | None = None
    timeout_seconds: float = 30.0
    max_attempts: int = 6
    max_retry_seconds: float = 300.0
    safety_lag_seconds: float = 120.0
    lookback_seconds: float = 7200.0
    split_threshold: int = 10_000
    max_clock_skew_seconds: float = 300.0
    max_response_bytes: int = 64 << 20
    personal_data: str = "mask"
    first_day: str | None = None

    def settings(self, data_dir: Path) -> Settings:
        return Settings(
            endpoint=self.endpoint,
            region=self.region,
            ak=self.ak,
            sk=self.sk,
            security_token=self.security_token,
            auth_token=self.auth_token,
            project_ids=split_project_ids(self.project_ids),
            app_user_id=self.app_user_id,
            data_dir=data_dir,
            max_in_flight=self.max_in_flight,
            max_rps=self.max_rps,
            timeout=self.timeout_seconds,
            max_attempts=self.max_attempts,
            max_retry_seconds=self.max_retry_seconds,
            safety_lag_seconds=self.safety_lag_seconds,
            lookback_seconds=self.lookback_seconds,
            split_threshold=self.split_threshold,
            max_clock_skew_seconds=self.max_clock_skew_seconds,
            max_response_bytes=self.max_response_bytes,
            personal_data=self.personal_data,
            first_day=parse_day(self.first_day, "first_day") if self.first_day else first_partition_day(),
        )


#: The lake's variables, for WarehouseResource: where the lake goes and the object store's access.
LAKE_ENV_OF_FIELD = {
    "lake_uri": "VOICEJOBS_LAKE_URI",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "aws_region": "AWS_REGION",
    "aws_endpoint_url": "AWS_ENDPOINT_URL",
    "lake_url_style": "VOICEJOBS_LAKE_URL_STYLE",
}
LAKE_SECRET_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


class WarehouseResource(dg.ConfigurableResource):
    """The data directory holding warehouse.duckdb and serving.duckdb, and where the lake goes.

    The lake's fields stand for their variables as MetaStudioResource's do (unset: the
    environment's value), and are read by the CLI's parsers, so both put the lake in one place."""

    data_dir: str = "data"
    lake_uri: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    lake_url_style: str | None = None

    def warehouse(self) -> Warehouse:
        env = dict(os.environ)
        for name, var in LAKE_ENV_OF_FIELD.items():
            value = getattr(self, name)
            if value is not None:
                env[var] = str(value)
        return Warehouse(Path(self.data_dir), lake_uri=env.get("VOICEJOBS_LAKE_URI", "").strip() or None,
                         object_store=ObjectStoreAccess.from_env(env))


def _optional(name: str, cast=str):
    value = os.environ.get(name, "").strip()
    return cast(value) if value else None


def metastudio_from_env() -> MetaStudioResource:
    """The resource as configured by environment variables (secrets as EnvVar)."""
    fields: dict = {
        "endpoint": _optional("METASTUDIO_ENDPOINT"),
        "region": _optional("METASTUDIO_REGION"),
        "project_ids": _optional("HUAWEICLOUD_SDK_PROJECT_ID"),
        "app_user_id": _optional("METASTUDIO_APP_USER_ID"),
        "max_rps": _optional("VOICEJOBS_MAX_RPS", float),
        "personal_data": _optional("VOICEJOBS_PERSONAL_DATA") or "mask",
        "first_day": _optional("VOICEJOBS_FIRST_DAY"),
    }
    for key, cast, env in (("max_in_flight", int, "VOICEJOBS_MAX_IN_FLIGHT"),
                           ("timeout_seconds", float, "VOICEJOBS_TIMEOUT_SECONDS"),
                           ("max_attempts", int, "VOICEJOBS_MAX_ATTEMPTS"),
                           ("max_retry_seconds", float, "VOICEJOBS_MAX_RETRY_SECONDS"),
                           ("split_threshold", int, "VOICEJOBS_SPLIT_THRESHOLD"),
                           ("max_clock_skew_seconds", float, "VOICEJOBS_MAX_CLOCK_SKEW_SECONDS"),
                           ("max_response_bytes", int, "VOICEJOBS_MAX_RESPONSE_BYTES"),
                           ("safety_lag_seconds", float, "VOICEJOBS_SAFETY_LAG_SECONDS"),
                           ("lookback_seconds", float, "VOICEJOBS_LOOKBACK_SECONDS")):
        value = _optional(env, cast)
        if value is not None:
            fields[key] = value
    for key, env in SECRET_VARS.items():
        if os.environ.get(env):
            fields[key] = dg.EnvVar(env)
    return MetaStudioResource(**{k: v for k, v in fields.items() if v is not None})


def warehouse_from_env() -> WarehouseResource:
    """The resource of a deployment: the object store's keys as EnvVar; the rest is read at run time."""
    secrets = {key: dg.EnvVar(LAKE_ENV_OF_FIELD[key]) for key in LAKE_SECRET_FIELDS
               if os.environ.get(LAKE_ENV_OF_FIELD[key])}
    return WarehouseResource(data_dir=os.environ.get("VOICEJOBS_DATA_DIR", "").strip() or "data", **secrets)


def first_partition_day() -> date:
    raw = os.environ.get("VOICEJOBS_FIRST_DAY", "").strip()
    return parse_day(raw, "VOICEJOBS_FIRST_DAY") if raw else DEFAULT_FIRST_DAY


def schedule_settings() -> dict[str, str]:
    """Cron strings and timezone of the schedules (standard five-field cron)."""
    return {
        # every night at 02:00 in the schedule's timezone
        "nightly_cron": os.environ.get("VOICEJOBS_NIGHTLY_CRON", "0 2 * * *"),
        # every Sunday at 03:00: the weekly full reconciliation
        "reconcile_cron": os.environ.get("VOICEJOBS_RECONCILE_CRON", "0 3 * * 0"),
        "timezone": os.environ.get("VOICEJOBS_SCHEDULE_TIMEZONE", "UTC"),
    }
