"""The shape of the simulator's generated history: steady (as always) or lumpy."""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest

from pipelines.simulator import SimulatorConfig, SimulatorState

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
BEIJING_MS = 8 * HOUR_MS


def state(**overrides) -> SimulatorState:
    values = dict(jobs=20_000, seed=7, days=365, now=NOW)
    values.update(overrides)
    return SimulatorState(SimulatorConfig(**values))


@functools.cache
def _history(key: tuple) -> tuple[int, np.ndarray]:
    sim = state(**dict(key))
    times = [job["create_time"] for job in sim.truth()]  # some are served in epoch seconds
    return sim.now_ms, np.array([t if t >= 100_000_000_000 else t * 1000 for t in times], dtype=np.int64)


def create_ms(**overrides) -> np.ndarray:
    """Creation times (epoch ms) of every job generated with ``overrides``; read-only, shared."""
    return _history(tuple(sorted(overrides.items())))[1]


def daily_counts(**overrides) -> np.ndarray:
    """Jobs created per Beijing calendar day, for the days wholly inside the generated window."""
    now_ms, times = _history(tuple(sorted(overrides.items())))
    days = overrides.get("days", 365)
    local_day = (times + BEIJING_MS) // DAY_MS
    first = (now_ms - days * DAY_MS + BEIJING_MS) // DAY_MS + 1
    last = (now_ms + BEIJING_MS) // DAY_MS  # today: still under way
    inside = local_day[(local_day >= first) & (local_day < last)]
    return np.bincount(inside - first, minlength=max(0, last - first))


def business_share(**overrides) -> float:
    """Share of jobs created 09:00-18:00 Beijing time on a Monday to Friday."""
    local = create_ms(**overrides) + BEIJING_MS
    hour = local % DAY_MS // HOUR_MS
    weekday = (local // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    return float(np.mean((hour >= 9) & (hour < 18) & (weekday < 5)))


# ------------------------------------------------------------------------------------ steady
@pytest.mark.parametrize(
    ("overrides", "digest"),
    [
        ({}, "f7681b05f81da5bd56931a80f4b330de5fc5de0b2faaf0165e8c1a2d0b454e2a"),
        (
            dict(jobs=3_000, seed=5, days=120, projects=("a", "b")),
            "34b0232cb68441a7eb1182ae73945e7d519fe7214844d2caaed267e39971bb23",
        ),
    ],
)
def test_steady_traffic_generates_the_same_jobs_as_before(overrides, digest):
    """Frozen from the generator as it was before traffic shapes existed: the default, and
    ``traffic="steady"`` spelled out, yield those very job ids and creation times."""
    for traffic in ({}, {"traffic": "steady"}):
        sim = state(**overrides, **traffic)
        text = "\n".join(f"{job['job_id']} {job['create_time']}" for job in sim.truth())
        assert hashlib.sha256(text.encode()).hexdigest() == digest


def test_steady_traffic_has_no_bursts_or_empty_days():
    counts = daily_counts()
    assert counts.min() > 0
    assert counts.max() < 5 * np.median(counts)


# ------------------------------------------------------------------------------------- lumpy
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(days=30),
        dict(days=3),
        dict(days=2),
        dict(days=1),
        dict(jobs=1),
        dict(jobs=0),
        dict(jobs=5_000, projects=("a", "b", "c")),
    ],
)
def test_lumpy_traffic_generates_exactly_the_configured_jobs(overrides):
    sim = state(traffic="lumpy", **overrides)
    assert len(sim) == sim.config.jobs
    assert len(set(sim.job_ids())) == sim.config.jobs
    times = create_ms(traffic="lumpy", **overrides)
    assert np.all(times <= sim.now_ms) and np.all(times >= sim.now_ms - sim.config.days * DAY_MS)


def test_lumpy_traffic_has_burst_days():
    lumpy, steady = daily_counts(traffic="lumpy"), daily_counts()
    median = np.median(lumpy)
    bursts = np.flatnonzero(lumpy >= 10 * median)
    assert 3 <= len(bursts) <= 6, (median, lumpy[bursts])  # about 4 a year
    assert lumpy[bursts].min() >= 15 * median  # about 20x a usual day
    assert not np.any(steady >= 10 * np.median(steady))


def test_lumpy_traffic_has_empty_days():
    counts = daily_counts(traffic="lumpy")
    empty = int(np.count_nonzero(counts == 0))
    assert round(0.02 * 365) <= empty <= 0.05 * 365, empty  # about 2% of days, plus the odd quiet Sunday


def test_lumpy_traffic_peaks_in_business_hours_on_weekdays():
    lumpy = business_share(traffic="lumpy")
    assert lumpy >= 0.8, lumpy
    assert lumpy > business_share() + 0.2  # sharper than steady traffic's daytime peak


@pytest.mark.parametrize("seed", [1, 2, 3, 11])
def test_lumpy_shape_holds_for_other_seeds(seed):
    counts = daily_counts(traffic="lumpy", seed=seed)
    median = np.median(counts)
    assert np.count_nonzero(counts >= 10 * median) >= 3
    assert np.count_nonzero(counts == 0) >= round(0.02 * 365)
    assert business_share(traffic="lumpy", seed=seed) >= 0.8


def test_lumpy_traffic_is_deterministic_for_a_seed():
    first = orjson.dumps(state(traffic="lumpy", jobs=5_000).truth())
    assert orjson.dumps(state(traffic="lumpy", jobs=5_000).truth()) == first
    assert orjson.dumps(state(traffic="lumpy", jobs=5_000, seed=8).truth()) != first
    assert orjson.dumps(state(jobs=5_000).truth()) != first
    counts = [daily_counts(traffic="lumpy", seed=seed) for seed in (7, 8)]
    bursts = [set(np.flatnonzero(c >= 10 * np.median(c)).tolist()) for c in counts]
    assert bursts[0] != bursts[1]  # the burst days are placed by the seed


def test_lumpy_traffic_survives_advancing_the_clock():
    sim = state(traffic="lumpy", jobs=2_000, days=60)
    result = sim.advance(86_400)
    assert result["created"] > 0 and len(sim) == 2_000 + result["created"] - result["deleted"]


# ------------------------------------------------------------------------- config and CLI
def test_traffic_is_validated_and_shown_in_the_repr():
    with pytest.raises(ValueError, match="traffic"):
        SimulatorConfig(traffic="bursty")
    assert SimulatorConfig().traffic == "steady"
    assert "traffic='lumpy'" in repr(SimulatorConfig(traffic="lumpy"))
    assert "traffic='steady'" in repr(SimulatorConfig())


def test_command_line_passes_traffic_to_the_simulator(monkeypatch, capsys):
    from pipelines.simulator import cli

    seen: list[SimulatorConfig] = []

    class Stop(Exception):
        pass

    def fake_server(config, **kwargs):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(cli, "SimulatorServer", fake_server)
    for argv, expected in ((["--traffic", "lumpy"], "lumpy"), ([], "steady")):
        with pytest.raises(Stop):
            cli.main(["--jobs", "10", *argv])
        assert seen[-1].traffic == expected
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--traffic", "bursty"])
    assert exit_.value.code == 2 and "--traffic" in capsys.readouterr().err
    text = cli.build_parser().format_help()
    assert "--traffic" in text and "lumpy" in text and "steady" in text
