"""normalize(): every field, the documented bad-data rules, personal-data masking."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from pipelines.contract import TERMINAL_STATES
from pipelines.ingest import JOBS_SCHEMA, SCHEMA_VERSION, mask_phone, normalize, strip_url_credentials
from pipelines.ingest.finish import _stripped_urls
from pipelines.ingest.schema import KNOWN_STATES

SYNCED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
CREATED_S = 1736498597  # 2025-01-10T08:43:17Z
CREATED = datetime(2025, 1, 10, 8, 43, 17, tzinfo=UTC)
ASSESS = ("speed", "sound", "snr", "reverb", "dnsmos_ovrl", "dnsmos_bak")


def full_record(job_id: str = "job-1") -> dict:
    return {
        "job_id": job_id,
        "job_type": "MIDDLE",
        "app_user_id": "user-7",
        "voice_name": "晓晓 voice",
        "sex": "FEMALE",
        "language": "CN",
        "state": "SUCCEED",
        "reject_times": 2,
        "asset_id": "asset-9",
        "job_failed_code": "MSS.0001",
        "job_failed_reason": "none really",
        "create_time": CREATED_S,
        "lastupdate_time": (CREATED_S + 60) * 1000,
        "voice_authorization_url": "https://obs.example.com/auth/a.pdf?AccessKeyId=AK&Signature=S#frag",
        "training_input_source_url": "https://u:p@obs.example.com:8443/in/src.zip?X-Token=T",
        "create_type": "SEGMENT",
        "tag": "NEWS",
        "phone": "+8613812345678",
        "dhtms_job_id": "dh-3",
        "batch_name": "batch-a",
        "allocated_resource": {"resource_id": "res-1", "charge_mode": "PERIODIC", "expire_time": "2026-01-10T08:43:17Z"},
        "output_language": "EN",
        "is_remake": True,
        "assess_result": {
            **{
                p: {"expected": f"{p}-e", "actual": f"{p}-a", "suggestion": f"{p}-s", "suggestion_en": f"{p}-se",
                    "status": i}
                for i, p in enumerate(ASSESS)
            },
            "suggestion": "overall fine",
        },
        "is_ondemand_resource": False,
    }  # fmt: skip


def one(records: list, **kw) -> dict:
    out = normalize(records, "proj", SYNCED, **kw)
    assert out.quarantine == [], out.quarantine
    assert out.table.num_rows == 1
    return out.table.to_pylist()[0]


def test_schema_is_the_contract():
    assert SCHEMA_VERSION == 1
    names = JOBS_SCHEMA.names
    leading = (
        "project_id job_id job_type app_user_id voice_name sex language state reject_times asset_id "
        "job_failed_code job_failed_reason create_time lastupdate_time voice_authorization_url "
        "training_input_source_url create_type tag phone dhtms_job_id batch_name "
        "allocated_resource_resource_id allocated_resource_charge_mode allocated_resource_expire_time "
        "output_language is_remake"
    ).split()
    assess = [
        f"assess_result_{p}_{f}"
        for p in ASSESS
        for f in ("expected", "actual", "suggestion", "suggestion_en", "status")
    ]
    assert names == [
        *leading,
        *assess,
        "assess_result_suggestion",
        "is_ondemand_resource",
        "extra",
        "synced_at",
    ]
    assert not JOBS_SCHEMA.field("project_id").nullable and not JOBS_SCHEMA.field("job_id").nullable
    ts = pa.timestamp("ms", tz="UTC")
    for name in ("create_time", "lastupdate_time", "allocated_resource_expire_time", "synced_at"):
        assert JOBS_SCHEMA.field(name).type == ts
    assert JOBS_SCHEMA.field("reject_times").type == pa.int32()
    assert JOBS_SCHEMA.field("assess_result_dnsmos_bak_status").type == pa.int32()
    assert JOBS_SCHEMA.field("is_remake").type == pa.bool_()
    assert names.index("assess_result_speed_expected") == names.index("is_remake") + 1
    assert names.index("assess_result_suggestion") == names.index("assess_result_dnsmos_bak_status") + 1
    assert "SUCCEED" in KNOWN_STATES and TERMINAL_STATES == {"SUCCEED", "FAILED"}


def test_full_record_every_field_masked():
    out = normalize([full_record()], "proj", SYNCED)
    assert out.table.schema.equals(JOBS_SCHEMA, check_metadata=True)
    row = out.table.to_pylist()[0]
    expected = {
        "project_id": "proj", "job_id": "job-1", "job_type": "MIDDLE", "app_user_id": "user-7",
        "voice_name": "晓晓 voice", "sex": "FEMALE", "language": "CN", "state": "SUCCEED", "reject_times": 2,
        "asset_id": "asset-9", "job_failed_code": "MSS.0001", "job_failed_reason": "none really",
        "create_time": CREATED, "lastupdate_time": datetime(2025, 1, 10, 8, 44, 17, tzinfo=UTC),
        "voice_authorization_url": "https://obs.example.com/auth/a.pdf",
        "training_input_source_url": "https://obs.example.com:8443/in/src.zip",
        "create_type": "SEGMENT", "tag": "NEWS", "phone": "**********5678", "dhtms_job_id": "dh-3",
        "batch_name": "batch-a", "allocated_resource_resource_id": "res-1",
        "allocated_resource_charge_mode": "PERIODIC",
        "allocated_resource_expire_time": datetime(2026, 1, 10, 8, 43, 17, tzinfo=UTC),
        "output_language": "EN", "is_remake": True,
        "assess_result_suggestion": "overall fine", "is_ondemand_resource": False, "extra": None,
        "synced_at": SYNCED,
    }  # fmt: skip
    for i, p in enumerate(ASSESS):
        expected |= {
            f"assess_result_{p}_expected": f"{p}-e", f"assess_result_{p}_actual": f"{p}-a",
            f"assess_result_{p}_suggestion": f"{p}-s", f"assess_result_{p}_suggestion_en": f"{p}-se",
            f"assess_result_{p}_status": i,
        }  # fmt: skip
    assert row == expected


def test_raw_policy_keeps_personal_data():
    row = one([full_record()], personal_data="raw")
    assert row["phone"] == "+8613812345678"
    assert row["voice_authorization_url"] == full_record()["voice_authorization_url"]
    assert row["training_input_source_url"] == full_record()["training_input_source_url"]
    with pytest.raises(ValueError, match="personal_data"):
        normalize([], "proj", SYNCED, personal_data="clear")


def test_null_and_missing_are_the_same():
    minimal = {"job_id": "j", "create_time": CREATED_S}
    nulls = {k: None for k in full_record()} | minimal
    a, b = one([minimal]), one([nulls])
    assert a == b
    assert all(
        v is None for k, v in a.items() if k not in ("project_id", "job_id", "create_time", "synced_at")
    )
    # null nested objects and null details inside them read the same as missing ones
    c = one([minimal | {"allocated_resource": {}, "assess_result": {"speed": None, "suggestion": None}}])
    assert c == a


def test_unknown_keys_go_to_extra_nested_under_their_path():
    rec = full_record()
    rec["zeta"] = [1, 2]
    rec["alpha"] = {"x": 1}
    rec["allocated_resource"]["region"] = "cn-north-4"
    rec["assess_result"]["pitch"] = {"status": 1}
    rec["assess_result"]["speed"]["score"] = 0.5
    row = one([rec])
    assert row["extra"] == (
        '{"allocated_resource":{"region":"cn-north-4"},"alpha":{"x":1},'
        '"assess_result":{"pitch":{"status":1},"speed":{"score":0.5}},"zeta":[1,2]}'
    )
    assert row["assess_result_speed_status"] == 0  # the known keys beside it still land


PRESIGNED = "https://bucket.obs.cn-north-4.myhuaweicloud.com/a/b.wav?AccessKeyId=AK&Expires=1&Signature=S"
PRESIGNED_STRIPPED = "https://bucket.obs.cn-north-4.myhuaweicloud.com/a/b.wav"


def test_unknown_top_level_presigned_url_is_stripped_in_extra():
    rec = full_record() | {"sample_audio_url": PRESIGNED, "note": f"see {PRESIGNED} for the take"}
    masked = json.loads(one([rec])["extra"])
    assert masked == {
        "sample_audio_url": PRESIGNED_STRIPPED,
        "note": f"see {PRESIGNED_STRIPPED} for the take",
    }
    assert json.loads(one([rec], personal_data="raw")["extra"]) == {
        "sample_audio_url": PRESIGNED,
        "note": f"see {PRESIGNED} for the take",
    }


# Digit strings that are not phones: ids, epoch times, dates, numbers; no phone key, no phone shape.
NOT_PHONES = {
    "parent_job_id": "1736498597123",
    "created_epoch": "1736498597",
    "seq": 8613812345678,
    "day": "2025-01-10",
    "when": "2025-01-10T08:43:17Z",
    "version": "1.2.3",
    "ratio": "0.5",
    "hotel_id": "12345678",
    "telemetry": {"count": "12345678"},
    "short": "+86 12",
}


def test_nested_unknown_phone_is_masked_in_extra():
    rec = full_record() | NOT_PHONES
    rec["contact"] = {"name": "Li", "mobileNo": "13812345678", "backup": {"number": "+86 138 1234 5678"}}
    rec["assess_result"]["speed"]["reviewer_tel"] = "010-8765-4321"
    rec["allocated_resource"]["owner"] = {"phone_numbers": ["+8613812345678", 8613812345679]}
    masked = json.loads(one([rec])["extra"])
    assert masked == NOT_PHONES | {
        "allocated_resource": {"owner": {"phone_numbers": ["**********5678", "*********5679"]}},
        "assess_result": {"speed": {"reviewer_tel": "*********4321"}},
        "contact": {"name": "Li", "mobileNo": "*******5678", "backup": {"number": "*************5678"}},
    }
    raw = json.loads(one([rec], personal_data="raw")["extra"])
    assert raw["contact"]["mobileNo"] == "13812345678"
    assert raw["contact"]["backup"]["number"] == "+86 138 1234 5678"
    assert raw["assess_result"]["speed"]["reviewer_tel"] == "010-8765-4321"
    assert raw["allocated_resource"]["owner"]["phone_numbers"] == ["+8613812345678", 8613812345679]


def test_list_of_unknown_urls_is_stripped_in_extra():
    rec = full_record() | {
        "samples": [PRESIGNED, {"url": "http://h/x.wav?token=T#f", "take": 2}, "https://h/plain.wav", 3]
    }
    extra = json.loads(one([rec])["extra"])
    assert extra == {
        "samples": [PRESIGNED_STRIPPED, {"url": "http://h/x.wav", "take": 2}, "https://h/plain.wav", 3]
    }
    assert json.loads(one([rec], personal_data="raw")["extra"]) == {"samples": rec["samples"]}


def test_quarantine_raw_record_masks_unknown_fields_too():
    rec = full_record() | {
        "reject_times": "many",
        "sample_audio_url": PRESIGNED,
        "contact": {"phone": "+86 138 1234 5678", "links": [PRESIGNED]},
        "parent_job_id": "1736498597123",
    }
    rec["assess_result"]["speed"]["reviewer_tel"] = "010-8765-4321"
    masked = normalize([rec], "proj", SYNCED).quarantine[0].raw_record
    assert "Signature" not in masked and "1234 5678" not in masked and "8765-4321" not in masked
    data = json.loads(masked)
    assert data["sample_audio_url"] == PRESIGNED_STRIPPED
    assert data["contact"] == {"phone": "*************5678", "links": [PRESIGNED_STRIPPED]}
    assert data["assess_result"]["speed"]["reviewer_tel"] == "*********4321"
    assert data["parent_job_id"] == "1736498597123" and data["reject_times"] == "many"
    assert json.loads(normalize([rec], "proj", SYNCED, personal_data="raw").quarantine[0].raw_record) == rec


def test_epoch_seconds_and_milliseconds_per_value():
    ms = CREATED_S * 1000
    recs = [
        {"job_id": "s", "create_time": CREATED_S, "lastupdate_time": ms + 1},
        {"job_id": "ms", "create_time": ms, "lastupdate_time": CREATED_S},
        {"job_id": "str", "create_time": str(CREATED_S), "lastupdate_time": f" {ms} "},
        {"job_id": "float", "create_time": float(CREATED_S) + 0.25, "lastupdate_time": float(ms)},
        {"job_id": "iso", "create_time": "2025-01-10T16:43:17+08:00"},
        {"job_id": "edge", "create_time": 99_999_999_999, "lastupdate_time": 100_000_000_000},
    ]
    out = normalize(recs, "proj", SYNCED)
    assert out.quarantine == []
    got = {r["job_id"]: (r["create_time"], r["lastupdate_time"]) for r in out.table.to_pylist()}
    assert got["s"] == (CREATED, datetime(2025, 1, 10, 8, 43, 17, 1000, tzinfo=UTC))
    assert got["ms"] == (CREATED, CREATED)
    assert got["str"] == (CREATED, CREATED)
    assert got["float"] == (datetime(2025, 1, 10, 8, 43, 17, 250000, tzinfo=UTC), CREATED)
    assert got["iso"] == (CREATED, None)
    assert got["edge"][0] == datetime.fromtimestamp(99_999_999_999, UTC)  # seconds: year 5138
    assert got["edge"][1] == datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)  # milliseconds


def test_unknown_enum_values_are_kept():
    rec = full_record() | {"state": "QUANTUM_TUNING", "job_type": "ULTRA", "tag": "GAMING", "sex": "OTHER"}
    rec["allocated_resource"]["charge_mode"] = "FREE"
    row = one([rec])
    assert (row["state"], row["job_type"], row["tag"], row["sex"]) == (
        "QUANTUM_TUNING",
        "ULTRA",
        "GAMING",
        "OTHER",
    )
    assert row["allocated_resource_charge_mode"] == "FREE"


@pytest.mark.parametrize(
    ("field", "value", "column", "expected"),
    [
        ("reject_times", "3", "reject_times", 3),
        ("reject_times", " 4 ", "reject_times", 4),
        ("reject_times", 5.0, "reject_times", 5),
        ("reject_times", "6.0", "reject_times", 6),
        ("is_remake", "true", "is_remake", True),
        ("is_remake", "FALSE", "is_remake", False),
        ("is_remake", 1, "is_remake", True),
        ("is_remake", 0, "is_remake", False),
        ("is_ondemand_resource", "1", "is_ondemand_resource", True),
    ],
)
def test_coercions(field, value, column, expected):
    row = one([{"job_id": "j", "create_time": CREATED_S, field: value}])
    assert row[column] == expected


def test_nested_status_coercion_and_expire_time_forms():
    rec = {
        "job_id": "j",
        "create_time": CREATED_S,
        "assess_result": {"snr": {"status": "2"}},
        "allocated_resource": {"expire_time": "2026-01-10 08:43:17"},
    }
    row = one([rec])
    assert row["assess_result_snr_status"] == 2
    assert row["allocated_resource_expire_time"] == datetime(2026, 1, 10, 8, 43, 17, tzinfo=UTC)


def test_unparseable_expire_time_is_kept_in_extra_not_quarantined():
    rec = full_record()
    rec["allocated_resource"]["expire_time"] = "next year"
    row = one([rec])
    assert row["allocated_resource_expire_time"] is None
    assert json.loads(row["extra"]) == {"allocated_resource": {"expire_time": "next year"}}
    assert row["allocated_resource_resource_id"] == "res-1"


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"reject_times": "abc"}, "reject_times: invalid non-numeric string (expected int32)"),
        ({"reject_times": 2.5}, "reject_times: invalid number with a fraction (expected int32)"),
        ({"reject_times": True}, "reject_times: invalid boolean (expected int32)"),
        ({"reject_times": 2**31}, "reject_times: invalid integer out of int32 range (expected int32)"),
        ({"create_time": "yesterday"}, "create_time: invalid string that is neither an epoch nor RFC 3339"),
        ({"create_time": None}, "create_time: missing"),
        ({"create_time": -5}, "create_time: invalid number out of the epoch range"),
        ({"lastupdate_time": {"t": 1}}, "lastupdate_time: invalid object (expected epoch timestamp)"),
        ({"state": 3}, "state: invalid integer (expected string)"),
        ({"state": {"code": "X"}}, "state: invalid object (expected string)"),
        ({"is_remake": "maybe"}, "is_remake: invalid string that is not a boolean (expected boolean)"),
        ({"is_remake": 2}, "is_remake: invalid integer (expected boolean)"),
        ({"allocated_resource": "res-1"}, "allocated_resource: invalid string (expected object)"),
        ({"assess_result": [1]}, "assess_result: invalid array (expected object)"),
        ({"assess_result": {"snr": 7}}, "assess_result.snr: invalid integer (expected object)"),
        (
            {"assess_result": {"snr": {"status": "ok"}}},
            "assess_result.snr.status: invalid non-numeric string",
        ),
        ({"job_id": None}, "job_id: missing"),
        ({"job_id": ""}, "job_id: missing"),
        ({"job_id": 42}, "job_id: invalid integer (expected string)"),
    ],
)
def test_quarantine_reasons(patch, reason):
    good = {"job_id": "good", "create_time": CREATED_S}
    bad = {"job_id": "bad", "create_time": CREATED_S} | patch
    out = normalize([good, bad], "proj", SYNCED)
    assert out.table["job_id"].to_pylist() == ["good"]
    assert len(out.quarantine) == 1
    q = out.quarantine[0]
    assert q.project_id == "proj"
    assert reason in q.reason
    assert json.loads(q.raw_record) == bad
    expected_id = {None: None, "": None, 42: "42"}.get(patch.get("job_id", "bad"), "bad")
    assert q.job_id == expected_id


def test_every_offending_field_is_named_and_record_level_errors():
    out = normalize(
        [{"job_id": "x", "create_time": "never", "state": 1}, ["not", "an", "object"], "text"], "proj", SYNCED
    )
    assert out.table.num_rows == 0
    assert out.table.schema.equals(JOBS_SCHEMA)
    reasons = sorted(q.reason for q in out.quarantine)
    assert reasons[:2] == [
        "record: invalid array (expected object)",
        "record: invalid string (expected object)",
    ]
    assert sorted(reasons[2].split("; ")) == [
        "create_time: invalid string that is neither an epoch nor RFC 3339 (expected epoch timestamp)",
        "state: invalid integer (expected string)",
    ]


def test_quarantine_raw_record_follows_the_personal_data_policy():
    rec = full_record() | {"reject_times": "many"}
    masked = normalize([rec], "proj", SYNCED).quarantine[0]
    raw = json.loads(masked.raw_record)
    assert raw["phone"] == "**********5678"
    assert raw["voice_authorization_url"] == "https://obs.example.com/auth/a.pdf"
    assert "Signature" not in masked.raw_record and "8613812" not in masked.raw_record
    clear = normalize([rec], "proj", SYNCED, personal_data="raw").quarantine[0]
    assert json.loads(clear.raw_record) == rec
    numeric_phone = normalize([{"job_id": "n", "create_time": 1, "phone": 8613812345678}], "p", SYNCED)
    assert json.loads(numeric_phone.quarantine[0].raw_record)["phone"] == "*********5678"


def test_duplicates_newest_lastupdate_wins_then_the_later_record():
    base = {"create_time": CREATED_S}
    recs = [
        base | {"job_id": "a", "lastupdate_time": CREATED_S + 10, "state": "new"},
        base | {"job_id": "a", "lastupdate_time": CREATED_S + 5, "state": "old"},
        base | {"job_id": "b", "lastupdate_time": CREATED_S, "state": "first"},
        base | {"job_id": "b", "lastupdate_time": CREATED_S, "state": "second"},
        base | {"job_id": "c", "state": "null-lut"},
        base | {"job_id": "c", "lastupdate_time": CREATED_S, "state": "dated"},
        base | {"job_id": "c", "state": "null-again"},
    ]
    out = normalize(recs, "proj", SYNCED)
    assert out.duplicates == 4
    assert {r["job_id"]: r["state"] for r in out.table.to_pylist()} == {
        "a": "new",
        "b": "second",
        "c": "dated",
    }


def test_input_is_not_modified():
    rec = full_record() | {"unknown": {"k": 1}}
    before = copy.deepcopy(rec)
    normalize([rec], "proj", SYNCED)
    assert rec == before


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="timezone-aware"):
        normalize([], "proj", datetime(2025, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="project_id"):
        normalize([], "", SYNCED)
    empty = normalize([], "proj", SYNCED)
    assert empty.table.num_rows == 0 and empty.table.schema.equals(JOBS_SCHEMA)


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+8613812345678", "**********5678"),
        ("12345", "*2345"),
        ("1234", "****"),
        ("", ""),
        (" 138 0013 8000 ", "*********8000"),
    ],
)
def test_mask_phone(phone, masked):
    assert mask_phone(phone) == masked


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        ("https://bucket.obs.cn-north-4.myhuaweicloud.com/a/b.wav?AccessKeyId=AK&Expires=1&Signature=S",
         "https://bucket.obs.cn-north-4.myhuaweicloud.com/a/b.wav"),
        ("https://h/p#token=abc", "https://h/p"),
        ("https://h/p#frag?x=1", "https://h/p"),
        ("https://user:secret@h:9000/p?q", "https://h:9000/p"),
        ("https://h/path/with@sign", "https://h/path/with@sign"),
        ("https://h/plain.zip", "https://h/plain.zip"),
        ("obs://bucket/key?sig=1", "obs://bucket/key"),
    ],
)  # fmt: skip
def test_strip_url_credentials(url, stripped):
    assert strip_url_credentials(url) == stripped


def test_a_column_of_urls_is_stripped_as_each_url_is():
    """The ingestion's column-at-a-time cut gives what strip_url_credentials gives each value,
    with and without user-info left after the cut, and NULLs staying NULL."""
    urls = [
        "https://bucket.obs.cn-north-4.myhuaweicloud.com/a/b.wav?AccessKeyId=AK&Expires=1&Signature=S%3D",
        "https://h/p#token=abc", "https://h/p#frag?x=1", "https://h/p?x=1#frag", "https://h/p?a@b#c@d",
        "https://h/path/with@sign", "https://h/plain.zip", "obs://bucket/key?sig=1", "", "?only", "#only",
        "https://h/\u00e9t\u00e9?\u00e9=1", "https://h/line\nbreak?x=\n1", None,
    ]
    without_user_info = pa.array(urls, pa.string())
    assert _stripped_urls(without_user_info).to_pylist() == [
        None if u is None else strip_url_credentials(u) for u in urls]
    with_user_info = pa.array([*urls, "https://user:secret@h:9000/p?q", "ftp://a@b@h/x#y"], pa.string())
    assert _stripped_urls(with_user_info).to_pylist() == [
        None if u is None else strip_url_credentials(u) for u in with_user_info.to_pylist()]
    assert _stripped_urls(with_user_info)[-2].as_py() == "https://h:9000/p"
    assert _stripped_urls(pa.array([None, None], pa.string())).to_pylist() == [None, None]


def test_a_batch_with_one_bad_row_keeps_the_rest_intact():
    recs = [full_record(f"job-{i}") for i in range(50)]
    recs[17]["reject_times"] = "lots"
    recs[31]["create_time"] = None
    out = normalize(recs, "proj", SYNCED)
    assert sorted(q.job_id for q in out.quarantine) == ["job-17", "job-31"]
    assert out.table.num_rows == 48
    assert set(out.table["reject_times"].to_pylist()) == {2}
    assert out.table["job_id"].to_pylist() == [f"job-{i}" for i in range(50) if i not in (17, 31)]


def test_values_past_64_bits_do_not_break_normalize():
    out = normalize(
        [{"job_id": "a", "create_time": CREATED_S, "big": 2**70}, {"job_id": "b", "create_time": 2**70}],
        "proj",
        SYNCED,
    )
    assert out.table.to_pylist()[0]["extra"] == '{"big":1180591620717411303424}'
    assert [q.job_id for q in out.quarantine] == ["b"]
    assert "create_time: invalid number out of the epoch range" in out.quarantine[0].reason
    assert json.loads(out.quarantine[0].raw_record)["create_time"] == 2**70


@pytest.mark.parametrize("size", [3, 2500])  # small batches convert columns together, large ones apart
def test_batch_sizes_give_the_same_rows(size):
    recs = [
        full_record(f"job-{i}") | {"reject_times": i % 10, "lastupdate_time": CREATED_S + i}
        for i in range(size)
    ]
    recs[-1]["assess_result"]["snr"]["status"] = "broken"
    out = normalize(recs, "proj", SYNCED)
    assert [q.job_id for q in out.quarantine] == [f"job-{size - 1}"]
    rows = out.table.to_pylist()
    assert len(rows) == size - 1
    expected_first = normalize([recs[0]], "proj", SYNCED).table.to_pylist()[0]
    assert rows[0] == expected_first
    assert [r["reject_times"] for r in rows] == [i % 10 for i in range(size - 1)]
    assert rows[-1]["lastupdate_time"] == datetime.fromtimestamp(CREATED_S + size - 2, UTC)
