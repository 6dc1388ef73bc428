"""MetaStudioClient against the simulator over loopback: every credential form, refusals that
name their fix and are not retried, truncated bodies and gateway pages that are.

The same client on a mock transport and a fake clock (request shape, retries, 429s, pacing) is
in tests/unit/test_client.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pipelines.metastudio.auth import AKSKAuth, TokenAuth
from pipelines.metastudio.client import MetaStudioClient, Page
from pipelines.metastudio.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    RetriesExhaustedError,
)

SIM_PROJECT = "5b2e9c0d7a6f4e1b8c3d2a1f0e9d8c7b"


@pytest.fixture(scope="module")
def simulator(make_module_simulator):
    return make_module_simulator(
        jobs=400, seed=3, days=10, projects=(SIM_PROJECT,), now=datetime(2026, 3, 1, 12, tzinfo=UTC)
    )


def sim_list(server, auth: httpx.Auth, project: str = SIM_PROJECT, params=None, **kwargs) -> Page:
    async def main():
        async with MetaStudioClient(server.url, auth, timeout=5.0, **kwargs) as client:
            return await client.list_jobs(project, params or {})

    return asyncio.run(main())


def test_simulator_accepts_every_credential_form(simulator):
    ak, sk = next(iter(simulator.config.credentials.items()))
    temp_ak, (temp_sk, security_token) = next(iter(simulator.config.temporary_credentials.items()))
    token = next(iter(simulator.config.tokens))
    everyone = len(simulator.state.truth(SIM_PROJECT))
    for auth in (AKSKAuth(ak, sk), AKSKAuth(temp_ak, temp_sk, security_token), TokenAuth(token)):
        page = sim_list(simulator, auth, params={"voice_name": "no such voice, 声音", "limit": 5})
        assert page.count == 0 and page.jobs == []
        page = sim_list(simulator, auth, params={"sort_dir": "asc"})
        assert page.count == everyone and len(page.jobs) == 100
        assert page.server_time == datetime(2026, 3, 1, 12, tzinfo=UTC)
    # X-App-UserId is signed and narrows the listing
    user = next(j["app_user_id"] for j in simulator.state.truth(SIM_PROJECT) if j.get("app_user_id"))
    page = sim_list(simulator, AKSKAuth(ak, sk), app_user_id=user)
    assert 0 < page.count < everyone and all(j["app_user_id"] == user for j in page.jobs)


@pytest.mark.parametrize(
    ("case", "error", "fix"),
    [
        ("wrong-sk", AuthenticationError, "HUAWEICLOUD_SDK_AK/HUAWEICLOUD_SDK_SK"),
        ("expired-token", AuthenticationError, "METASTUDIO_AUTH_TOKEN"),
        ("skewed-clock", AuthenticationError, "local clock"),
        ("wrong-security-token", AuthenticationError, "HUAWEICLOUD_SDK_SECURITY_TOKEN"),
        ("unknown-project", AuthenticationError, "HUAWEICLOUD_SDK_PROJECT_ID"),
        ("bad-limit", BadRequestError, "MSS.00000001"),
        ("bad-path", ConfigurationError, "METASTUDIO_ENDPOINT"),
    ],
)
def test_simulator_refusals_are_not_retried_and_name_the_fix(simulator, case, error, fix):
    ak, sk = next(iter(simulator.config.credentials.items()))
    auth: httpx.Auth = AKSKAuth(ak, "not-the-secret-key-123" if case == "wrong-sk" else sk)
    if case == "expired-token":
        auth = TokenAuth(next(iter(simulator.config.expired_tokens)))
    if case == "skewed-clock":
        auth = AKSKAuth(ak, sk, clock=lambda: datetime.now(UTC) - timedelta(minutes=20))
    if case == "wrong-security-token":
        temp_ak, (temp_sk, _) = next(iter(simulator.config.temporary_credentials.items()))
        auth = AKSKAuth(temp_ak, temp_sk, "not-the-security-token")
    project = "0000ffff0000ffff0000ffff0000ffff" if case == "unknown-project" else SIM_PROJECT
    params = {"limit": 1000} if case == "bad-limit" else {}
    before = simulator.stats["requests"]

    async def main():
        base = simulator.url + ("/wrong-prefix" if case == "bad-path" else "")
        async with MetaStudioClient(base, auth, timeout=5.0) as client:
            return await client.list_jobs(project, params)

    with pytest.raises(error) as info:
        asyncio.run(main())
    assert simulator.stats["requests"] - before == 1
    text = str(info.value)
    assert fix in text and sk not in text and "not-the-secret-key-123" not in text


def test_simulator_truncated_bodies_and_gateway_pages_are_retried(simulator):
    ak, sk = next(iter(simulator.config.credentials.items()))
    simulator.configure(fault_rate=1.0, faults=("truncated", "502"))
    try:

        async def main():
            async with MetaStudioClient(
                simulator.url, AKSKAuth(ak, sk), max_attempts=4, backoff_base=0.001
            ) as client:
                with pytest.raises(RetriesExhaustedError) as info:
                    await client.list_jobs(SIM_PROJECT, {})
                return info.value, client.stats

        err, stats = asyncio.run(main())
    finally:
        simulator.configure(fault_rate=0.0)
    assert err.attempts == 4 and stats.requests == 4
    assert set(stats.retries) <= {"malformed", "5xx"} and stats.retries.total() == 4
    assert stats.bytes_received > 0
