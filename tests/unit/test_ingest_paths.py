"""The fast path of normalization gives exactly what the rules give, or declines.

`pipelines.ingest.normalize` takes a window through `normalize_fast` (records converted to
Arrow in C, checked as columns) and falls back to `normalize_by_rules` when the fast path
declines. Here both run over the same records, simulator windows with every quirk the
simulator can serve and hand-made records at each rule's edge, and must agree row for row
(and the dispatcher's quarantine must equal the rules'). Each case also says whether the fast
path must have taken it, so a fast path that silently declines everything fails too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest

from pipelines.contract import WireJob
from pipelines.ingest import normalize, normalize_windows
from pipelines.ingest.arrow import normalize_fast
from pipelines.ingest.rules import normalize_by_rules
from pipelines.ingest.wire import normalize_wire
from pipelines.metastudio.response import parse_page
from pipelines.metastudio.retry import Retryable
from pipelines.simulator import SimulatorConfig, SimulatorState
from pipelines.simulator.quirks import QUIRKS, corrupt_page

SYNCED = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def assert_same(records: list, *, fast: bool | None, personal_data: str = "mask") -> None:
    """normalize() equals the rules; the fast path, when it answers, equals them too."""
    rules = normalize_by_rules(records, "p1", SYNCED, personal_data=personal_data)
    chosen = normalize(records, "p1", SYNCED, personal_data=personal_data)
    assert chosen.table.equals(rules.table, check_metadata=True)
    assert chosen.quarantine == rules.quarantine
    assert chosen.duplicates == rules.duplicates
    quick = normalize_fast(records, "p1", SYNCED, personal_data)
    if quick is not None:
        assert quick.table.to_pylist() == rules.table.to_pylist()
        assert quick.table.schema.equals(rules.table.schema)
        assert quick.duplicates == rules.duplicates and not rules.quarantine
    if fast is not None:
        assert (quick is not None) == fast


def assert_same_from_bytes(body: bytes, *, wire: bool | None = None, personal_data: str = "mask") -> None:
    """A page's jobs as paging leaves them (WireJobs: their bytes, three fields decoded) normalize
    exactly as the same jobs decoded whole, alone and grouped; ``wire``: whether the way from the
    bytes must have taken them."""
    decoded = orjson.loads(body)["jobs"]
    jobs = parse_page(body, None, lean=True).jobs
    expected = normalize(decoded, "p1", SYNCED, personal_data=personal_data)
    got = normalize(jobs, "p1", SYNCED, personal_data=personal_data)
    assert got.table.equals(expected.table, check_metadata=True)
    assert (got.quarantine, got.duplicates) == (expected.quarantine, expected.duplicates)
    half = len(jobs) // 2
    for got, expected in zip(normalize_windows([jobs[:half], jobs[half:]], "p1", SYNCED, personal_data=personal_data),
                             normalize_windows([decoded[:half], decoded[half:]], "p1", SYNCED,
                                               personal_data=personal_data), strict=True):
        assert got.table.equals(expected.table, check_metadata=True)
        assert (got.quarantine, got.duplicates) == (expected.quarantine, expected.duplicates)
    if wire is not None:
        assert all(type(job) is WireJob for job in jobs)
        assert (normalize_wire(jobs, "p1", SYNCED, personal_data) is not None) == wire


def _bodies(quirks: tuple[str, ...], days: int = 6) -> list[bytes]:
    state = SimulatorState(SimulatorConfig(jobs=3_000, seed=11, days=days, now=NOW))
    truth = sorted(state.truth("sim-project"), key=lambda job: job["create_time"])
    return [corrupt_page(orjson.dumps({"count": 250, "jobs": truth[start:start + 250]}), quirks)
            for start in range(0, len(truth), 250)]


def _windows(quirks: tuple[str, ...], days: int = 6) -> list[list]:
    return [orjson.loads(body)["jobs"] for body in _bodies(quirks, days)]


def test_plain_simulator_windows_take_the_fast_path_and_agree():
    windows = _windows(())
    assert len(windows) >= 10
    for records in windows:
        assert_same(records, fast=True)
    # Unknown keys (the simulator sends some on about 1% of jobs) stay on the fast path.
    assert any(any("voice_style" in r for r in records) for records in windows)


def test_plain_simulator_pages_are_normalized_from_their_bytes_and_agree():
    bodies = _bodies(())
    for body in bodies:
        assert_same_from_bytes(body, wire=True)
    # Unknown keys (about 1% of jobs) stay on the way from the bytes, their values decoded.
    assert any(b"voice_style" in body for body in bodies)


@pytest.mark.parametrize("quirk", QUIRKS)
def test_every_quirk_gives_the_same_rows_from_the_bytes(quirk):
    for body in _bodies((quirk,)):
        try:
            parse_page(body, None)
        except Retryable:
            continue  # no page: paging retries it
        assert_same_from_bytes(body)
        assert_same_from_bytes(body, personal_data="raw")


@pytest.mark.parametrize("quirk", QUIRKS)
def test_every_quirk_gives_the_rules_result(quirk):
    windows = _windows((quirk,))
    for records in windows:
        assert_same(records, fast=None)
        assert_same(records, fast=None, personal_data="raw")


def test_all_quirks_at_once():
    for records in _windows(QUIRKS):
        assert_same(records, fast=None)


def base(job_id: str = "j1", **fields) -> dict:
    record = {
        "job_id": job_id, "job_type": "BASIC", "state": "SUCCEED", "create_time": 1736498597000,
        "lastupdate_time": 1736498697000, "reject_times": 1, "phone": "+8613812345678",
        "voice_authorization_url": "https://obs.example.com/a.wav?Signature=x",
        "allocated_resource": {"resource_id": "r1", "charge_mode": "ONE_TIME", "expire_time": "2026-01-01T00:00:00Z"},
        "assess_result": {"speed": {"expected": "3-5", "actual": "4", "status": 0}, "suggestion": "ok"},
        "is_remake": False,
    }
    record.update(fields)
    return record


# (name, records, must the fast path take them)
EDGES = [
    ("clean", [base("a"), base("b")], True),
    ("epoch seconds", [base(create_time=1736498597, lastupdate_time=1736498697)], True),
    ("whole floats", [base(reject_times=3.0, create_time=1736498597.0)], True),
    ("fraction in an integer", [base(reject_times=3.5)], False),
    ("fraction in an epoch", [base(create_time=1736498597.5)], False),
    ("fractional milliseconds", [base(create_time=1736498597000.4)], False),
    ("boolean in an integer", [base(reject_times=True)], False),
    ("boolean in a status", [base(assess_result={"speed": {"status": False}})], False),
    ("number as a string", [base(reject_times="3")], False),
    ("int32 overflow", [base(reject_times=2**31)], False),
    ("epoch out of range", [base(create_time=-5)], False),
    ("huge integer", [base(create_time=2**70)], False),
    ("number where a string belongs", [base(state=3)], False),
    ("0/1 as booleans", [base(is_remake=1)], False),
    ("string booleans", [base(is_remake="true")], False),
    ("missing job_id", [base("a"), {k: v for k, v in base().items() if k != "job_id"}], False),
    ("empty job_id", [base("")], False),
    ("missing create_time", [{k: v for k, v in base().items() if k != "create_time"}], False),
    ("a record that is not an object", [base("a"), ["not", "an", "object"]], False),
    ("allocated_resource not an object", [base(allocated_resource="r1")], False),
    ("assess property not an object", [base(assess_result={"speed": 5})], False),
    ("unparseable expiry", [base(allocated_resource={"expire_time": "next tuesday"})], False),
    ("offset-less expiry", [base(allocated_resource={"expire_time": "2026-01-01T00:00:00"})], False),
    ("unknown top-level keys", [base("a", new_field=1, other={"x": "https://h/p?sig=1"}), base("b")], True),
    ("null-valued unknown key", [base("a", ghost=None), base("b")], True),
    ("unknown nested keys", [base(allocated_resource={"zone": "cn-1"},
                                  assess_result={"speed": {"status": 1, "extra_metric": 2.5}, "pitch": {"a": 1}})], True),
    ("unknown key holding a phone", [base(reviewer_phone="+86 138 1234 5678")], True),
    ("null objects", [base(allocated_resource=None, assess_result=None)], True),
    ("empty objects", [base(allocated_resource={}, assess_result={})], True),
    ("url with user-info", [base(voice_authorization_url="https://u:p@h.example.com/a?x=1")], True),
    ("url with a fragment before the query", [base(voice_authorization_url="https://h/a#frag?x=1")], True),
    ("url with @ in the path", [base(voice_authorization_url="https://h/a@b/c?x")], True),
    ("short phone", [base(phone=" 123 ")], True),
    ("nulls everywhere", [{"job_id": "n", "create_time": 1736498597000}], True),
    ("duplicates, newest wins", [base("a", lastupdate_time=2_000_000_000_000, state="X"),
                                 base("a", lastupdate_time=1_000_000_000_000, state="Y")], True),
    ("duplicates, a missing time is oldest", [base("a", lastupdate_time=None, state="X"), base("a", state="Y"),
                                              base("a", lastupdate_time=None, state="Z")], True),
    ("duplicates, equal times: the later wins", [base("a", state="X"), base("a", state="Y")], True),
    ("non-ASCII text", [base(voice_name="晓晓 (calm)", phone="+86 138-1234-5678")], True),
]


@pytest.mark.parametrize(("records", "fast"), [pytest.param(r, f, id=name) for name, r, f in EDGES])
def test_edge_records(records, fast):
    assert_same(records, fast=fast)
    assert_same(records, fast=None, personal_data="raw")


@pytest.mark.parametrize("records", [pytest.param(r, id=name) for name, r, _ in EDGES])
def test_edge_records_from_their_bytes(records):
    # The standard encoder: it writes integers past 64 bits, and non-ASCII text as escapes.
    body = json.dumps({"count": len(records), "jobs": records}).encode()
    try:
        parse_page(body, None)
    except Retryable:
        return  # not a page (a job that is not an object): paging retries it
    assert_same_from_bytes(body)
    assert_same_from_bytes(body, personal_data="raw")


# Pages as bytes no encoder of ours writes: (name, body, must the way from the bytes take it).
_J = b'"create_time":1736498597000,"state":"SUCCEED"'
BYTE_EDGES = [
    ("an unknown key written with escapes, null", b'{"count":2,"jobs":[{"job_id":"a",' + _J
     + rb',"\u0067host":null},{"job_id":"b",' + _J + b'}]}', True),
    ("a known key written with escapes", rb'{"count":1,"jobs":[{"\u006aob_id":"a",' + _J + b'}]}', True),
    ("a nested unknown key, null", b'{"count":1,"jobs":[{"job_id":"a",' + _J
     + b',"allocated_resource":{"zone":null},"assess_result":{"speed":{"x":null}}}]}', True),
    ("an unknown key's name as a value", b'{"count":2,"jobs":[{"job_id":"a",' + _J + b',"tag":"ghost"},{"job_id":"b",'
     + _J + b',"ghost":null}]}', True),
    # Needles are looked for in a group's joined bytes: in the first and the last job, twice in one.
    ("a null-valued unknown key in the first and the last job", b'{"count":3,"jobs":[{"job_id":"a",' + _J
     + b',"ghost":null},{"job_id":"b",' + _J + b'},{"job_id":"c",' + _J + b',"tag":"ghost","ghost":null}]}', True),
    ("an unknown key written with escapes in the last job only, null", b'{"count":3,"jobs":[{"job_id":"a",' + _J
     + b',"new_field":1},{"job_id":"b",' + _J + b'},{"job_id":"c",' + _J + rb',"\u0067host":null}]}', True),
    ("a job over several lines", b'{"count":1,"jobs":[{"job_id":"a",\n' + _J + b'}]}', False),
    ("a key given twice", b'{"count":1,"jobs":[{"job_id":"a",' + _J + b',"state":"FAILED"}]}', False),
    ("pretty-printed", orjson.dumps({"count": 1, "jobs": [base("a", ghost=None)]}, option=orjson.OPT_INDENT_2), False),
]


@pytest.mark.parametrize(("body", "wire"), [pytest.param(b, w, id=name) for name, b, w in BYTE_EDGES])
def test_bytes_no_encoder_of_ours_writes(body, wire):
    assert_same_from_bytes(body, wire=wire)


def test_an_empty_window():
    assert_same([], fast=True)


def _same_results(windows: list[list], personal_data: str = "mask") -> None:
    one_by_one = [normalize(w, "p1", SYNCED, personal_data=personal_data) for w in windows]
    together = normalize_windows(windows, "p1", SYNCED, personal_data=personal_data)
    assert len(together) == len(windows)
    for alone, grouped in zip(one_by_one, together, strict=True):
        assert grouped.table.to_pylist() == alone.table.to_pylist()
        assert grouped.table.schema.equals(alone.table.schema)
        assert grouped.quarantine == alone.quarantine
        assert grouped.duplicates == alone.duplicates


def test_windows_normalized_together_equal_each_alone():
    windows = _windows(())
    _same_results(windows)
    _same_results(windows, personal_data="raw")


def test_a_job_in_two_windows_keeps_a_row_in_each():
    # Two adjacent windows both list the job at their shared instant, in different versions.
    windows = [[base("a"), base("m", state="X")], [base("m", state="Y", lastupdate_time=1736498000000), base("b")]]
    _same_results(windows)
    together = normalize_windows(windows, "p1", SYNCED)
    assert [r["state"] for r in together[0].table.to_pylist()] == ["SUCCEED", "X"]
    assert [r["state"] for r in together[1].table.to_pylist()] == ["Y", "SUCCEED"]


@pytest.mark.parametrize(("records", "fast"), [pytest.param(r, f, id=name) for name, r, f in EDGES])
def test_a_window_the_fast_path_declines_among_others(records, fast):
    _same_results([[base("x1"), base("x2")], records, [base("y1")], []])
