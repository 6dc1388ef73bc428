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

from pipelines.settings import DEFAULT_FIRST_DAY, ObjectStoreAccess, Settings, parse_day
from pipelines.warehouse import Warehouse

SECRET_VARS = {
    "ak": "HUAWEICLOUD_SDK_AK",
    "sk": "HUAWEICLOUD_SDK_SK",
    "security_token": "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    "auth_token": "METASTUDIO_AUTH_TOKEN",
}
#: The variable each resource field stands for. A field left unset leaves the variable as
#: the environment has it; a field set replaces it. Either way the value is parsed and checked
#: by Settings.from_env, the parser the CLI uses, so both reach equal settings or one error.
ENV_OF_FIELD = {
    **SECRET_VARS,
    "endpoint": "METASTUDIO_ENDPOINT",
    "region": "METASTUDIO_REGION",
    "project_ids": "HUAWEICLOUD_SDK_PROJECT_ID",
    "app_user_id": "METASTUDIO_APP_USER_ID",
    "first_day": "VOICEJOBS_FIRST_DAY",
    "max_in_flight": "VOICEJOBS_MAX_IN_FLIGHT",
    "max_rps": "VOICEJOBS_MAX_RPS",
    "timeout_seconds": "VOICEJOBS_TIMEOUT_SECONDS",
    "max_attempts": "VOICEJOBS_MAX_ATTEMPTS",
    "max_retry_seconds": "VOICEJOBS_MAX_RETRY_SECONDS",
    "safety_lag_seconds": "VOICEJOBS_SAFETY_LAG_SECONDS",
    "lookback_seconds": "VOICEJOBS_LOOKBACK_SECONDS",
    "split_threshold": "VOICEJOBS_SPLIT_THRESHOLD",
    "max_clock_skew_seconds": "VOICEJOBS_MAX_CLOCK_SKEW_SECONDS",
    "max_response_bytes": "VOICEJOBS_MAX_RESPONSE_BYTES",
    "personal_data": "VOICEJOBS_PERSONAL_DATA",
}


class MetaStudioResource(dg.ConfigurableResource):
    """Where and how to reach the MetaStudio API; nothing set means the embedded simulator.

    Deployments set only the secrets here (as ``EnvVar``, so the UI shows names, never
    values); everything else comes from the same environment variables the CLI reads. A
    field set explicitly (tests, a code location of its own) stands for its variable."""

    endpoint: str | None = None
    region: str | None = None
    ak: str | None = None
    sk: str | None = None
    security_token: str | None = None
    auth_token: str | None = None
    project_ids: str | None = None
    app_user_id: str | None = None
    first_day: str | None = None
    max_in_flight: int | None = None
    max_rps: float | None = None
    timeout_seconds: float | None = None
    max_attempts: int | None = None
    max_retry_seconds: float | None = None
    safety_lag_seconds: float | None = None
    lookback_seconds: float | None = None
    split_threshold: int | None = None
    max_clock_skew_seconds: float | None = None
    max_response_bytes: int | None = None
    personal_data: str | None = None

    def settings(self, data_dir: Path) -> Settings:
        """The Settings the CLI would build from the same environment (one parser, one validator)."""
        env = dict(os.environ)
        for name, var in ENV_OF_FIELD.items():
            value = getattr(self, name)
            if value is not None:
                env[var] = str(value)
        return Settings.from_env(env, data_dir=data_dir)


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


def metastudio_from_env() -> MetaStudioResource:
    """The resource of a deployment: the secrets as EnvVar; the rest is read at run time."""
    return MetaStudioResource(**{key: dg.EnvVar(env) for key, env in SECRET_VARS.items() if os.environ.get(env)})


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
