"""Every date and number of the settings is bounded when it is read.

An out-of-range creation day or a setting that is not a finite number in its range ends
``voicejobs sync`` with one line naming the value and the allowed range (exit 2 for a flag,
1 for a setting), before anything is fetched or written. The Dagster resources build
:class:`Settings` directly: the same bounds, with the same message, apply there.
"""

from __future__ import annotations

import math
from datetime import date

import pytest

from pipelines.cli import EXIT_FAILED, EXIT_USAGE, main
from pipelines.metastudio.errors import ConfigurationError
from pipelines.settings import EARLIEST_DAY, NUMBER_BOUNDS, Settings, parse_day, split_project_ids

PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
# Nothing listens on the discard port: a run that got as far as the network would say so.
NOWHERE = "http://127.0.0.1:9"


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A configuration that would fail on its first request; the data directory is not created yet."""
    import os

    for key in list(os.environ):
        if key.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_")):
            monkeypatch.delenv(key)
    values = dict(METASTUDIO_ENDPOINT=NOWHERE, HUAWEICLOUD_SDK_AK="FAKEACCESSKEY", HUAWEICLOUD_SDK_SK="fake-secret",
                  HUAWEICLOUD_SDK_PROJECT_ID=PROJECT, VOICEJOBS_DATA_DIR=str(tmp_path / "data"),
                  VOICEJOBS_MAX_ATTEMPTS="1", VOICEJOBS_MAX_RETRY_SECONDS="0")
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["sync", *args])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in out + err
    assert len(lines) == 1, err
    return code, lines[0]


@pytest.mark.parametrize(
    "args, named",
    [
        (("--since", "2026-01-01", "--until", "9999-12-31"), "--until 9999-12-31 is out of range"),
        (("--since", "1900-01-01", "--until", "2026-01-01"), "--since 1900-01-01 is out of range"),
        (("--since", "2017-12-31", "--until", "2018-01-02"), "--since 2017-12-31 is out of range"),
    ],
)
def test_creation_days_out_of_range_end_the_run_before_anything_runs(env, capsys, tmp_path, args, named):
    code, line = run_cli(capsys, *args)
    assert code == EXIT_USAGE  # a bad flag
    assert line.startswith("voicejobs sync: ")
    assert named in line
    assert f"from {EARLIEST_DAY.isoformat()} to " in line
    assert "Cannot reach" not in line and "127.0.0.1" not in line
    assert not (tmp_path / "data").exists()  # no warehouse opened, nothing fetched


def test_first_day_out_of_range(env, capsys, tmp_path):
    env.setenv("VOICEJOBS_FIRST_DAY", "1900-01-01")
    code, line = run_cli(capsys)
    assert code == EXIT_FAILED  # a bad setting
    assert "VOICEJOBS_FIRST_DAY 1900-01-01 is out of range" in line
    assert "Cannot reach" not in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "name, value, rule",
    [
        ("VOICEJOBS_TIMEOUT_SECONDS", "nan", "is not a number between 0.1 and 3600"),
        ("VOICEJOBS_TIMEOUT_SECONDS", "inf", "is not a number between 0.1 and 3600"),
        ("VOICEJOBS_SAFETY_LAG_SECONDS", "nan", "is not a number between 0 and 86400"),
        ("VOICEJOBS_SAFETY_LAG_SECONDS", "1e12", "is not a number between 0 and 86400"),
        ("VOICEJOBS_LOOKBACK_SECONDS", "-inf", "is not a number between 0 and 2592000"),
        ("VOICEJOBS_MAX_RETRY_SECONDS", "1e9", "is not a number between 0 and 86400"),
        ("VOICEJOBS_MAX_RPS", "nan", "is not a number between 0.01 and 1000"),
        ("VOICEJOBS_MAX_ATTEMPTS", "1000", "is not a whole number between 1 and 100"),
        ("VOICEJOBS_MAX_IN_FLIGHT", "65", "is not a whole number between 1 and 64"),
        ("VOICEJOBS_MAX_IN_FLIGHT", "eight", "is not a whole number between 1 and 64"),
        ("VOICEJOBS_SPLIT_THRESHOLD", "99999999", "is not a whole number between 100 and 1000000"),
    ],
)
def test_numbers_out_of_range_end_the_run_with_one_line(env, capsys, tmp_path, name, value, rule):
    env.setenv(name, value)
    code, line = run_cli(capsys, "--since", "2026-01-01", "--until", "2026-01-02")
    assert code == EXIT_FAILED  # a bad setting
    assert line == f"voicejobs sync: {name}={value} {rule}."
    assert not (tmp_path / "data").exists()


def test_parse_day_bounds_with_an_injected_today():
    today = date(2026, 11, 28)
    assert parse_day("2018-01-01", "--since", today=today) == date(2018, 1, 1)
    assert parse_day("2026-11-29", "--until", today=today) == date(2026, 11, 29)
    with pytest.raises(ConfigurationError) as err:
        parse_day("2026-11-30", "--until", today=today)
    assert str(err.value) == (
        "--until 2026-11-30 is out of range; creation days run from 2018-01-01 to 2026-11-29."
    )
    with pytest.raises(ConfigurationError, match="not a valid date"):
        parse_day("2026-02-30", "--since", today=today)


def _outside(bound) -> list:
    """Values just outside a bound's range, and values that are no finite number."""
    step = 1 if bound.whole else bound.low / 2 or 0.5
    values = [bound.high + step, math.nan, math.inf, -math.inf]
    values.append(bound.low - step)
    return values


