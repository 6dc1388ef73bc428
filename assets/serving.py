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
