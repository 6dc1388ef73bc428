"""The simulator as tests start it: one factory, on loopback, stopped when its scope ends.

Every test that needs a MetaStudio to sync from asks a fixture for the factory and calls it
with the :class:`~pipelines.simulator.SimulatorConfig` fields it wants::

    def test_something(make_simulator, tmp_path):
        sim = make_simulator(jobs=400, seed=3, days=10, projects=PROJECTS, now=SIM_NOW)
        settings = sim_settings(sim, tmp_path)   # sim.url, sim.state, sim.stats, sim.configure(...)

    @pytest.fixture(scope="module")
    def simulator(make_module_simulator):        # one server shared by a module's tests
        return make_module_simulator(jobs=300, seed=7, days=5, projects=PROJECTS, now=SIM_NOW)

``make_simulator`` stops what it started after the test, ``make_module_simulator`` after the
module; a test may also stop one early (``sim.stop()``). ``own_process=True`` serves it from
a child process (:mod:`tests.support.simproc`), so its answers never wait for the test's
share of the interpreter lock. Only the simulator's own tests (``tests/test_simulator.py``)
construct ``SimulatorServer`` themselves: there the class is what is under test.

Also here: the fixed clock and projects most tests use, and the settings a user would write
to sync from a running simulator.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from pipelines.settings import Settings
from pipelines.simulator import SimulatorConfig, SimulatorServer
from tests.support.simproc import SimulatorProcess

# A fixed source clock keeps every test's data identical from run to run.
SIM_NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
PROJECTS = ("0a1b2c3d4e5f60718293a4b5c6d7e8f9", "f9e8d7c6b5a4938271605f4e3d2c1b0a")

#: The preset behind the ``small_simulator`` fixture: two projects, 60 days, 3,000 jobs.
SMALL = dict(jobs=3000, seed=11, days=60, projects=PROJECTS, now=SIM_NOW)


class SimulatorFactory:
    """``factory(**config)`` starts a simulator on loopback; ``close()`` stops every one it started."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def __call__(self, *, own_process: bool = False, **config) -> SimulatorServer | SimulatorProcess:
        """A running simulator serving ``SimulatorConfig(**config)`` on 127.0.0.1 (a free port):
        a :class:`SimulatorServer` in this process, or with ``own_process`` a
        :class:`~tests.support.simproc.SimulatorProcess` (url, state.config, state.truth(),
        stats and configure() only)."""
        settings = SimulatorConfig(**config)
        if own_process:
            child = SimulatorProcess(settings).__enter__()
            self._stops.append(child.__exit__)
            return child
        server = SimulatorServer(settings).start()
        self._stops.append(server.stop)
        return server

    def close(self) -> None:
        """Stop every simulator started here, newest first (stopping one already stopped is a no-op)."""
        while self._stops:
            self._stops.pop()()


@contextmanager
def simulator_factory() -> Iterator[SimulatorFactory]:
    factory = SimulatorFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def make_simulator() -> Iterator[SimulatorFactory]:
    """``make_simulator(**SimulatorConfig fields) -> running server``, stopped after the test."""
    with simulator_factory() as factory:
        yield factory


@pytest.fixture(scope="module")
def make_module_simulator() -> Iterator[SimulatorFactory]:
    """The same factory for module-scoped fixtures: what it starts is stopped after the module."""
    with simulator_factory() as factory:
        yield factory


@pytest.fixture
def small_simulator(make_simulator) -> SimulatorServer:
    """Two projects, 60 days, 3,000 jobs: every field, quirks included."""
    return make_simulator(**SMALL)


def sim_settings(server, data_dir, *, auth: str = "aksk", **overrides) -> Settings:
    """Settings pointing at a running simulator, as a user would configure them."""
    config = server.state.config
    values = dict(endpoint=server.url, project_ids=tuple(config.projects), data_dir=data_dir,
                  safety_lag_seconds=0, max_clock_skew_seconds=0, max_attempts=4, max_retry_seconds=20, timeout=5.0)
    if auth == "aksk":
        ak, sk = next(iter(config.credentials.items()))
        values.update(ak=ak, sk=sk)
    else:
        values.update(auth_token=next(iter(config.tokens)))
    values.update(overrides)
    return Settings(**values)


def truth_by_project(server) -> dict[str, list[dict]]:
    return {pid: server.state.truth(pid) for pid in server.state.config.projects}


def cli_env(monkeypatch: pytest.MonkeyPatch, server: SimulatorServer, data_dir, projects=PROJECTS, **extra: str) -> None:
    """The environment of a `voicejobs` command run in the test's process against ``server``:
    nothing configured beforehand leaks in, the simulator's first credential, the simulated clock
    believed (no safety lag, no skew allowance); ``extra`` adds variables."""
    for name in list(os.environ):
        if name.startswith(("METASTUDIO_", "HUAWEICLOUD_", "VOICEJOBS_")):
            monkeypatch.delenv(name)
    ak, sk = next(iter(server.state.config.credentials.items()))
    for name, value in dict(METASTUDIO_ENDPOINT=server.url, HUAWEICLOUD_SDK_AK=ak, HUAWEICLOUD_SDK_SK=sk,
                            HUAWEICLOUD_SDK_PROJECT_ID=",".join(projects), VOICEJOBS_DATA_DIR=str(data_dir),
                            VOICEJOBS_SAFETY_LAG_SECONDS="0", VOICEJOBS_MAX_CLOCK_SKEW_SECONDS="0", **extra).items():
        monkeypatch.setenv(name, value)
