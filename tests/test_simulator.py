"""The embedded MetaStudio simulator, exercised over real loopback HTTP."""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import orjson
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from pipelines.metastudio.auth import AKSKAuth, TokenAuth, canonical_query
from pipelines.simulator import SimulatorConfig, SimulatorServer, SimulatorState
from pipelines.simulator.catalog import STATES
from pipelines.simulator.params import ListParams

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
PROJECT = "sim-project"
OTHER = "second-project"
PATH = f"/v1/{PROJECT}/voice-training-manage/user/jobs"
TOKEN = {"X-Auth-Token": "sim-token"}
REPO = Path(__file__).resolve().parents[1]


def config(**overrides) -> SimulatorConfig:
    values = dict(jobs=3000, seed=5, days=120, projects=(PROJECT, OTHER), now=NOW)
    values.update(overrides)
    return SimulatorConfig(**values)


@pytest.fixture(scope="module")
def sim():
    """A shared, read-only simulator (tests that mutate start their own)."""
    with SimulatorServer(config()) as server:
        yield server


@pytest.fixture
def client(sim):
    with httpx.Client(base_url=sim.url, timeout=10) as c:
        yield c


def list_jobs(client: httpx.Client, pairs=(), *, project=PROJECT, headers=None, auth=None) -> httpx.Response:
    url = f"/v1/{project}/voice-training-manage/user/jobs"
    if pairs:
        url += "?" + canonical_query(list(pairs))
    return client.get(url, headers=TOKEN | (headers or {}) if auth is None else headers, auth=auth)


