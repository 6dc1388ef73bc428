"""Rendering: a job's row as the JSON object the API serves, and as the bytes it sends.

:meth:`Renderer.records` builds the readable reference objects; :meth:`Renderer.serialize`
builds the same objects' bytes from pre-encoded fragments at a fraction of the cost (a test
holds the two together). Served bytes are cached per row in the table's ``blobs``.
"""

from __future__ import annotations

import numpy as np
import orjson

from . import catalog as C
from .details import (
    PHONE_FORMAT,
    STYLES,
    W_ACTUAL,
    W_ASSET,
    W_AUTH_URL,
    W_DHTMS_HI,
    W_DHTMS_LO,
    W_EXTRA,
    W_INPUT_URL,
    W_PHONE,
    W_RESOURCE,
    W_STATUS,
    WORDS,
    assess,
    presigned,
    rfc3339_seconds,
    storage_hosts,
    word,
    words,
)
from .table import (
    APP_USERS,
    COLUMNS,
    F_ASSESS,
    F_DHTMS,
    F_EXTRA,
    F_NULLS,
    F_PHONE,
    F_SIGNED_AUTH,
    F_SIGNED_INPUT,
    FAILED,
    SUCCEED,
    JobTable,
)

_NULLABLE = ("asset_id", "job_failed_code", "job_failed_reason", "tag", "batch_name", "dhtms_job_id", "phone")


def _json_text(value: str) -> str:
    """``value`` escaped for use inside a JSON string (without the quotes)."""
    return orjson.dumps(value).decode()[1:-1]


def _fragments(key: str, values, *, absent: bool = True) -> tuple[str, ...]:
    """``,"key":<value>`` per code; with ``absent`` a last "" entry, so code -1 yields nothing."""
    encoded = tuple(f',"{key}":{orjson.dumps(value).decode()}' for value in values)
    return encoded + ("",) if absent else encoded


_J_JOB_TYPE = _fragments("job_type", C.JOB_TYPES, absent=False)
_J_APP_USER = _fragments("app_user_id", APP_USERS)
_J_VOICE = _fragments("voice_name", C.VOICE_NAMES, absent=False)
_J_SEX = _fragments("sex", C.SEXES)
_J_LANGUAGE = _fragments("language", C.LANGUAGES)
_J_LANGUAGE_OUT = _fragments("output_language", C.LANGUAGES)
_J_STATE = _fragments("state", C.STATES, absent=False)
_J_FAILURE = tuple(
    f',"job_failed_code":{orjson.dumps(code).decode()},"job_failed_reason":{orjson.dumps(reason).decode()}'
    for code, reason in C.FAILURES
)
_J_CREATE_TYPE = _fragments("create_type", C.CREATE_TYPES, absent=False)
_J_TAG = _fragments("tag", C.TAGS)
_J_BATCH = _fragments("batch_name", C.BATCH_NAMES)
_J_CHARGE = _fragments("charge_mode", C.CHARGE_MODES, absent=False)
_J_REMAKE = _fragments("is_remake", (False, True))
_J_ONDEMAND = _fragments("is_ondemand_resource", (False, True))
_J_REJECT = tuple(f',"reject_times":{n}' for n in range(128))
_J_STYLES = tuple(orjson.dumps(style).decode() for style in STYLES)
_PERIODIC, _ON_DEMAND = C.CHARGE_MODES.index("PERIODIC"), C.CHARGE_MODES.index("ON_DEMAND")