@pytest.mark.parametrize("field", sorted(NUMBER_BOUNDS))
def test_env_and_settings_share_one_table_of_bounds(field):
    bound = NUMBER_BOUNDS[field]
    # The ends of the range are allowed both ways.
    for value in (bound.low, bound.high):
        value = int(value) if bound.whole else float(value)
        assert getattr(Settings.from_env({bound.var: str(value)}), field) == value
        assert getattr(Settings(**{field: value}), field) == value
    for bad in _outside(bound):
        if bound.whole and math.isfinite(bad):
            bad = int(bad)
        with pytest.raises(ConfigurationError) as from_env:
            Settings.from_env({bound.var: str(bad)})
        with pytest.raises(ConfigurationError) as direct:
            Settings(**{field: bad})
        assert str(from_env.value) == str(direct.value)
        assert str(direct.value).startswith(f"{bound.var}={bad} is not a ")


def test_settings_built_directly_check_the_first_day():
    with pytest.raises(ConfigurationError, match="VOICEJOBS_FIRST_DAY 1900-01-01 is out of range"):
        Settings(first_day=date(1900, 1, 1))
    with pytest.raises(ConfigurationError, match="VOICEJOBS_FIRST_DAY 9999-12-31 is out of range"):
        Settings.from_env({"VOICEJOBS_FIRST_DAY": "9999-12-31"})


# ---------------------------------------------------------------- project ids


@pytest.mark.parametrize("pid", ["a" * 300, "a" * 65, "项目", "proj.1", "p 1", "ｐｒｏｊ"])
def test_project_ids_the_api_and_the_lake_cannot_hold_are_refused(pid):
    with pytest.raises(ConfigurationError) as err:
        split_project_ids(f"{PROJECT},{pid}")
    message = str(err.value)
    assert "HUAWEICLOUD_SDK_PROJECT_ID" in message
    assert "1 to 64" in message and "ASCII letters, digits, '-' or '_'" in message
    assert len(message) < 300  # a long id is shortened, not quoted whole


def test_project_id_refused_through_the_cli(env, capsys, tmp_path):
    env.setenv("HUAWEICLOUD_SDK_PROJECT_ID", "a" * 300)
    code, line = run_cli(capsys, "--since", "2026-01-01", "--until", "2026-01-02")
    assert code == EXIT_FAILED  # a bad setting
    assert "HUAWEICLOUD_SDK_PROJECT_ID" in line and "1 to 64" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("pid", [PROJECT, "a" * 64, "x", "sim-project", "Proj_2-b"])
def test_valid_project_ids_pass(pid):
    assert split_project_ids(f" {pid} ,{pid}") == (pid,)
