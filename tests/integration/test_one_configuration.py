"""One configuration: the CLI and a Dagster materialization read the same variables with the
same parser, and end with equal settings or the same error.

For every variable the settings parser reads (the README's table lists the same names), a
valid and an invalid value are set in the environment; the CLI builds its settings, and a
real Dagster materialization of an asset using the deployment's resource builds its own.
"""

from __future__ import annotations

import re
from argparse import Namespace
from pathlib import Path

import dagster as dg
import pytest

from pipelines import cli
from pipelines.metastudio.errors import ConfigurationError
from pipelines.resources import MetaStudioResource, metastudio_from_env
from pipelines.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]

# variable -> (a valid value, an invalid value)
VALUES: dict[str, tuple[str, str]] = {
    "METASTUDIO_ENDPOINT": ("https://metastudio.example.test", "ftp://metastudio.example.test"),
    "METASTUDIO_REGION": ("cn-east-3", ""),
    "HUAWEICLOUD_SDK_AK": ("AKVALUE", ""),
    "HUAWEICLOUD_SDK_SK": ("SKVALUE", ""),
    "HUAWEICLOUD_SDK_SECURITY_TOKEN": ("TOKENVALUE", ""),
    "METASTUDIO_AUTH_TOKEN": ("IAMTOKEN", ""),
    "HUAWEICLOUD_SDK_PROJECT_ID": ("0a1b2c3d4e5f60718293a4b5c6d7e8f9,p2", "项目"),
    "METASTUDIO_APP_USER_ID": ("tenant-7", "用户"),
    "VOICEJOBS_DATA_DIR": ("somewhere", ""),
    "VOICEJOBS_FIRST_DAY": ("2025-02-01", "2025-02-30"),
    "VOICEJOBS_MAX_IN_FLIGHT": ("4", "0"),
    "VOICEJOBS_MAX_RPS": ("12.5", "-1"),
    "VOICEJOBS_TIMEOUT_SECONDS": ("7.5", "nan"),
    "VOICEJOBS_MAX_ATTEMPTS": ("3", "2.5"),
    "VOICEJOBS_MAX_RETRY_SECONDS": ("60", "1e12"),
    "VOICEJOBS_SAFETY_LAG_SECONDS": ("30", "nan"),
    "VOICEJOBS_LOOKBACK_SECONDS": ("600", "-5"),
    "VOICEJOBS_SPLIT_THRESHOLD": ("5000", "99"),
    "VOICEJOBS_MAX_CLOCK_SKEW_SECONDS": ("0", "inf"),
    "VOICEJOBS_MAX_RESPONSE_BYTES": ("2097152", "1024"),
    "VOICEJOBS_PERSONAL_DATA": ("RAW", "hidden"),
    "VOICEJOBS_LAKE_URI": ("s3://voicejobs-lake/prod", "gs://voicejobs-lake/prod"),
    # The object store's variables are checked only for an s3:// lake (other tools read them too).
    "AWS_ACCESS_KEY_ID": ("AKIAEXAMPLEKEY", ""),
    "AWS_SECRET_ACCESS_KEY": ("secret-access-key-value", ""),
    "AWS_SESSION_TOKEN": ("session-token-value", ""),
    "AWS_REGION": ("cn-north-4", ""),
    "AWS_ENDPOINT_URL": ("https://obs.cn-north-4.myhuaweicloud.com", ""),
    "VOICEJOBS_LAKE_URL_STYLE": ("path", "sideways"),
    "VOICEJOBS_POSTGRES_URL": ("postgresql://voicejobs@db.example.test:5432/analytics", "mysql://voicejobs@db/x"),
    "VOICEJOBS_POSTGRES_SCHEMA": ("bi", "Bad-Schema"),
    "VOICEJOBS_POSTGRES_READERS": ("bi_reader,metabase", "Bad Role"),
    "VOICEJOBS_POSTGRES_LOCK_TIMEOUT_SECONDS": ("5", "0"),
}
CASES = [(name, kind, values[i]) for name, values in VALUES.items() for i, kind in enumerate(("valid", "invalid"))]


def test_every_variable_the_parser_reads_has_a_case_and_a_readme_row():
    assert set(VALUES) == set(ENV_VARS)
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`((?:METASTUDIO|HUAWEICLOUD|VOICEJOBS|AWS)_[A-Z_]+)`", readme))
    assert set(ENV_VARS) <= documented


def _dagster_settings(data_dir: Path):
    """The settings an asset gets from the deployment's resource, through a real materialization."""
    seen = []

    @dg.asset
    def probe(metastudio: MetaStudioResource) -> None:
        seen.append(metastudio.settings(data_dir))

    result = dg.materialize([probe], resources={"metastudio": metastudio_from_env()}, raise_on_error=False)
    if result.success:
        return seen[0], None
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error, messages = failure.step_failure_data.error, []
    while error is not None:  # Dagster wraps what the asset raised
        messages.append(error.message)
        error = error.cause
    return None, "\n".join(messages)


@pytest.mark.parametrize(("name", "kind", "value"), CASES, ids=[f"{n}-{k}" for n, k, _ in CASES])
def test_the_cli_and_dagster_agree(name, kind, value, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    data_dir = tmp_path / "data"
    try:
        expected, refused = cli._settings(Namespace(data_dir=str(data_dir))), None
    except ConfigurationError as exc:
        expected, refused = None, str(exc)
    got, error = _dagster_settings(data_dir)
    if refused is not None:
        assert error is not None and refused in error, (refused, error)
    else:
        assert error is None, error
        assert got == expected
    if kind == "invalid" and value:
        assert refused is not None, f"{name}={value!r} was accepted"
