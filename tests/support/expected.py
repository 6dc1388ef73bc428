"""An independent reading of the API's JSON, to compare the warehouse with the simulator's truth.

Deliberately written per row in plain Python, sharing no code with
``pipelines.ingest``: the tests compare two implementations of the contract.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

PROPS = ("speed", "sound", "snr", "reverb", "dnsmos_ovrl", "dnsmos_bak")
PROP_FIELDS = ("expected", "actual", "suggestion", "suggestion_en", "status")
PLAIN = (
    "job_id", "job_type", "app_user_id", "voice_name", "sex", "language", "state", "reject_times",
    "asset_id", "job_failed_code", "job_failed_reason", "voice_authorization_url",
    "training_input_source_url", "create_type", "tag", "phone", "dhtms_job_id", "batch_name",
    "output_language", "is_remake", "is_ondemand_resource",
)
TIMES = ("create_time", "lastupdate_time")
TOP_KNOWN = set(PLAIN) | set(TIMES) | {"allocated_resource", "assess_result"}


# Job states, read from the API page (../shared/API.md), not from the SQL: SUCCEED and FAILED
# are terminal; the other *_FAILED states and USER_REVIEW_REJECT wait for the user and can
# still move on, and so does USER_RESULT_REVIEW (the user is reviewing the result). Every other
# state, and a missing one, is the service's to move.
TERMINAL_STATES = frozenset({"SUCCEED", "FAILED"})
WAITING_ON_USER_STATES = frozenset({"AUDIT_FAILED", "SPLIT_FAILED", "USER_REVIEW_REJECT", "USER_RESULT_REVIEW"})
IN_PROGRESS_BY_SERVICE_STATES = frozenset({
    "CREATING", "SYSTEM_AUDITING", "AUDITING", "WAITING_SPLIT", "SPLITTING", "ANNOTATING", "WAITING",
    "PROCESSING", "RESULT_REVIEW", "UPLOADING",
})


def waits_on(state: str | None) -> str | None:
    """Which side must act on a job in `state`: "user", "service", or None once it finished."""
    if state in TERMINAL_STATES:
        return None
    if state in WAITING_ON_USER_STATES:
        return "user"
    # A state the page does not list yet: one named like the other failures still waits on the user.
    if state is not None and state not in IN_PROGRESS_BY_SERVICE_STATES and state.endswith("_FAILED"):
        return "user"
    return "service"


def epoch(value) -> datetime | None:
    if value is None:
        return None
    value = int(value)
    ms = value if value >= 100_000_000_000 else value * 1000
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def rfc3339(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def mask_phone(phone: str | None) -> str | None:
    if phone is None:
        return None
    return "*" * (len(phone) - 4) + phone[-4:] if len(phone) > 4 else "*" * len(phone)


def strip_query(url: str | None) -> str | None:
    if url is None:
        return None
    return url.split("#", 1)[0].split("?", 1)[0]


def expected_row(job: dict, project_id: str, personal_data: str = "raw") -> dict:
    """The warehouse row the contract promises for one API job object."""
    row: dict = {"project_id": project_id}
    for name in PLAIN:
        row[name] = job.get(name)
    for name in TIMES:
        row[name] = epoch(job.get(name))
    extra: dict = {k: v for k, v in job.items() if k not in TOP_KNOWN}
    res = job.get("allocated_resource") or {}
    row["allocated_resource_resource_id"] = res.get("resource_id")
    row["allocated_resource_charge_mode"] = res.get("charge_mode")
    row["allocated_resource_expire_time"] = rfc3339(res.get("expire_time"))
    res_extra = {k: v for k, v in res.items() if k not in ("resource_id", "charge_mode", "expire_time")}
    if res_extra:
        extra["allocated_resource"] = res_extra
    assess = job.get("assess_result") or {}
    assess_extra: dict = {}
    for prop in PROPS:
        detail = assess.get(prop) or {}
        for f in PROP_FIELDS:
            row[f"assess_result_{prop}_{f}"] = detail.get(f)
        unknown = {k: v for k, v in detail.items() if k not in PROP_FIELDS}
        if unknown:
            assess_extra[prop] = unknown
    row["assess_result_suggestion"] = assess.get("suggestion")
    assess_extra.update({k: v for k, v in assess.items() if k not in PROPS and k != "suggestion"})
    if assess_extra:
        extra["assess_result"] = assess_extra
    row["extra"] = extra or None
    if personal_data == "mask":
        row["phone"] = mask_phone(row["phone"])
        row["voice_authorization_url"] = strip_query(row["voice_authorization_url"])
        row["training_input_source_url"] = strip_query(row["training_input_source_url"])
    return row


def comparable(row: dict) -> dict:
    """A warehouse row with its JSON column parsed and timestamps in UTC, for equality."""
    out = dict(row)
    if out.get("extra") is not None:
        out["extra"] = json.loads(out["extra"])
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.astimezone(UTC)
    return out


def assert_rows_equal(actual_rows: list[dict], truth_by_project: dict[str, list[dict]],
                      personal_data: str = "raw") -> None:
    """Every truth job is present exactly once and equal field by field; nothing else is."""
    actual = {}
    for row in actual_rows:
        key = (row["project_id"], row["job_id"])
        assert key not in actual, f"duplicate row {key}"
        actual[key] = comparable(row)
    expected = {}
    for pid, jobs in truth_by_project.items():
        for job in jobs:
            expected[(pid, job["job_id"])] = expected_row(job, pid, personal_data)
    missing = expected.keys() - actual.keys()
    extra = actual.keys() - expected.keys()
    assert not missing, f"{len(missing)} jobs missing, e.g. {sorted(missing)[:3]}"
    assert not extra, f"{len(extra)} jobs not in the source, e.g. {sorted(extra)[:3]}"
    for key, exp in expected.items():
        got = actual[key]
        diffs = {f: (got.get(f), v) for f, v in exp.items() if got.get(f) != v}
        assert not diffs, f"{key} differs: {diffs}"
