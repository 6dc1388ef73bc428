"""Personal data, masked wherever analysts look.

Personal data (`personal_data="mask"`, the default): `phone` keeps its last four
characters, every earlier one becomes "*" (`mask_phone`); `voice_authorization_url` and
`training_input_source_url` lose their query string, fragment and any user-info, which is
where pre-signed object-storage URLs carry credentials (`strip_url_credentials`). Values the
schema does not know (those kept in `extra`, at any depth, inside objects and lists) are
masked by `mask_unknown_value`: every http(s) URL in a string loses its query string,
fragment and user-info, and a value that looks like a phone number keeps its last four
characters (see that function for when a digit string counts as a phone: ids and epoch
times do not). The same policy is applied to the JSON kept in the quarantine, to the known
phone and URL fields and to every unknown value in it. `personal_data="raw"` keeps values as sent.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from pipelines.ingest.schema import (
    ASSESS_DETAIL_FIELDS,
    ASSESS_PROPERTIES,
    KNOWN_ALLOCATED_RESOURCE_FIELDS,
    KNOWN_FIELDS,
    PHONE_FIELD,
    URL_FIELDS,
)


def mask_phone(s: str) -> str:
    """Keep the last four characters of a phone number, replace every earlier one by "*".

    Surrounding whitespace is dropped first. Fewer than five characters: all "*".
    "+8613812345678" -> "**********5678".
    """
    s = s.strip()
    if len(s) < 5:
        return "*" * len(s)
    return "*" * (len(s) - 4) + s[-4:]


def strip_url_credentials(s: str) -> str:
    """Drop the query string, fragment and user-info of a URL; scheme, host, port and path stay.

    Pre-signed object-storage URLs carry their credential in the query string.
    "https://u:p@obs.example.com/a/b.wav?AccessKeyId=..&Signature=..#x" -> "https://obs.example.com/a/b.wav".
    """
    # Plain string scanning: urllib.parse costs ~10x more and this runs for every row.
    cut = s.find("?")
    if cut < 0:
        cut = len(s)
    frag = s.find("#", 0, cut)
    if frag >= 0:
        cut = frag
    out = s[:cut]
    if "@" in out:
        scheme_end = out.find("://")
        start = scheme_end + 3 if scheme_end >= 0 else 0
        end = out.find("/", start)
        if end < 0:
            end = len(out)
        at = out.rfind("@", start, end)
        if at >= 0:
            out = out[:start] + out[at + 1 :]
    return out


# An http(s) URL inside a string, up to whitespace or a quote (the whole value or part of a text).
_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+", re.IGNORECASE)
# Digits, spaces, dashes and parentheses with an optional leading "+" (digits counted apart).
_PHONE_CHARS = re.compile(r"\+?[0-9() -]+")
_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}-\d{1,2}-\d{4}")
_KEY_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_PHONE_KEY_WORDS = frozenset(
    {"phone", "phones", "mobile", "mobiles", "tel", "telephone", "cell", "cellphone", "msisdn"}
)
_PHONE_MIN_DIGITS, _PHONE_MAX_DIGITS = 7, 15


def _is_phone_key(key: str | None) -> bool:
    """A key with a word phone, mobile, tel, telephone, cell(phone) or msisdn (snake_case or camelCase)."""
    if not key:
        return False
    return any(word.lower() in _PHONE_KEY_WORDS for word in _KEY_WORDS.findall(key))


def _looks_like_phone(s: str, key: str | None) -> bool:
    t = s.strip()
    if not _PHONE_CHARS.fullmatch(t):
        return False
    digits = sum(c.isdigit() for c in t)
    if not _PHONE_MIN_DIGITS <= digits <= _PHONE_MAX_DIGITS:
        return False
    if _is_phone_key(key):
        return True
    # Without a phone key only the shape counts: a bare digit string is an id or an epoch time.
    if t[0] == "+" or "(" in t:
        return True
    return (" " in t or "-" in t) and not _DATE.fullmatch(t)


def mask_unknown_value(v: Any, key: str | None = None) -> Any:
    """A copy of a value the schema does not know, with personal data masked (`v` is not changed).

    Objects and lists are walked to any depth; a list's items count as under the list's key.

    - Every http(s) URL in a string (the whole value or a part of a text, up to whitespace or
      a quote) goes through `strip_url_credentials`: query string, fragment and user-info go.
    - A phone number goes through `mask_phone` (the last four characters stay). A phone is a
      string of digits, spaces, dashes and parentheses with an optional leading "+", holding
      7-15 digits, that either sits under a key naming a phone (a word phone, mobile, tel,
      telephone, cell, cellphone or msisdn: `phone_number`, `mobileNo`, `reviewer_tel`) or has
      a phone's shape by itself: a leading "+", a parenthesis, or a space or dash separator
      (dates like 2025-01-10 excepted). So a bare digit string ("1736498597", a job id) is a
      phone only under a phone key; an integer of 7-15 digits under a phone key is masked too.
    """
    if isinstance(v, str):
        if "://" in v:
            return _URL_IN_TEXT.sub(lambda m: strip_url_credentials(m.group(0)), v)
        if _looks_like_phone(v, key):
            return mask_phone(v)
        return v
    if isinstance(v, dict):
        return {k: mask_unknown_value(x, k) for k, x in v.items()}
    if isinstance(v, list):
        return [mask_unknown_value(x, key) for x in v]
    if type(v) is int and _PHONE_MIN_DIGITS <= len(str(abs(v))) <= _PHONE_MAX_DIGITS and _is_phone_key(key):
        return mask_phone(str(v))
    return v


_LEAF = object()
# Every key the schema knows, per level: a nested dict for known objects, _LEAF for values.
_KNOWN_TREE: dict[str, Any] = {
    **dict.fromkeys(KNOWN_FIELDS, _LEAF),
    "allocated_resource": dict.fromkeys(KNOWN_ALLOCATED_RESOURCE_FIELDS, _LEAF),
    "assess_result": {
        "suggestion": _LEAF,
        **{prop: dict.fromkeys(ASSESS_DETAIL_FIELDS, _LEAF) for prop in ASSESS_PROPERTIES},
    },
}


def _mask_unknown_fields(d: dict[str, Any], known: dict[str, Any] = _KNOWN_TREE) -> dict[str, Any]:
    """A copy of a record (or of an `extra` object) with every value the schema does not know
    masked by `mask_unknown_value`: unknown keys, and known keys holding an object or list
    where the schema expects something else. Known values are kept as they are."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        sub = known.get(k)
        if sub is None:
            out[k] = mask_unknown_value(v, k)
        elif sub is not _LEAF and type(v) is dict:
            out[k] = _mask_unknown_fields(v, sub)
        elif isinstance(v, dict | list):
            out[k] = mask_unknown_value(v, k)
        else:
            out[k] = v
    return out


