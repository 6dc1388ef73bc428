"""The `voice_training_jobs` Arrow schema, the fields the source's records know at each level,
the documented enumerations, and what normalization hands back (Normalized, Quarantined)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from pipelines.contract import TIMESTAMP

SCHEMA_VERSION = 1

_TS = TIMESTAMP

ASSESS_PROPERTIES: tuple[str, ...] = ("speed", "sound", "snr", "reverb", "dnsmos_ovrl", "dnsmos_bak")
ASSESS_DETAIL_FIELDS: tuple[str, ...] = ("expected", "actual", "suggestion", "suggestion_en", "status")


def _assess_fields() -> list[pa.Field]:
    out: list[pa.Field] = []
    for prop in ASSESS_PROPERTIES:
        for name in ASSESS_DETAIL_FIELDS:
            out.append(
                pa.field(f"assess_result_{prop}_{name}", pa.int32() if name == "status" else pa.string())
            )
    return out


JOBS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("project_id", pa.string(), nullable=False),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("job_type", pa.string()),
        pa.field("app_user_id", pa.string()),
        pa.field("voice_name", pa.string()),
        pa.field("sex", pa.string()),
        pa.field("language", pa.string()),
        pa.field("state", pa.string()),
        pa.field("reject_times", pa.int32()),
        pa.field("asset_id", pa.string()),
        pa.field("job_failed_code", pa.string()),
        pa.field("job_failed_reason", pa.string()),
        pa.field("create_time", _TS),
        pa.field("lastupdate_time", _TS),
        pa.field("voice_authorization_url", pa.string()),
        pa.field("training_input_source_url", pa.string()),
        pa.field("create_type", pa.string()),
        pa.field("tag", pa.string()),
        pa.field("phone", pa.string()),
        pa.field("dhtms_job_id", pa.string()),
        pa.field("batch_name", pa.string()),
        pa.field("allocated_resource_resource_id", pa.string()),
        pa.field("allocated_resource_charge_mode", pa.string()),
        pa.field("allocated_resource_expire_time", _TS),
        pa.field("output_language", pa.string()),
        pa.field("is_remake", pa.bool_()),
        *_assess_fields(),
        pa.field("assess_result_suggestion", pa.string()),
        pa.field("is_ondemand_resource", pa.bool_()),
        pa.field("extra", pa.string()),
        pa.field("synced_at", _TS),
    ]
)

# Field names of the source record (TrainingJobInfo), per level.
KNOWN_FIELDS: frozenset[str] = frozenset(
    {
        "job_id", "job_type", "app_user_id", "voice_name", "sex", "language", "state",
        "reject_times", "asset_id", "job_failed_code", "job_failed_reason", "create_time",
        "lastupdate_time", "voice_authorization_url", "training_input_source_url",
        "create_type", "tag", "phone", "dhtms_job_id", "batch_name", "allocated_resource",
        "output_language", "is_remake", "assess_result", "is_ondemand_resource",
    }
)  # fmt: skip
KNOWN_ALLOCATED_RESOURCE_FIELDS: frozenset[str] = frozenset({"resource_id", "charge_mode", "expire_time"})
KNOWN_ASSESS_RESULT_FIELDS: frozenset[str] = frozenset({*ASSESS_PROPERTIES, "suggestion"})
KNOWN_ASSESS_DETAIL_FIELDS: frozenset[str] = frozenset(ASSESS_DETAIL_FIELDS)

# Documented enumerations, for data-quality checks. Values outside them are kept.
KNOWN_STATES: frozenset[str] = frozenset(
    {
        "CREATING", "SYSTEM_AUDITING", "AUDITING", "WAITING_SPLIT", "SPLITTING", "SPLIT_FAILED",
        "ANNOTATING", "WAITING", "PROCESSING", "RESULT_REVIEW", "AUDIT_FAILED",
        "USER_RESULT_REVIEW", "USER_REVIEW_REJECT", "UPLOADING", "FAILED", "SUCCEED",
    }
)  # fmt: skip
KNOWN_JOB_TYPES: frozenset[str] = frozenset(
    {"BASIC", "MIDDLE", "ADVANCE", "THIRD_PARTY", "THIRD_PARTY_LJZN", "FLEXUS"}
)
KNOWN_TAGS: frozenset[str] = frozenset(
    {"ECOMMERCE", "NEWS", "MARKETING", "LIVE", "EDUCATION", "CUSTOMER", "STORYTELLING"}
)
KNOWN_SEXES: frozenset[str] = frozenset({"FEMALE", "MALE"})
KNOWN_CREATE_TYPES: frozenset[str] = frozenset({"PACKAGE", "SEGMENT"})
KNOWN_CHARGE_MODES: frozenset[str] = frozenset({"PERIODIC", "ONE_TIME", "ON_DEMAND"})

PERSONAL_DATA_POLICIES: frozenset[str] = frozenset({"mask", "raw"})
PHONE_FIELD = "phone"
URL_FIELDS: tuple[str, ...] = ("voice_authorization_url", "training_input_source_url")

# Values at or above this are epoch milliseconds (1e11 seconds is the year 5138).
_MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

_TOP_STRING_COLUMNS: tuple[str, ...] = (
    "job_type", "app_user_id", "voice_name", "sex", "language", "state", "asset_id",
    "job_failed_code", "job_failed_reason", "voice_authorization_url",
    "training_input_source_url", "create_type", "tag", "phone", "dhtms_job_id", "batch_name",
    "output_language",
)  # fmt: skip


@dataclass
class Quarantined:
    """A record left out of the table, with why. `raw_record` is JSON text of the record
    as received, with the personal-data policy applied."""

    project_id: str
    job_id: str | None
    reason: str
    raw_record: str


@dataclass
class Normalized:
    """`table` has exactly JOBS_SCHEMA and one row per job_id. `slice_of`: the table of several
    windows normalized together that `table` is a slice of (normalize_windows), else None; a
    check of it holds for every window's slice, and costs one call instead of one per window."""

    table: pa.Table
    quarantine: list[Quarantined] = field(default_factory=list)
    duplicates: int = 0
    slice_of: pa.Table | None = None
