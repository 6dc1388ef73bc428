"""Runs started from the command line, reported to the Dagster instance of ``DAGSTER_HOME``.

A warehouse filled by ``voicejobs sync`` or ``voicejobs demo`` is the same warehouse the
Dagster assets build: without this, the UI would show "never materialized" over a full
warehouse. When ``DAGSTER_HOME`` is set, a successful CLI run is recorded as runless asset
materializations of the assets it built, with the same metadata an asset run records.
"""

from __future__ import annotations

import os
from datetime import timedelta

import dagster as dg

from assets.jobs import metadata_of
from assets.models import MODEL_ASSET_KEYS
from pipelines.sync import SyncReport

#: The asset each CLI sync mode builds (days are partitions of voice_training_jobs).
MODE_ASSETS = {
    "days": dg.AssetKey("voice_training_jobs"),
    "incremental": dg.AssetKey("voice_training_job_changes"),
    "reconcile": dg.AssetKey("voice_training_job_deletions"),
}
TAGS = {"voicejobs/started-by": "cli"}


def report_cli_run(report: SyncReport, *, serving_path: str, instance: dg.DagsterInstance | None = None) -> int:
    """Record a finished CLI sync (with its models and snapshot) as asset materializations.

    Does nothing without ``DAGSTER_HOME`` (or an ``instance``); returns the events recorded."""
    if instance is None:
        if not os.environ.get("DAGSTER_HOME"):
            return 0
        instance = dg.DagsterInstance.get()
    events: list[dg.AssetMaterialization] = []
    metadata = metadata_of(report)
    if report.mode == "days" and report.since is not None and report.until is not None:
        days = (report.until - report.since).days + 1
        events += [
            dg.AssetMaterialization(MODE_ASSETS["days"], metadata=metadata, tags=TAGS,
                                    partition=(report.since + timedelta(days=n)).isoformat())
            for n in range(days)
        ]
    else:
        events.append(dg.AssetMaterialization(MODE_ASSETS[report.mode], metadata=metadata, tags=TAGS))
    events += [dg.AssetMaterialization(key, tags=TAGS, metadata={"run_id": report.run_id})
               for key in MODEL_ASSET_KEYS]
    events.append(dg.AssetMaterialization("serving_snapshot", tags=TAGS,
                                          metadata={"path": dg.MetadataValue.path(serving_path)}))
    for event in events:
        instance.report_runless_asset_event(event)
    return len(events)