def _mask_phone_any(v: Any) -> Any:
    if isinstance(v, str):
        return mask_phone(v)
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int | float):
        return mask_phone(str(v))
    if isinstance(v, list):
        return [_mask_phone_any(x) for x in v]
    if isinstance(v, dict):
        return {k: _mask_phone_any(x) for k, x in v.items()}
    return "*"


def _strip_url_any(v: Any) -> Any:
    if isinstance(v, str):
        return strip_url_credentials(v)
    if isinstance(v, list):
        return [_strip_url_any(x) for x in v]
    if isinstance(v, dict):
        return {k: _strip_url_any(x) for k, x in v.items()}
    return v


def raw_json(record: Any, personal_data: str) -> str:
    if personal_data == "mask":
        if isinstance(record, dict):
            record = _mask_unknown_fields(record)
            if record.get(PHONE_FIELD) is not None:
                record[PHONE_FIELD] = _mask_phone_any(record[PHONE_FIELD])
            for name in URL_FIELDS:
                if record.get(name) is not None:
                    record[name] = _strip_url_any(record[name])
        else:  # not an object at all: nothing in it is known
            record = mask_unknown_value(record)
    return _dumps(record)


def _dumps(obj: Any, *, sort_keys: bool = False) -> str:
    """JSON text; orjson for speed, the standard library for what orjson refuses (ints past 64 bits)."""
    try:
        return orjson.dumps(obj, default=repr, option=orjson.OPT_SORT_KEYS if sort_keys else 0).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(obj, default=repr, sort_keys=sort_keys, ensure_ascii=False, separators=(",", ":"))
