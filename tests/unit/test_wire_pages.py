"""Pages read for paging only (WireJobs: three fields decoded, each job's bytes kept) say what the
full decoding says, and leave it every page they cannot take as documented."""

from __future__ import annotations

import orjson
import pytest

from pipelines.contract import WireJob, full_record
from pipelines.metastudio.response import parse_page
from pipelines.metastudio.retry import Retryable

JOB = {"job_id": "a", "create_time": 1736498597000, "lastupdate_time": 1736498697000, "state": "SUCCEED",
       "assess_result": {"speed": {"status": 1}}, "voice_style": None}


def test_a_documented_page_is_read_lean_and_says_what_the_full_decoding_says():
    body = orjson.dumps({"count": 7, "jobs": [JOB, {"job_id": "b", "create_time": 1736498597}]})
    lean, full = parse_page(body, None, lean=True), parse_page(body, None)
    assert lean.count == full.count == 7
    assert all(type(job) is WireJob for job in lean.jobs)
    # Paging's fields, only those the job has; the rest stays in the bytes.
    assert lean.jobs[0] == {"job_id": "a", "create_time": 1736498597000, "lastupdate_time": 1736498697000}
    assert lean.jobs[1] == {"job_id": "b", "create_time": 1736498597}
    assert [full_record(job) for job in lean.jobs] == full.jobs


@pytest.mark.parametrize("body", [
    pytest.param(orjson.dumps({"count": 1, "jobs": [{**JOB, "create_time": "2025-01-10T08:43:17Z"}]}),
                 id="a time as text"),
    pytest.param(orjson.dumps({"count": 1, "jobs": [{**JOB, "job_id": 17}]}), id="a numeric job_id"),
    pytest.param(orjson.dumps({"count": 1, "jobs": [{**JOB, "lastupdate_time": 1.5}]}), id="a fraction"),
    pytest.param(b'{"count":1,"jobs":[{"job_id":"a","create_time":99999999999999999999}]}', id="past 64 bits"),
    pytest.param(orjson.dumps({"count": 0}), id="no jobs, none counted"),
])
def test_a_page_the_lean_reading_cannot_take_is_decoded_whole(body):
    lean, full = parse_page(body, None, lean=True), parse_page(body, None)
    assert not any(type(job) is WireJob for job in lean.jobs)
    assert (lean.count, lean.jobs) == (full.count, full.jobs)


@pytest.mark.parametrize("body", [
    pytest.param(b'{"count":true,"jobs":[]}', id="a boolean count"),
    pytest.param(b'{"count":-1,"jobs":[]}', id="a negative count"),
    pytest.param(b'{"count":2}', id="jobs counted, none listed"),
    pytest.param(b'{"count":1,"jobs":[{"job_id":"\xff"}]}', id="not UTF-8"),
    # In a value paging does not decode (its bytes are kept): each way UTF-8 can be broken.
    *(pytest.param(b'{"count":1,"jobs":[{"job_id":"a","voice_name":"' + bad + b'"}]}', id=f"not UTF-8 kept: {name}")
      for name, bad in [("a lone continuation byte", b"\x80"), ("a surrogate", b"\xed\xa0\x80"),
                        ("an overlong form", b"\xc0\xaf"), ("past U+10FFFF", b"\xf4\x90\x80\x80"),
                        ("a sequence cut short", b"\xe6\x99"), ("a lead byte never used", b"\xf8\x88\x80\x80\x80")]),
    pytest.param(b'{"count":1,"jobs":[{"job_id":"a"}]', id="truncated"),
    pytest.param(b'{"count":1,"jobs":[5]}', id="a job that is not an object"),
])
def test_a_malformed_page_fails_as_it_does_decoded_whole(body):
    with pytest.raises(Retryable) as full:
        parse_page(body, None)
    with pytest.raises(Retryable) as lean:
        parse_page(body, None, lean=True)
    assert (lean.value.cause, lean.value.detail) == (full.value.cause, full.value.detail)

