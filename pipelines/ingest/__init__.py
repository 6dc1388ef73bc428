"""Ingestion: a window's raw records into typed rows of `voice_training_jobs`.

Rooms, in the order a record passes them:

- ``normalizer.py`` the entry point: the fast path, else the rules;
- ``arrow.py``      the fast path: records converted to Arrow in C, checked as columns;
- ``rules.py``      the documented rules, step by step: what the result must be;
- ``coerce.py``     one value (or one column) into its type;
- ``mask.py``       personal data: phone numbers, credential-bearing URLs, unknown values;
- ``finish.py``     what both paths share: ``extra``, masking, duplicates;
- ``screen.py``     a window's rows split by owner range; oversized records quarantined;
- ``schema.py``     the table's Arrow schema and the fields the source knows.
"""

from pipelines.ingest.mask import mask_phone, mask_unknown_value, raw_json, strip_url_credentials
from pipelines.ingest.normalizer import normalize, normalize_windows
from pipelines.ingest.schema import JOBS_SCHEMA, SCHEMA_VERSION, Normalized, Quarantined

__all__ = [
    "JOBS_SCHEMA", "SCHEMA_VERSION", "Normalized", "Quarantined", "mask_phone", "mask_unknown_value",
    "normalize", "normalize_windows", "raw_json", "strip_url_credentials",
]