class Renderer:
    """Records and served bytes of a table's rows; ``projects`` in project-code order."""

    def __init__(self, table: JobTable, projects: tuple[str, ...]) -> None:
        self._table = table
        self._hosts = [storage_hosts(p) for p in projects]
        self._json_hosts = [[_json_text(host) for host in pair] for pair in self._hosts]

    def records(self, rows: list[int]) -> list[dict]:
        """The JSON objects of ``rows`` as the API serves them (the readable reference)."""
        if not rows:
            return []
        idx = np.asarray(rows, dtype=np.int64)
        columns = [self._table.cols[name][idx].tolist() for name in COLUMNS]
        return [
            record(dict(zip(COLUMNS, values, strict=True)), self._hosts)
            for values in zip(*columns, strict=True)
        ]

    def serialize(self, rows: list[int]) -> list[bytes]:
        """JSON bytes of ``rows``: the objects of :meth:`records`, built from pre-encoded fragments."""
        jobs = _Batch(self._table, rows)
        parts = zip(
            _head_texts(jobs),
            _time_and_url_texts(jobs, self._json_hosts),
            _contact_texts(jobs),
            _resource_texts(jobs),
            _tail_texts(jobs),
            _null_and_extra_texts(jobs),
            strict=True,
        )
        return [f"{a}{b}{c}{d}{e}{f}}}".encode() for a, b, c, d, e, f in parts]

    def blobs_for(self, rows: list[int]) -> list[bytes]:
        """Served bytes of ``rows``, serializing (and caching) those not cached yet."""
        blobs = self._table.blobs
        missing = [row for row in rows if blobs[row] is None]
        if missing:
            for row, blob in zip(missing, self.serialize(missing), strict=True):
                blobs[row] = blob
        return [blobs[row] for row in rows]  # type: ignore[misc]


# ------------------------------------------------------------------------ reference record
def record(job: dict, hosts: list[list[str]]) -> dict:
    """One job's JSON object (``job``: column name -> value); every free-text detail derives
    from the row's salt."""
    salt, id_lo, state_code, failure = job["salt"], job["id_lo"], job["state"], job["failure"]
    job_id = f"{job['id_hi']:016x}{id_lo:016x}"
    rec = _record_head(job, job_id)
    asset_word = word(salt, W_ASSET)
    if state_code == SUCCEED:
        rec["asset_id"] = f"{asset_word:016x}{id_lo ^ asset_word:016x}"
    if failure >= 0 and state_code == FAILED:
        rec["job_failed_code"], rec["job_failed_reason"] = C.FAILURES[failure]
    create_ms, update_ms = job["create_ms"], job["update_ms"]
    if job["secs"]:
        rec["create_time"], rec["lastupdate_time"] = create_ms // 1000, update_ms // 1000
    else:
        rec["create_time"], rec["lastupdate_time"] = create_ms, update_ms
    host = hosts[job["project"]][asset_word & 1]
    expires = create_ms // 1000 + 7 * 86400
    url = f"{host}/voice-authorization/{job_id}/authorization.mp4"
    if job["flags"] & F_SIGNED_AUTH:
        url += presigned(word(salt, W_AUTH_URL), expires)
    rec["voice_authorization_url"] = url
    url = f"{host}/training-input/{job_id}/corpus.zip"
    if job["flags"] & F_SIGNED_INPUT:
        url += presigned(word(salt, W_INPUT_URL), expires)
    rec["training_input_source_url"] = url
    rec["create_type"] = C.CREATE_TYPES[job["create_type"]]
    _record_details(rec, job, asset_word)
    return rec


def _record_head(job: dict, job_id: str) -> dict:
    rec: dict = {"job_id": job_id, "job_type": C.JOB_TYPES[job["job_type"]]}
    if job["app_user"] >= 0:
        rec["app_user_id"] = APP_USERS[job["app_user"]]
    rec["voice_name"] = C.VOICE_NAMES[job["voice"]]
    if job["sex"] >= 0:
        rec["sex"] = C.SEXES[job["sex"]]
    if job["language"] >= 0:
        rec["language"] = C.LANGUAGES[job["language"]]
    rec["state"] = C.STATES[job["state"]]
    if job["reject"] > 0:
        rec["reject_times"] = job["reject"]
    return rec


