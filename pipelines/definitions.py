"""The only wiring file: assets, checks, resources, jobs and schedules."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from assets import checks as check_module
from assets import jobs as job_assets
from assets import models as model_module
from assets.serving import postgres_serving, serving_snapshot
from pipelines.resources import metastudio_from_env, schedule_settings, warehouse_from_env

_schedule = schedule_settings()
model_assets = dg.load_assets_from_modules([model_module])
sync_assets = [
    job_assets.voice_training_jobs,
    job_assets.voice_training_job_changes,
    job_assets.voice_training_job_deletions,
]
downstream = dg.AssetSelection.assets(*model_assets, serving_snapshot, postgres_serving)

# Nightly: change capture for every project, the newest creation-day partition, then
# everything downstream; all in one run so the models see one consistent warehouse.
nightly_sync = dg.define_asset_job(
    "nightly_sync",
    selection=dg.AssetSelection.assets(job_assets.voice_training_jobs, job_assets.voice_training_job_changes)
    | downstream,
    tags={"voicejobs/writes-warehouse": "true"},
    description="Change capture, the newest creation day and every model, then the serving snapshot.",
)

weekly_reconcile = dg.define_asset_job(
    "weekly_reconcile",
    selection=dg.AssetSelection.assets(job_assets.voice_training_job_deletions) | downstream,
    tags={"voicejobs/writes-warehouse": "true"},
    description="Page every creation day completely and mark the jobs the source no longer lists as deleted.",
)



@dg.schedule(
    name="nightly_sync_schedule",
    job=nightly_sync,
    cron_schedule=_schedule["nightly_cron"],  # default "0 2 * * *": every night at 02:00
    execution_timezone=_schedule["timezone"],
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Yesterday's creation day (UTC), the newest complete partition, with change capture."""
    scheduled = context.scheduled_execution_time or datetime.now(UTC)
    day = (scheduled.astimezone(UTC) - timedelta(days=1)).date().isoformat()
    return dg.RunRequest(run_key=f"nightly-{day}", partition_key=day)


weekly_reconcile_schedule = dg.ScheduleDefinition(
    name="weekly_reconcile_schedule",
    job=weekly_reconcile,
    cron_schedule=_schedule["reconcile_cron"],  # default "0 3 * * 0": Sundays at 03:00
    execution_timezone=_schedule["timezone"],
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

defs = dg.Definitions(
    assets=[*sync_assets, *model_assets, serving_snapshot, postgres_serving],
    asset_checks=dg.load_asset_checks_from_modules([check_module]),
    jobs=[nightly_sync, weekly_reconcile],
    schedules=[nightly_schedule, weekly_reconcile_schedule],
    resources={"metastudio": metastudio_from_env(), "warehouse": warehouse_from_env()},
    # Every step writes or reads the one DuckDB file: run steps in one process, in order.
    executor=dg.in_process_executor,
)
