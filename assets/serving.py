"""The serving snapshot: what analysts and BI tools open, replaced atomically after the models."""


import dagster as dg

from assets.jobs import WAREHOUSE_POOL
from assets.models import MODEL_ASSET_KEYS
from pipelines.resources import WarehouseResource


@dg.asset(
    deps=list(MODEL_ASSET_KEYS),
    pool=WAREHOUSE_POOL,
    group_name="serving",
    kinds={"duckdb"},
)
def serving_snapshot(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """serving.duckdb: a consistent read-only copy of the warehouse and its models for BI tools."""
    wh = warehouse.warehouse()
    wh.publish_serving()
    return dg.MaterializeResult(
        metadata={"path": dg.MetadataValue.path(str(wh.serving_path)),
                  "bytes": dg.MetadataValue.int(wh.serving_path.stat().st_size)}
    )


#: Publishes to one PostgreSQL schema queue behind each other rather than waiting on its lock.
POSTGRES_POOL = "voicejobs_postgres"


@dg.asset(
    deps=[serving_snapshot],
    pool=POSTGRES_POOL,
    group_name="serving",
    kinds={"postgres"},
    output_required=False,
)
def postgres_serving(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """The analytics tables in PostgreSQL (VOICEJOBS_POSTGRES_URL) for BI tools on other hosts; skipped when unset."""
    from pipelines.publish import PublishError, publish
    from pipelines.settings import Settings

    wh = warehouse.warehouse()
    settings = Settings.from_env(data_dir=wh.data_dir)
    if not settings.postgres_url:
        context.log.info("VOICEJOBS_POSTGRES_URL is not set: nothing published to PostgreSQL (step skipped).")
        return
    try:
        report = publish(wh.serving_path, settings)
    except PublishError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    yield dg.MaterializeResult(
        metadata={
            "target": report.target,  # user@host:port/database, never the password
            "schema": report.schema,
            "seconds": dg.MetadataValue.float(round(report.seconds, 3)),
            "rows_sent": dg.MetadataValue.int(report.rows_sent),
            "rows": dg.MetadataValue.json(report.rows),
            "tables_rewritten": dg.MetadataValue.json(report.rewritten),
            "tables_unchanged": dg.MetadataValue.json(report.unchanged),
            "tables": dg.MetadataValue.json(report.as_dict()["tables"]),
            "publish_id": report.publish_id,
        }
    )
