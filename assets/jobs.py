"""The sync assets: creation-day partitions and change capture of voice_training_jobs."""


from datetime import UTC, date, datetime, timedelta

import dagster as dg
from dagster import AssetExecutionContext

from pipelines.resources import MetaStudioResource, WarehouseResource, first_partition_day
from pipelines.source import open_source
from pipelines.sync import SyncReport, sync

# One pool for everything that writes warehouse.duckdb: two syncs never write at once.
WAREHOUSE_POOL = "voicejobs_warehouse"

creation_days = dg.DailyPartitionsDefinition(start_date=first_partition_day().isoformat(), timezone="UTC")


def metadata_of(report: SyncReport) -> dict:
    data = report.as_dict()
    return {
        "run_id": data["run_id"],
        "window": f"{data['since']} .. {data['until']}" if data["since"] else "change capture",
        "rows": dg.MetadataValue.int(report.rows_written),
        "jobs_fetched": dg.MetadataValue.int(report.jobs_fetched),
        "windows": dg.MetadataValue.int(report.windows),
        "pages": dg.MetadataValue.int(report.pages),
        "requests": dg.MetadataValue.int(report.requests),
        "retries": dg.MetadataValue.int(report.retries_total),
        "retries_by_cause": dg.MetadataValue.json(data["retries_by_cause"]),
        "api_wait_seconds": dg.MetadataValue.float(data["api_wait_seconds"]),
        "quarantined": dg.MetadataValue.int(report.quarantined),
        "marked_deleted": dg.MetadataValue.int(report.deleted),
        "mismatched_windows": dg.MetadataValue.int(report.mismatched_windows),
        "source": "embedded simulator (SIMULATED DATA)" if report.simulated else report.source,
        "simulated": report.simulated,
    }


def _run(metastudio: MetaStudioResource, warehouse: WarehouseResource, **kwargs) -> SyncReport:
    wh = warehouse.warehouse()
    with open_source(metastudio.settings(wh.data_dir)) as source:
        return sync(source.settings, warehouse=wh, **kwargs)


@dg.asset(
    partitions_def=creation_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=WAREHOUSE_POOL,
    group_name="warehouse",
    kinds={"duckdb", "parquet"},
)
def voice_training_jobs(
    context: AssetExecutionContext, metastudio: MetaStudioResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Every voice-training job, one row per (project_id, job_id), synced by creation day."""
    keys = context.partition_key_range
    since, until = date.fromisoformat(keys.start), date.fromisoformat(keys.end)
    context.log.info(f"Syncing creation days {since} .. {until}")
    report = _run(metastudio, warehouse, mode="days", since=since, until=until)
    return dg.MaterializeResult(metadata=metadata_of(report))


@dg.asset(pool=WAREHOUSE_POOL, group_name="warehouse", kinds={"duckdb", "parquet"})
def voice_training_job_changes(
    metastudio: MetaStudioResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Change capture: jobs updated since the stored watermark, upserted with their history."""
    report = _run(metastudio, warehouse, mode="incremental")
    metadata = metadata_of(report)
    metadata["watermarks"] = dg.MetadataValue.json(report.watermarks)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(pool=WAREHOUSE_POOL, group_name="warehouse", kinds={"duckdb"})
def voice_training_job_deletions(
    context: AssetExecutionContext, metastudio: MetaStudioResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Reconciliation: every creation day paged completely; jobs the source no longer lists are marked deleted."""
    wh = warehouse.warehouse()
    with open_source(metastudio.settings(wh.data_dir)) as source:
        settings = source.settings
        since = settings.first_day
        # An upper bound only: every window is clamped to the source's own clock.
        until = (datetime.now(UTC) + timedelta(days=1)).date()
        context.log.info(f"Reconciling creation days {since} .. {until}")
        report = sync(settings, warehouse=wh, mode="reconcile", since=since, until=until)
    return dg.MaterializeResult(metadata=metadata_of(report))