def fetch_all(client: httpx.Client, pairs=(), *, headers=None) -> tuple[int, list[dict]]:
    """Every page with limit=100, checking that count stays put."""
    jobs: list[dict] = []
    offset, count = 0, None
    while True:
        response = list_jobs(client, [*pairs, ("limit", "100"), ("offset", str(offset))], headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert count is None or body["count"] == count
        count = body["count"]
        jobs += body["jobs"]
        offset += 100
        if offset >= count:
            return count, jobs


def epoch_ms(value: int) -> int:
    return value if value >= 100_000_000_000 else value * 1000


def rfc(ms: int, offset: timedelta = timedelta(0)) -> str:
    """RFC 3339 with milliseconds, in UTC (Z) or at a fixed offset."""
    moment = datetime.fromtimestamp(ms / 1000, UTC).astimezone(timezone(offset))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ids(jobs) -> list[str]:
    return [job["job_id"] for job in jobs]


# ------------------------------------------------------------------------------------- data
def test_same_config_yields_the_same_jobs_byte_for_byte():
    first, second = SimulatorState(config()), SimulatorState(config())
    assert orjson.dumps(first.truth()) == orjson.dumps(second.truth())
    assert orjson.dumps(SimulatorState(config(seed=6)).truth()) != orjson.dumps(first.truth())
    first.advance(86_400)
    second.advance(86_400)
    assert orjson.dumps(first.truth()) == orjson.dumps(second.truth())
    assert first.deleted_ids() == second.deleted_ids() != set()


def test_jobs_carry_every_documented_field_and_the_quirks(sim):
    jobs = sim.state.truth()
    assert len(jobs) == 3000
    keys = Counter(key for job in jobs for key in job)
    documented = (
        "job_id job_type app_user_id voice_name sex language state reject_times asset_id job_failed_code "
        "job_failed_reason create_time lastupdate_time voice_authorization_url training_input_source_url "
        "create_type tag phone dhtms_job_id batch_name allocated_resource output_language is_remake "
        "assess_result is_ondemand_resource"
    ).split()
    assert all(keys[name] > 0 for name in documented), {n: keys[n] for n in documented}
    assert set(keys) - set(documented), "a few rows carry fields the documentation does not know"
    assert all(job.get("asset_id") is None for job in jobs if job["state"] != "SUCCEED")
    assert all(job.get("asset_id") for job in jobs if job["state"] == "SUCCEED")
    assert all(job.get("job_failed_code") is None for job in jobs if job["state"] != "FAILED")
    failed = [job for job in jobs if job["state"] == "FAILED"]
    assert failed and all(re.fullmatch(r"MSS\.\d{8}", job["job_failed_code"]) for job in failed)
    assert all(job["job_failed_reason"] for job in failed)
    nulls = [job for job in jobs if any(value is None for value in job.values())]
    assert 0 < len(nulls) < len(jobs) * 0.1
    seconds = [job for job in jobs if job["create_time"] < 100_000_000_000]
    assert 0.05 < len(seconds) / len(jobs) < 0.15
    assert all(job["lastupdate_time"] < 100_000_000_000 for job in seconds)
    assert all(epoch_ms(job["create_time"]) <= epoch_ms(job["lastupdate_time"]) for job in jobs)
    assert all(epoch_ms(job["lastupdate_time"]) <= sim.state.now_ms for job in jobs)
    names = {job["voice_name"] for job in jobs}
    assert any(re.search(r"[\u4e00-\u9fff]", n) for n in names)
    assert any(re.search(r"[\u0600-\u06ff]", n) for n in names)
    assert any(any(ord(ch) > 0x1F000 for ch in n) for n in names)
    assert {"CN", "EN", "ES", "AR", "JA"} <= {job.get("language") for job in jobs}
    assert any("language" not in job for job in jobs) and any("tag" not in job for job in jobs)
    urls = [job[f] for job in jobs for f in ("voice_authorization_url", "training_input_source_url")]
    assert any("?AccessKeyId=" in u and "Signature=" in u and "Expires=" in u for u in urls)
    assert any("?" not in u for u in urls)
    resources = [job["allocated_resource"] for job in jobs if job.get("allocated_resource")]
    assert {r["charge_mode"] for r in resources} == {"PERIODIC", "ONE_TIME", "ON_DEMAND"}
    for resource in resources:
        if "expire_time" in resource:
            assert datetime.fromisoformat(resource["expire_time"]).tzinfo is not None
    assessed = [job["assess_result"] for job in jobs if job.get("assess_result")]
    assert assessed
    for result in assessed:
        for part in ("speed", "sound", "snr", "reverb", "dnsmos_ovrl", "dnsmos_bak"):
            assert (
                isinstance(result[part]["status"], int)
                and result[part]["expected"]
                and result[part]["actual"]
            )
        assert result["suggestion"]
    assert any(
        set(r) - {"speed", "sound", "snr", "reverb", "dnsmos_ovrl", "dnsmos_bak", "suggestion"}
        for r in assessed
    )
    creates = Counter(job["create_time"] for job in jobs)
    assert max(creates.values()) > 1, "some jobs share their creation instant"


def test_distributions_look_like_a_growing_weekday_business(sim):
    jobs = sim.state.truth()
    now = sim.state.now_ms
    ages = [(now - epoch_ms(job["create_time"])) / 86_400_000 for job in jobs]
    assert sum(a < 30 for a in ages) > 1.5 * sum(a >= 90 for a in ages)  # growth
    weekday = Counter(
        (datetime.fromtimestamp(epoch_ms(j["create_time"]) / 1000, UTC) + timedelta(hours=8)).weekday() < 5
        for j in jobs
    )
    assert weekday[True] / 5 > 1.5 * weekday[False] / 2
    old = Counter(job["state"] for job, age in zip(jobs, ages, strict=True) if age > 30)
    recent = Counter(job["state"] for job, age in zip(jobs, ages, strict=True) if age < 2)
    assert (old["SUCCEED"] + old["FAILED"]) / sum(old.values()) > 0.8
    in_progress = sum(n for s, n in recent.items() if s not in {"SUCCEED", "FAILED"})
    assert in_progress / sum(recent.values()) > 0.3
    assert set(old) <= set(STATES)
    assert len({job["job_id"] for job in jobs}) == len(jobs)


def test_generation_of_a_large_history_is_complete():
    """200,000 jobs generated column-wise (how fast is for benchmarks/run.py to say)."""
    state = SimulatorState(config(jobs=200_000, projects=(PROJECT,)))
    assert len(state) == 200_000
    assert len(set(state.job_ids(PROJECT))) == 200_000


# ----------------------------------------------------------------------------- listing
def test_response_shape_headers_and_simulated_date(sim, client):
    response = list_jobs(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json;charset=UTF-8"
    assert int(response.headers["content-length"]) == len(response.content)
    assert parsedate_to_datetime(response.headers["date"]) == NOW
    body = response.json()
    assert body["count"] == len(sim.state.truth(PROJECT)) and len(body["jobs"]) == 10  # default limit


def test_keep_alive_serves_many_requests_on_one_connection(sim):
    connection = http.client.HTTPConnection("127.0.0.1", sim.port)
    for _ in range(3):
        connection.request("GET", PATH + "?limit=1", headers=TOKEN)
        response = connection.getresponse()
        assert response.status == 200 and orjson.loads(response.read())["count"] > 0
    connection.close()


def test_paging_covers_the_project_exactly_once_in_both_directions(sim, client):
    truth = sim.state.truth(PROJECT)
    count, desc = fetch_all(client)
    assert count == len(truth) == len(desc)
    assert sorted(ids(desc)) == sorted(ids(truth))
    keys = [epoch_ms(job["create_time"]) for job in desc]
    assert keys == sorted(keys, reverse=True)
    _, asc = fetch_all(client, [("sort_dir", "asc")])
    assert [epoch_ms(j["create_time"]) for j in asc] == sorted(keys)
    _, again = fetch_all(client, [("sort_dir", "asc")])
    assert ids(again) == ids(asc), "ties keep a stable order, so offset paging is repeatable"
    by_id = {job["job_id"]: job for job in truth}
    assert all(job == by_id[job["job_id"]] for job in asc)
    page = list_jobs(client, [("limit", "7"), ("offset", "20"), ("sort_dir", "asc")]).json()
    assert ids(page["jobs"]) == ids(asc[20:27])
    beyond = list_jobs(client, [("offset", "2147483647")]).json()
    assert beyond == {"count": count, "jobs": []}


def test_projects_are_separate(sim, client):
    _, other = fetch_all_project(client, OTHER)
    assert sorted(ids(other)) == sorted(ids(sim.state.truth(OTHER)))
    assert not set(ids(other)) & set(ids(sim.state.truth(PROJECT)))
    assert len(sim.state.truth()) == len(other) + len(sim.state.truth(PROJECT))


def fetch_all_project(client, project):
    response = list_jobs(client, [("limit", "100")], project=project)
    count = response.json()["count"]
    jobs = []
    for offset in range(0, count, 100):
        jobs += list_jobs(client, [("limit", "100"), ("offset", str(offset))], project=project).json()["jobs"]
    return count, jobs


def test_update_time_sort(sim, client):
    _, jobs = fetch_all(client, [("sort_key", "update_time"), ("sort_dir", "asc")])
    keys = [epoch_ms(job["lastupdate_time"]) for job in jobs]
    assert keys == sorted(keys) and len(jobs) == len(sim.state.truth(PROJECT))
    _, misspelt = fetch_all(client, [("sort_key", "ceate_time")])
    _, default = fetch_all(client)
    assert ids(misspelt) == ids(default)


def _filter_cases(truth):
    sample = truth[len(truth) // 2]
    with_batch = next(j for j in truth if j.get("batch_name"))
    arabic = next(j for j in truth if re.search(r"[\u0600-\u06ff]", j["voice_name"]))
    return [
        (
            [("state", "FAILED,WAITING,AUDIT_FAILED")],
            lambda j: j["state"] in {"FAILED", "WAITING", "AUDIT_FAILED"},
        ),
        ([("job_id", sample["job_id"])], lambda j: j["job_id"] == sample["job_id"]),
        ([("voice_name", arabic["voice_name"])], lambda j: j["voice_name"] == arabic["voice_name"]),
        ([("tag", "NEWS")], lambda j: j.get("tag") == "NEWS"),
        ([("job_type", "FLEXUS")], lambda j: j["job_type"] == "FLEXUS"),
        (
            [("batch_name", with_batch["batch_name"])],
            lambda j: j.get("batch_name") == with_batch["batch_name"],
        ),
        ([("is_ondemand_resource", "true")], lambda j: j.get("is_ondemand_resource") is True),
        ([("is_ondemand_resource", "false")], lambda j: j.get("is_ondemand_resource") is not True),
        ([("tag", "NOT_A_TAG")], lambda j: False),
        ([("job_id", "missing")], lambda j: False),
        (
            [("state", "SUCCEED"), ("tag", "LIVE"), ("job_type", "BASIC")],
            lambda j: j["state"] == "SUCCEED" and j.get("tag") == "LIVE" and j["job_type"] == "BASIC",
        ),
    ]


def test_every_exact_match_filter(sim, client):
    truth = sim.state.truth(PROJECT)
    for pairs, keep in _filter_cases(truth):
        count, jobs = fetch_all(client, pairs)
        expected = [j["job_id"] for j in truth if keep(j)]
        assert count == len(expected), pairs
        assert sorted(ids(jobs)) == sorted(expected), pairs


def test_app_user_header_narrows_the_listing(sim, client):
    truth = sim.state.truth(PROJECT)
    user = Counter(j["app_user_id"] for j in truth if j.get("app_user_id")).most_common(1)[0][0]
    count, jobs = fetch_all(client, headers={"X-App-UserId": user})
    assert count == sum(j.get("app_user_id") == user for j in truth) > 1
    assert all(j["app_user_id"] == user for j in jobs)
    assert list_jobs(client, headers={"X-App-UserId": "nobody"}).json() == {"count": 0, "jobs": []}


def test_time_windows_are_inclusive_at_millisecond_precision(sim, client):
    truth = sim.state.truth(PROJECT)
    job = next(j for j in truth[100:] if j["create_time"] >= 100_000_000_000 and j["create_time"] % 1000)
    at = job["create_time"]
    exact = [("create_since", rfc(at)), ("create_until", rfc(at))]
    assert job["job_id"] in ids(fetch_all(client, exact)[1])
    later = [("create_since", rfc(at + 1)), ("create_until", rfc(at + 1000))]
    assert job["job_id"] not in ids(fetch_all(client, later)[1])
    # offsets, fractional digits beyond milliseconds and lower-case z all mean the same instant
    shifted = rfc(at, timedelta(hours=8))
    micro = rfc(at).replace("Z", "999z")
    for since in (shifted, micro):
        jobs = fetch_all(client, [("create_since", since), ("create_until", rfc(at))])[1]
        assert job["job_id"] in ids(jobs), since

    since, until = truth[500]["create_time"], truth[900]["create_time"]
    since, until = epoch_ms(since), epoch_ms(until)
    window = [("create_since", rfc(since)), ("create_until", rfc(until))]
    count, jobs = fetch_all(client, window)
    expected = [j["job_id"] for j in truth if since <= epoch_ms(j["create_time"]) <= until]
    assert count == len(expected) and sorted(ids(jobs)) == sorted(expected)

    u_since = sorted(epoch_ms(j["lastupdate_time"]) for j in truth)[len(truth) // 2]
    u_until = u_since + 20 * 86_400_000
    for sort_key in ("create_time", "update_time"):
        pairs = [("update_since", rfc(u_since)), ("update_until", rfc(u_until)), ("sort_key", sort_key)]
        count, jobs = fetch_all(client, pairs + window[:1])
        expected = [
            j["job_id"]
            for j in truth
            if u_since <= epoch_ms(j["lastupdate_time"]) <= u_until and epoch_ms(j["create_time"]) >= since
        ]
        assert count == len(expected) > 0 and sorted(ids(jobs)) == sorted(expected)


@pytest.mark.parametrize(
    ("pairs", "names"),
    [
        ([("limit", "0")], "limit"),
        ([("limit", "101")], "limit"),
        ([("limit", "ten")], "limit"),
        ([("offset", "-1")], "offset"),
        ([("offset", "2147483648")], "offset"),
        ([("create_since", "yesterday")], "create_since"),
        ([("update_until", "2026-01-01T00:00:00")], "update_until"),  # no zone
        ([("create_until", "2026-02-30T00:00:00Z")], "create_until"),
        (
            [("create_since", "2026-02-02T00:00:00Z"), ("create_until", "2026-02-01T00:00:00Z")],
            "create_since",
        ),
        ([("sort_key", "name")], "sort_key"),
        ([("sort_dir", "up")], "sort_dir"),
        ([("is_ondemand_resource", "yes")], "is_ondemand_resource"),
        ([("state", "FAILED,,WAITING")], "state"),
    ],
)
def test_invalid_parameters_get_400_naming_the_parameter(client, pairs, names):
    response = list_jobs(client, pairs)
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "MSS.00000001" and names in body["error_msg"]


def test_unknown_path_and_method(sim, client):
    response = client.get("/v2/x/jobs", headers=TOKEN)
    assert response.status_code == 404 and response.json()["error_code"]
    assert client.post(PATH, headers=TOKEN).status_code == 405


# -------------------------------------------------------------------------------- auth
def test_token_auth(client):
    assert list_jobs(client, headers={"X-Auth-Token": "sim-token"}).status_code == 200
    missing = client.get(PATH)
    assert missing.status_code == 401 and missing.json()["error_code"] == "APIGW.0301"
    unknown = list_jobs(client, headers={"X-Auth-Token": "guess"})
    assert unknown.status_code == 401 and unknown.json()["error_code"] == "APIGW.0301"
    expired = list_jobs(client, headers={"X-Auth-Token": "expired-token"})
    assert expired.status_code == 401
    assert expired.json()["error_code"] == "APIGW.0307" and "expired" in expired.json()["error_msg"]


def test_unknown_project_is_403(client):
    response = list_jobs(client, project="not-mine")
    assert response.status_code == 403
    body = response.json()
    assert body["error_code"] == "MSS.00000003" and "not-mine" in body["error_msg"]
    signed = list_jobs(client, project="not-mine", auth=AKSKAuth("SIMULATORAK", "simulator-secret"))
    assert signed.status_code == 403


def test_aksk_auth_with_every_parameter_form(sim, client):
    auth = AKSKAuth("SIMULATORAK", "simulator-secret")
    pairs = [
        ("voice_name", "سارة 🎧"),
        ("state", "SUCCEED,FAILED"),
        ("batch_name", "a+b/c?d=e&f"),
        ("limit", "5"),
    ]
    response = list_jobs(
        client, pairs, headers={"X-Project-Id": PROJECT, "X-App-UserId": "app-user-0001"}, auth=auth
    )
    assert response.status_code == 200, response.text
    truth = sim.state.truth(PROJECT)
    response = list_jobs(client, [("limit", "100")], auth=auth)
    assert response.status_code == 200 and response.json()["count"] == len(truth)
    temporary = AKSKAuth("SIMTEMPAK", "simulator-temp-secret", "sim-security-token")
    assert list_jobs(client, auth=temporary).status_code == 200


def test_aksk_signature_of_the_official_sdk_is_accepted(sim, client):
    query = [("limit", "3"), ("voice_name", "小美 v2"), ("create_since", "2026-01-01T00:00:00Z")]
    request = SdkRequest(
        method="GET",
        schema="http",
        host=f"127.0.0.1:{sim.port}",
        resource_path=PATH,
        query_params=query,
        header_params={"X-Project-Id": PROJECT},
        body="",
    )
    signed = Signer(BasicCredentials("SIMULATORAK", "simulator-secret")).sign(request)
    response = client.get(signed.uri, headers=signed.header_params)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("case", "code", "fragment"),
    [
        ("tampered", "APIGW.0301", "signature does not match"),
        ("wrong-secret", "APIGW.0301", "signature does not match"),
        ("unknown-ak", "APIGW.0301", "access key"),
        ("stale-date", "APIGW.0303", "15 minutes"),
        ("temp-without-token", "APIGW.0301", "X-Security-Token"),
        ("temp-wrong-token", "APIGW.0301", "security token"),
        ("host-unsigned", "APIGW.0301", "host"),
        ("garbled", "APIGW.0301", "malformed"),
        ("project-header", "MSS.00000003", "X-Project-Id"),
    ],
)
def test_aksk_refusals(sim, client, case, code, fragment):
    ak, sk, token = "SIMULATORAK", "simulator-secret", None
    clock = None
    if case == "wrong-secret":
        sk = "not-the-secret"
    elif case == "unknown-ak":
        ak = "NOSUCHAK"
    elif case == "stale-date":
        clock = lambda: datetime.now(UTC) - timedelta(minutes=20)  # noqa: E731
    elif case == "temp-without-token":
        ak, sk = "SIMTEMPAK", "simulator-temp-secret"
    elif case == "temp-wrong-token":
        ak, sk, token = "SIMTEMPAK", "simulator-temp-secret", "someone-elses-token"
    request = client.build_request(
        "GET", PATH + "?limit=2", headers={"X-Project-Id": "other" if case == "project-header" else PROJECT}
    )
    AKSKAuth(ak, sk, token, clock=clock).sign(request)
    if case == "tampered":
        request.headers["Authorization"] = request.headers["Authorization"][:-4] + "0000"
    if case == "host-unsigned":
        request.headers["Authorization"] = request.headers["Authorization"].replace("host;", "")
    if case == "garbled":
        request.headers["Authorization"] = "SDK-HMAC-SHA256 nonsense"
    response = client.send(request)
    assert response.status_code == (403 if case == "project-header" else 401)
    body = response.json()
    assert body["error_code"] == code and fragment in body["error_msg"]
    for secret in ("simulator-secret", "simulator-temp-secret", "sim-security-token", "not-the-secret"):
        assert secret not in response.text


def test_signed_query_must_match_the_sent_query(client):
    request = client.build_request("GET", PATH + "?limit=2")
    AKSKAuth("SIMULATORAK", "simulator-secret").sign(request)
    replay = client.build_request("GET", PATH + "?limit=3", headers=dict(request.headers))
    assert client.send(replay).status_code == 401


# ---------------------------------------------------------------------- clock and changes
def test_advance_moves_states_creates_and_deletes():
    with SimulatorServer(config(jobs=2000)) as server, httpx.Client(base_url=server.url) as client:
        before = {j["job_id"]: j for j in server.state.truth(PROJECT)}
        old_now = server.state.now_ms
        response = client.post("/_sim/advance?seconds=172800", headers=server.admin_headers)
        assert response.status_code == 200
        summary = response.json()
        assert summary["created"] > 0 and summary["transitioned"] > 0 and summary["deleted"] > 0
        assert datetime.fromisoformat(summary["now"]) == NOW + timedelta(days=2)
        assert parsedate_to_datetime(list_jobs(client).headers["date"]) == NOW + timedelta(days=2)
        new_now = server.state.now_ms
        after = {j["job_id"]: j for j in server.state.truth(PROJECT)}
        deleted = server.state.deleted_ids(PROJECT)
        assert deleted and not deleted & set(after) and deleted <= set(before)
        created = [after[i] for i in set(after) - set(before)]
        assert created and all(old_now < epoch_ms(j["create_time"]) <= new_now for j in created)
        moved = [i for i in set(after) & set(before) if after[i]["state"] != before[i]["state"]]
        assert moved
        for job_id in moved:
            old, new = before[job_id], after[job_id]
            assert epoch_ms(old["lastupdate_time"]) < epoch_ms(new["lastupdate_time"]) <= new_now
            assert new["create_time"] == old["create_time"]
            if new["state"] == "SUCCEED":
                assert new.get("asset_id")
            if new["state"] == "FAILED":
                assert new.get("job_failed_code") and new.get("job_failed_reason")
        # the API serves exactly the truth after the change
        served = fetch_all(client)[1]
        assert sorted(ids(served)) == sorted(after)
        assert {j["job_id"]: j for j in served} == after
        assert client.get(f"/_sim/truth?project_id={PROJECT}").json() == list(after.values())


def test_advance_walks_jobs_to_the_end_of_the_pipeline():
    state = SimulatorState(config(jobs=500, projects=(PROJECT,)))
    young = {j["job_id"] for j in state.truth() if j["state"] == "CREATING"}
    state.advance(30 * 86_400)
    states = Counter(j["state"] for j in state.truth())
    assert states["SUCCEED"] > 0
    finished = [j for j in state.truth() if j["job_id"] in young]
    assert all(j["state"] != "CREATING" for j in finished)


# ------------------------------------------------------------------------------- faults
def test_faults_appear_at_the_configured_rate_and_are_counted():
    kinds = ("429", "500", "502", "503", "truncated")
    with (
        SimulatorServer(config(jobs=500, fault_rate=0.3, faults=kinds)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        seen = Counter()
        for _ in range(300):
            response = list_jobs(client, [("limit", "20")])
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1"
                seen["429"] += 1
            elif response.status_code == 502:
                assert response.headers["content-type"].startswith("text/html") and "<html>" in response.text
                seen["502"] += 1
            elif response.status_code in (500, 503):
                assert response.json()["error_code"]
                seen[str(response.status_code)] += 1
            else:
                assert response.status_code == 200
                assert int(response.headers["content-length"]) == len(response.content)
                try:
                    orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    seen["truncated"] += 1
        assert 60 <= sum(seen.values()) <= 120
        assert set(seen) == set(kinds)
        assert server.stats["faults"] == dict(seen)
        assert server.stats["requests"] == 300


def test_stall_outlasts_the_client_timeout_and_latency_delays_every_request():
    with SimulatorServer(config(jobs=200, fault_rate=1.0, faults=("stall",), stall_seconds=1.0)) as server:
        with httpx.Client(base_url=server.url, timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
            list_jobs(client)
        server.configure(fault_rate=0.0, latency_ms=150)
        with httpx.Client(base_url=server.url, timeout=5) as client:
            started = time.perf_counter()
            assert list_jobs(client).status_code == 200
            assert time.perf_counter() - started >= 0.15
        assert server.stats["faults"] == {"stall": 1}


def test_rate_limit_refuses_the_excess_with_retry_after():
    with (
        SimulatorServer(config(jobs=200, rate_limit=4)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        statuses = []
        for _ in range(12):
            response = list_jobs(client)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert response.json()["error_code"] == "APIGW.0308"
        assert statuses.count(200) >= 4 and statuses.count(429) >= 5
        assert server.stats["faults"]["rate_limit"] == statuses.count(429)
        time.sleep(1.0)
        assert list_jobs(client).status_code == 200
        client.post("/_sim/config", json={"rate_limit": None}, headers=server.admin_headers)
        assert all(list_jobs(client).status_code == 200 for _ in range(10))


def test_runtime_config_through_the_admin_endpoint():
    with SimulatorServer(config(jobs=200)) as server, httpx.Client(base_url=server.url) as client:
        admin = server.admin_headers
        response = client.post(
            "/_sim/config", json={"fault_rate": 1.0, "faults": ["503"], "latency_ms": 5}, headers=admin
        )
        assert response.status_code == 200 and response.json()["fault_rate"] == 1.0
        assert list_jobs(client).status_code == 503
        assert client.post("/_sim/config", json={"jobs": 5}, headers=admin).status_code == 400
        assert client.post("/_sim/config", json={"fault_rate": 0}, headers=admin).json()["fault_rate"] == 0
        assert list_jobs(client).status_code == 200


# ------------------------------------------------------------------------ admin security
ADMIN_POSTS = [
    ("/_sim/config", b'{"fault_rate": 1.0, "faults": ["503"], "latency_ms": 50}'),
    ("/_sim/advance?seconds=86400", b""),
    ("/_sim/advance?seconds=86400", b"{}"),
    ("/_sim/advance", b'{"seconds": 86400}'),
]


def _unchanged(server: SimulatorServer, client: httpx.Client, before: tuple) -> None:
    """Config and clock as before, and the read-only admin calls still answer without a token."""
    assert (server.runtime_config(), server.state.now_ms) == before
    stats = client.get("/_sim/stats")
    assert stats.status_code == 200 and stats.json()["faults"] == {}
    truth = client.get(f"/_sim/truth?project_id={PROJECT}")
    assert truth.status_code == 200 and len(truth.json()) == len(server.state.truth(PROJECT))
    assert list_jobs(client).status_code == 200


@pytest.mark.parametrize(("path", "body"), ADMIN_POSTS)
def test_admin_posts_a_web_page_could_send_change_nothing(path, body):
    """A page in a browser can POST text/plain (or form data) to loopback without a preflight."""
    with SimulatorServer(config(jobs=200)) as server, httpx.Client(base_url=server.url) as client:
        before = (server.runtime_config(), server.state.now_ms)
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            response = client.post(path, content=body, headers=headers)
            assert response.status_code in (403, 415), response.text
            assert response.json()["error_code"].startswith("SIM.")
            # not even with the token: the JSON content type is required as well
            response = client.post(
                path, content=body, headers=headers | {"X-Sim-Admin-Token": server.admin_token}
            )
            assert response.status_code == 415, response.text
        _unchanged(server, client, before)


@pytest.mark.parametrize(("path", "body"), ADMIN_POSTS)
def test_admin_posts_without_the_admin_token_are_refused(path, body):
    with SimulatorServer(config(jobs=200)) as server, httpx.Client(base_url=server.url) as client:
        before = (server.runtime_config(), server.state.now_ms)
        json_type = {"Content-Type": "application/json"}
        for token in (None, "", "wrong", server.admin_token + "x", server.admin_token[:-1], "é".encode()):
            headers = json_type if token is None else json_type | {"X-Sim-Admin-Token": token}
            response = client.post(path, content=body, headers=headers)
            assert response.status_code == 403, response.text
            assert response.json()["error_code"] == "SIM.403"
            assert server.admin_token not in response.text
        _unchanged(server, client, before)


def test_admin_posts_with_the_admin_token_work():
    with SimulatorServer(config(jobs=200)) as server, httpx.Client(base_url=server.url) as client:
        assert len(server.admin_token) >= 32
        assert SimulatorServer(config(jobs=0)).admin_token != server.admin_token
        assert SimulatorServer(config(jobs=0), admin_token="fixed").admin_token == "fixed"
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Sim-Admin-Token": server.admin_token}
        response = client.post("/_sim/config", content=b'{"latency_ms": 5}', headers=headers)
        assert response.status_code == 200 and server.config.latency_ms == 5
        # the query parameter still works, with an empty JSON body or none at all
        for body in (b"", b"{}"):
            before = server.state.now_ms
            response = client.post("/_sim/advance?seconds=3600", content=body, headers=headers)
            assert response.status_code == 200, response.text
            assert server.state.now_ms == before + 3_600_000
        before = server.state.now_ms
        assert (
            client.post("/_sim/advance", json={"seconds": 7200}, headers=server.admin_headers).status_code
            == 200
        )
        assert server.state.now_ms == before + 7_200_000
        # the in-process helper
        before = server.state.now_ms
        assert datetime.fromisoformat(server.admin("/_sim/advance?seconds=60")["now"]) == NOW + timedelta(
            hours=4, minutes=1
        )
        assert server.state.now_ms == before + 60_000
        assert server.admin("/_sim/config", {"fault_rate": 0.5})["fault_rate"] == 0.5
        assert server.admin("/_sim/stats", method="GET")["requests"] == 0
        with pytest.raises(httpx.HTTPStatusError):
            server.admin("/_sim/config", {"jobs": 5})


def test_the_simulator_warns_when_it_listens_beyond_loopback():
    from pipelines.simulator.cli import exposure_warning, is_loopback

    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host) and exposure_warning(host) is None, host
    for host in ("0.0.0.0", "::", "192.168.1.20", "simhost.example"):
        warning = exposure_warning(host)
        assert warning and host in warning and "credentials" in warning and "anyone" in warning, host


def test_help_names_the_command_explains_every_flag_and_lists_the_credentials():
    from pipelines.simulator.cli import build_parser

    parser = build_parser()
    assert parser.prog == "voicejobs simulator"
    for action in parser._actions:
        assert action.help and action.help.strip(), action.option_strings
    text = parser.format_help()
    assert text.startswith("usage: voicejobs simulator")
    defaults = SimulatorConfig()
    for value in (
        *defaults.tokens,
        *defaults.credentials.keys(),
        *defaults.credentials.values(),
        *defaults.temporary_credentials.keys(),
        *(part for pair in defaults.temporary_credentials.values() for part in pair),
        *defaults.projects,
        "/_sim/advance",
        "/_sim/config",
        "/_sim/truth",
        "/_sim/stats",
        "X-Sim-Admin-Token",
        "application/json",
    ):
        assert value in text, value


# ------------------------------------------------------------------------------ hostile
def test_hostile_paging_mutates_inside_the_requested_window():
    with (
        SimulatorServer(config(jobs=3000, hostile_paging=True)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        truth = server.state.truth(PROJECT)
        since, until = epoch_ms(truth[1000]["create_time"]), epoch_ms(truth[1600]["create_time"])
        window = [("create_since", rfc(since)), ("create_until", rfc(until)), ("sort_dir", "asc")]

        def in_window():
            return {
                j["job_id"]: j
                for j in server.state.truth(PROJECT)
                if since <= epoch_ms(j["create_time"]) <= until
            }

        outside_before = {j["job_id"] for j in truth if not since <= epoch_ms(j["create_time"]) <= until}
        served: list[str] = []
        history = [in_window()]
        for offset in range(0, 500, 100):
            body = list_jobs(client, [*window, ("limit", "100"), ("offset", str(offset))]).json()
            current = in_window()
            assert body["count"] == len(current)
            removed, added = set(history[-1]) - set(current), set(current) - set(history[-1])
            assert len(removed) == 1 and len(added) == 1, "one deletion and one back-dated creation per page"
            new = current[added.pop()]
            assert since <= epoch_ms(new["create_time"]) <= until
            assert epoch_ms(new["create_time"]) <= epoch_ms(new["lastupdate_time"]) <= server.state.now_ms
            served += ids(body["jobs"])
            history.append(current)
        outside_after = {j["job_id"] for j in server.state.truth(PROJECT)} - set(history[-1])
        assert outside_after == outside_before, "nothing outside the window changes"
        gone = set(history[0]) - set(history[-1])
        assert gone & set(served), "some deleted jobs were on pages already served"
        assert gone - set(served), "some deleted jobs had not been served yet"
        assert server.stats["hostile_mutations"] == 5
        # a first page without a window is left alone
        list_jobs(client, [("limit", "5")])
        assert server.stats["hostile_mutations"] == 5


def test_hostile_new_jobs_match_the_request_filters():
    with (
        SimulatorServer(config(jobs=2000, hostile_paging=True)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        before = {j["job_id"] for j in server.state.truth(PROJECT)}
        pairs = [("state", "SUCCEED"), ("tag", "LIVE"), ("offset", "1"), ("limit", "5")]
        list_jobs(client, pairs)
        after = {j["job_id"]: j for j in server.state.truth(PROJECT)}
        (new_id,) = set(after) - before
        assert after[new_id]["state"] == "SUCCEED" and after[new_id]["tag"] == "LIVE"


# ------------------------------------------------------------------------------ lifecycle
def test_stop_closes_keep_alive_connections():
    server = SimulatorServer(config(jobs=100)).start()
    client = httpx.Client(base_url=server.url, timeout=2)
    assert list_jobs(client).status_code == 200
    server.stop()
    with pytest.raises(httpx.TransportError):
        list_jobs(client)
    client.close()


def _start_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.simulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _banner(process: subprocess.Popen, timeout: float = 60) -> list[str]:
    """Banner lines up to and including the admin token line (fails, not hangs, without one)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    banner: list[str] = []
    deadline = time.monotonic() + timeout
    while not banner or not banner[-1].startswith("  admin token: "):
        try:
            banner.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            process.kill()
            pytest.fail("no admin token line in the banner:\n" + "".join(banner) + process.stderr.read())
    return banner


def test_command_line_serves_until_terminated():
    process = _start_cli(
        "--jobs", "300", "--seed", "3", "--projects", "p1,p2", "--now", "2026-01-01T00:00:00Z", "--days", "30"
    )
    try:
        banner = _banner(process)
        match = re.fullmatch(r"MetaStudio simulator listening on (http://127\.0\.0\.1:\d+)\n", banner[0])
        assert match, banner[0] + process.stderr.read()
        token = re.fullmatch(r"  admin token: (\S+)\n", banner[-1]).group(1)
        with httpx.Client(base_url=match.group(1)) as client:
            response = client.get("/v1/p2/voice-training-manage/user/jobs", auth=TokenAuth("sim-token"))
            assert response.status_code == 200 and response.json()["count"] > 0
            assert parsedate_to_datetime(response.headers["date"]) == datetime(2026, 1, 1, tzinfo=UTC)
            assert client.post("/_sim/advance?seconds=3600", json={}).status_code == 403
            advanced = client.post(
                "/_sim/advance?seconds=3600", json={}, headers={"X-Sim-Admin-Token": token}
            )
            assert advanced.status_code == 200, advanced.text
            assert datetime.fromisoformat(advanced.json()["now"]) == datetime(2026, 1, 1, 1, tzinfo=UTC)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0  # a hang guard: a loaded machine stops it in seconds
    text = "".join(banner)
    assert "SIMULATORAK" in text and "sim-token" in text
    assert "WARNING" not in process.stderr.read()


def test_command_line_warns_on_stderr_when_bound_to_every_interface():
    process = _start_cli("--host", "0.0.0.0", "--jobs", "10", "--days", "2")
    try:
        banner = _banner(process)
        assert banner[0].startswith("MetaStudio simulator listening on http://0.0.0.0:")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0  # a hang guard: a loaded machine stops it in seconds
    warning = process.stderr.read()
    assert "WARNING" in warning and "0.0.0.0" in warning and "credentials" in warning, warning
    assert "WARNING" not in "".join(banner)


# SIGTERM raised at the k-th line the main thread runs once the banner is out: the Python
# handler then runs right there, wherever the wait loop happens to be (inside a lock's ``with``
# included). A watchdog ends the process with 3 if one of those stops never returns.
_STOP_AT_EVERY_LINE = """
import io, os, signal, sys, threading
from pipelines.simulator import cli

class Banner(io.TextIOBase):
    out = False
    def write(self, text):
        Banner.out = Banner.out or cli.ADMIN_TOKEN_PREFIX in text
        return len(text)

def stop_at_line(k):
    seen = 0
    def trace(frame, event, arg):
        nonlocal seen
        if event == "line" and Banner.out:
            seen += 1
            if seen == k:
                signal.raise_signal(signal.SIGTERM)
        return trace
    Banner.out = False
    sys.stdout = Banner()
    sys.settrace(trace)
    try:
        code = cli.main(["--port", "0", "--jobs", "10", "--days", "2"])
    finally:
        sys.settrace(None)
        sys.stdout = sys.__stdout__
    return code, seen

watchdog = threading.Timer(120, lambda: os._exit(3))
watchdog.daemon = True
watchdog.start()
for k in range(1, int(sys.argv[1]) + 1):
    code, seen = stop_at_line(k)
    assert code == 0 and seen >= k, (k, code, seen)
print("stopped at every line")
"""


def test_command_line_stops_whatever_line_the_signal_lands_on():
    """A stop handler that takes a lock (as ``threading.Event.set`` does) deadlocks when the signal
    lands while the main thread holds that lock inside its wait: the process then never exits."""
    result = subprocess.run(
        [sys.executable, "-c", _STOP_AT_EVERY_LINE, "24"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=300,  # a hang guard only: the watchdog inside ends a stuck run first
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stopped at every line\n"


def test_fast_serializer_equals_the_reference_record():
    """Pages are built from pre-encoded fragments; they must say exactly what the readable record says."""
    state = SimulatorState(config(jobs=20_000, projects=("plain", 'quote"and\\slash', "项目")))
    state.advance(3 * 86_400)
    renderer = state._renderer
    rows = list(range(state._table.n))
    for reference, blob in zip(renderer.records(rows), renderer.serialize(rows), strict=True):
        assert orjson.loads(blob) == reference


# ------------------------------------------------------------------------------- golden
def served_digest(state: SimulatorState) -> str:
    """sha256 over what ``state`` serves through a fixed script: ids and truth per project, pages
    for many list requests (windows, filters, both sort keys and directions, deep offsets) after
    generation, after two advances, after hostile mutations and user deletions, and the
    advances' and mutations' results. Requests are built from the state's own data."""
    digest = hashlib.sha256()

    def feed(value) -> None:
        digest.update(value if isinstance(value, bytes) else orjson.dumps(value))
        digest.update(b"\n")

    projects = state.projects
    truth = state.truth(projects[0])
    middle = truth[len(truth) // 2]
    since, until = epoch_ms(truth[len(truth) // 4]["create_time"]), epoch_ms(truth[3 * len(truth) // 4]["create_time"])
    app_user = next(job["app_user_id"] for job in truth if "app_user_id" in job)
    requests = [
        ListParams(),
        ListParams(limit=100, offset=37, sort_dir="asc"),
        ListParams(sort_key="update", limit=100),
        ListParams(sort_key="update", sort_dir="asc", offset=5, limit=50),
        ListParams(create_since=since, create_until=until, limit=100, offset=20),
        ListParams(update_since=since, limit=100, sort_key="update"),
        ListParams(create_since=since, update_until=until, limit=100),
        ListParams(states=("FAILED", "WAITING", "NOPE"), limit=100),
        ListParams(job_id=middle["job_id"]),
        ListParams(job_id="zz"),
        ListParams(voice_name=middle["voice_name"], limit=100),
        ListParams(tag="LIVE", job_type="BASIC", limit=100),
        ListParams(is_ondemand_resource=True, limit=100),
        ListParams(is_ondemand_resource=False, limit=100, offset=10),
        ListParams(offset=10_000_000),
        ListParams(batch_name="nope"),
    ]

    def pages() -> None:
        for params in requests:
            for project in projects:
                feed(state.list_page(project, params))
            feed(state.list_page(projects[0], params, app_user))

    feed(len(state))
    feed(state.now_ms)
    for project in (*projects, None):
        feed(state.job_ids(project))
        feed(state.truth(project))
    pages()
    feed(state.advance(3600))
    pages()
    feed(state.advance(3 * 86400, seed_step=9))
    pages()
    for params in requests[:6]:
        feed(state.hostile_mutation(projects[0], params))
        feed(state.hostile_mutation(projects[0], params, app_user))
    feed(state.hostile_mutations)
    listed = state.job_ids(projects[0])
    state.move_created(listed[10], epoch_ms(state.truth(projects[0])[10]["create_time"]) // 86_400_000 * 86_400_000)
    feed(state.delete(set(listed[20:25]) | {"missing"}))
    feed(sorted(state.deleted_ids(projects[0])))
    feed(sorted(state.deleted_ids()))
    pages()
    feed(state.advance(86400))
    pages()
    for project in (*projects, None):
        feed(state.truth(project))
    return digest.hexdigest()


@pytest.mark.parametrize(
    ("overrides", "digest"),
    [
        ({}, "83fd22b61bf823ed3fbd8e7cc19052792bcc54bb68dd8e6f97ba74da5d40c548"),
        (
            dict(jobs=20_000, seed=7, days=365, projects=("a", 'q"\\', "项目")),
            "dab7ebdb4b8da6f9a82e11d9abfe14c10d635627e0059d7f917f70dace34c7b6",
        ),
        (dict(jobs=500, seed=-3, days=1, projects=("x",)), "6a991e148e17b270d62ddbf4ab9c11d67564f2c692b80908198f9797480e77f2"),
        (dict(traffic="lumpy"), "0abfd2d3fcee5e1599e509247bdcde6794f88903b61fc419b4b9ab6ad7d798d9"),
    ],
)
def test_served_bytes_stay_what_they_were(overrides, digest):
    """Frozen digests of everything served for fixed configurations: restructuring the
    simulator must not change a byte. (A deliberate change of the generated data, or a numpy
    release that changes its random streams, changes them: then record the new digests.)"""
    assert served_digest(SimulatorState(config(**overrides))) == digest
