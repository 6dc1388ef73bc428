from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.settings import Settings
from pipelines.simulator import SimulatorConfig, SimulatorServer
from tests.support.postgres import postgres_server  # noqa: F401  (a session fixture: one server per test run)
from tests.support.s3 import s3_lake, s3_server  # noqa: F401  (an S3 server per test run, a lake per test)

# A fixed source clock keeps every test's data identical from run to run.
SIM_NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
PROJECTS = ("0a1b2c3d4e5f60718293a4b5c6d7e8f9", "f9e8d7c6b5a4938271605f4e3d2c1b0a")


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


@pytest.fixture
def small_simulator():
    """Two projects, 60 days, 3,000 jobs: every field, quirks included."""
    config = SimulatorConfig(jobs=3000, seed=11, days=60, projects=PROJECTS, now=SIM_NOW)
    with SimulatorServer(config) as server:
        yield server