def _record_details(rec: dict, job: dict, asset_word: int) -> None:
    """The optional fields after ``create_type``, the nulls and the unknown extras."""
    salt, flags = job["salt"], job["flags"]
    if job["tag"] >= 0:
        rec["tag"] = C.TAGS[job["tag"]]
    if flags & F_PHONE:
        language = C.LANGUAGES[job["language"]] if job["language"] >= 0 else None
        prefix, digits = PHONE_FORMAT.get(language, PHONE_FORMAT[None])
        rec["phone"] = f"{prefix}{word(salt, W_PHONE) % 10**digits:0{digits}d}"
    if flags & F_DHTMS:
        rec["dhtms_job_id"] = f"{word(salt, W_DHTMS_HI):016x}{word(salt, W_DHTMS_LO):016x}"
    if job["batch"] >= 0:
        rec["batch_name"] = C.BATCH_NAMES[job["batch"]]
    if job["charge"] >= 0:
        mode = C.CHARGE_MODES[job["charge"]]
        resource = {
            "resource_id": f"{word(salt, W_RESOURCE) >> 16:012x}{asset_word >> 32:08x}",
            "charge_mode": mode,
        }
        if mode != "ON_DEMAND":
            lifetime = 365 if mode == "PERIODIC" else 30
            resource["expire_time"] = rfc3339_seconds(job["create_ms"] // 1000 + lifetime * 86400)
        rec["allocated_resource"] = resource
    if job["output_language"] >= 0:
        rec["output_language"] = C.LANGUAGES[job["output_language"]]
    if job["remake"] >= 0:
        rec["is_remake"] = job["remake"] == 1
    if flags & F_ASSESS:
        rec["assess_result"] = assess(word(salt, W_STATUS), word(salt, W_ACTUAL), flags)
    if job["ondemand"] >= 0:
        rec["is_ondemand_resource"] = job["ondemand"] == 1
    if flags & F_NULLS:
        for name in _NULLABLE:
            rec.setdefault(name, None)
    if flags & F_EXTRA:
        extra = word(salt, W_EXTRA)
        rec["voice_style"] = STYLES[extra & 3]
        rec["quality_score"] = (extra >> 8) % 1000 / 1000


# --------------------------------------------------------------------------- fast bytes
class _Batch:
    """The columns of the rows being serialized as Python lists, their job ids and their words."""

    def __init__(self, table: JobTable, rows: list[int]) -> None:
        idx = np.asarray(rows, dtype=np.int64)
        cols = table.cols
        for name in COLUMNS:
            if name not in ("salt", "deleted"):
                setattr(self, name, cols[name][idx].tolist())
        self.job_id = [f"{hi:016x}{lo:016x}" for hi, lo in zip(self.id_hi, self.id_lo, strict=True)]
        salt = cols["salt"][idx]
        self.words = [words(salt, slot) for slot in range(WORDS)]


def _head_texts(jobs: _Batch) -> list[str]:
    """``{"job_id":..`` up to the failure: identity, voice, state, rejections, asset."""
    out = []
    for job_id, job_type, app_user, voice, sex, language, state, reject, failure, lo, w_asset in zip(
        jobs.job_id,
        jobs.job_type,
        jobs.app_user,
        jobs.voice,
        jobs.sex,
        jobs.language,
        jobs.state,
        jobs.reject,
        jobs.failure,
        jobs.id_lo,
        jobs.words[W_ASSET],
        strict=True,
    ):
        asset = f',"asset_id":"{w_asset:016x}{lo ^ w_asset:016x}"' if state == SUCCEED else ""
        out.append(
            f'{{"job_id":"{job_id}"{_J_JOB_TYPE[job_type]}{_J_APP_USER[app_user]}{_J_VOICE[voice]}'
            f"{_J_SEX[sex]}{_J_LANGUAGE[language]}{_J_STATE[state]}"
            f"{_J_REJECT[reject] if reject > 0 else ''}{asset}"
            f"{_J_FAILURE[failure] if failure >= 0 and state == FAILED else ''}"
        )
    return out


def _time_and_url_texts(jobs: _Batch, hosts: list[list[str]]) -> list[str]:
    out = []
    for job_id, project, create_ms, update_ms, secs, flags, w_asset, w_auth, w_input in zip(
        jobs.job_id,
        jobs.project,
        jobs.create_ms,
        jobs.update_ms,
        jobs.secs,
        jobs.flags,
        *jobs.words[W_ASSET : W_INPUT_URL + 1],
        strict=True,
    ):
        divisor = 1000 if secs else 1
        host = hosts[project][w_asset & 1]
        expires = create_ms // 1000 + 7 * 86400
        auth_url = f"{host}/voice-authorization/{job_id}/authorization.mp4"
        if flags & F_SIGNED_AUTH:
            auth_url += presigned(w_auth, expires)
        input_url = f"{host}/training-input/{job_id}/corpus.zip"
        if flags & F_SIGNED_INPUT:
            input_url += presigned(w_input, expires)
        out.append(
            f',"create_time":{create_ms // divisor},"lastupdate_time":{update_ms // divisor}'
            f',"voice_authorization_url":"{auth_url}","training_input_source_url":"{input_url}"'
        )
    return out


def _contact_texts(jobs: _Batch) -> list[str]:
    """``create_type`` through ``batch_name``: tag, phone number, digital-human job."""
    out = []
    for create_type, tag, flags, language, batch, w_phone, w_dhtms_hi, w_dhtms_lo in zip(
        jobs.create_type,
        jobs.tag,
        jobs.flags,
        jobs.language,
        jobs.batch,
        jobs.words[W_PHONE],
        jobs.words[W_DHTMS_HI],
        jobs.words[W_DHTMS_LO],
        strict=True,
    ):
        text = f"{_J_CREATE_TYPE[create_type]}{_J_TAG[tag]}"
        if flags & F_PHONE:
            prefix, digits = PHONE_FORMAT.get(
                C.LANGUAGES[language] if language >= 0 else None, PHONE_FORMAT[None]
            )
            text += f',"phone":"{prefix}{w_phone % 10**digits:0{digits}d}"'
        if flags & F_DHTMS:
            text += f',"dhtms_job_id":"{w_dhtms_hi:016x}{w_dhtms_lo:016x}"'
        out.append(text + _J_BATCH[batch])
    return out


def _resource_texts(jobs: _Batch) -> list[str]:
    out = []
    for charge, create_ms, w_resource, w_asset in zip(
        jobs.charge, jobs.create_ms, jobs.words[W_RESOURCE], jobs.words[W_ASSET], strict=True
    ):
        if charge < 0:
            out.append("")
            continue
        text = f',"allocated_resource":{{"resource_id":"{w_resource >> 16:012x}{w_asset >> 32:08x}"{_J_CHARGE[charge]}'
        if charge != _ON_DEMAND:
            lifetime = 365 if charge == _PERIODIC else 30
            text += f',"expire_time":"{rfc3339_seconds(create_ms // 1000 + lifetime * 86400)}"'
        out.append(text + "}")
    return out


def _tail_texts(jobs: _Batch) -> list[str]:
    """Output language, remake, assessment and on-demand."""
    out = []
    for output_language, remake, flags, ondemand, w_status, w_actual in zip(
        jobs.output_language,
        jobs.remake,
        jobs.flags,
        jobs.ondemand,
        jobs.words[W_STATUS],
        jobs.words[W_ACTUAL],
        strict=True,
    ):
        text = _J_LANGUAGE_OUT[output_language] + _J_REMAKE[remake]
        if flags & F_ASSESS:
            text += ',"assess_result":' + orjson.dumps(assess(w_status, w_actual, flags)).decode()
        out.append(text + _J_ONDEMAND[ondemand])
    return out


def _null_and_extra_texts(jobs: _Batch) -> list[str]:
    """Empty fields sent as null (``F_NULLS``), then unknown extra fields (``F_EXTRA``)."""
    out = []
    for flags, state, failure, tag, batch, w_extra in zip(
        jobs.flags, jobs.state, jobs.failure, jobs.tag, jobs.batch, jobs.words[W_EXTRA], strict=True
    ):
        text = ""
        if flags & F_NULLS:
            if state != SUCCEED:
                text += ',"asset_id":null'
            if not (failure >= 0 and state == FAILED):
                text += ',"job_failed_code":null,"job_failed_reason":null'
            if tag < 0:
                text += ',"tag":null'
            if batch < 0:
                text += ',"batch_name":null'
            if not flags & F_DHTMS:
                text += ',"dhtms_job_id":null'
            if not flags & F_PHONE:
                text += ',"phone":null'
        if flags & F_EXTRA:
            text += (
                f',"voice_style":{_J_STYLES[w_extra & 3]},"quality_score":{(w_extra >> 8) % 1000 / 1000!r}'
            )
        out.append(text)
    return out
