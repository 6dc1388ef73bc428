"""One Dagster asset per SQL model in sql/, grouped "analytics", lineage taken from the SQL.

All models are computed by one op over one DuckDB connection, in dependency order: DuckDB
lets a single process write the warehouse file, and the models are cheap next to the sync.
Dagster still shows and selects each model as its own asset, with its own deps.

Asset keys: an aggregate table's key is its name (`failure_rate_by_tag`). A view's key, and an
incremental table's (one row per job, rebuilt for the jobs that changed: `analytics/job_outcomes`, a view
before it became one, keeps its key), is prefixed `analytics`. A view that mirrors a warehouse relation of
the same name, leaving deleted jobs out, is keyed `analytics/live_<name>`
(`analytics/live_voice_training_jobs`): the lineage then reads as the sync asset
`voice_training_jobs` feeding its live view, not as an asset feeding itself. The SQL
relation keeps its name, `analytics.voice_training_jobs`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from pipelines.models import Model, connect, load_models, refresh_models
from pipelines.query import format_rows

# The sync assets writing main.voice_training_jobs and its history (assets/jobs.py): creation-day
# partitions, change capture and deletion reconciliation. Models depend on all three so a run
# holding any of them builds the models after it.
SOURCE_ASSET_KEYS: tuple[dg.AssetKey, ...] = (
    dg.AssetKey("voice_training_jobs"),
    dg.AssetKey("voice_training_job_changes"),
    dg.AssetKey("voice_training_job_deletions"),
)
WAREHOUSE_RESOURCE_KEY = "warehouse"
# The pool of every step that opens warehouse.duckdb (the sync assets use the same name),
# so two processes never contend for the file's lock.
WAREHOUSE_POOL = "voicejobs_warehouse"
PREVIEW_ROWS = 20

# Headline numbers per model: one row whose columns become plottable metadata. Rates come from
# the macro analytics.failure_rate (sql/_macros.sql), never a formula written here.
HEADLINES: dict[str, str] = {
    **{
        f"failure_rate_by_{g}": f"""
            SELECT analytics.failure_rate(sum(failed), sum(succeeded)) AS overall_failure_rate,
                   sum(total_jobs) AS total_jobs, sum(in_progress) AS jobs_in_flight,
                   sum(waiting_on_user) AS jobs_waiting_on_user,
                   sum(in_progress_by_service) AS jobs_in_progress_by_service,
                   count(*) AS groups
            FROM analytics.failure_rate_by_{g}"""
        for g in ("tag", "language", "job_type")
    },
    **{
        f"{p}_job_stats": f"""
            SELECT sum(jobs_created) AS jobs_created,
                   analytics.failure_rate(sum(failed), sum(succeeded)) AS overall_failure_rate
            FROM analytics.{p}_job_stats"""
        for p in ("daily", "weekly", "monthly")
    },
    "time_to_finish_by_job_type": """
        SELECT sum(finished_jobs) AS finished_jobs,
               sum(avg_finish_seconds * finished_jobs) / nullif(sum(finished_jobs), 0) AS avg_finish_seconds,
               max(p90_finish_seconds) AS worst_p90_finish_seconds
        FROM analytics.time_to_finish_by_job_type""",
    "top_failure_codes": """
        SELECT sum(jobs) AS failed_jobs, count(*) AS failure_codes,
               max(share_of_failures) AS top_code_share
        FROM analytics.top_failure_codes""",
    "in_flight_backlog": """
        SELECT sum(jobs) AS jobs_in_flight,
               sum(waiting_on_user) AS jobs_waiting_on_user,
               sum(in_progress_by_service) AS jobs_in_progress_by_service,
               coalesce(sum(jobs) FILTER (WHERE age_bucket IN ('7-30d', '>30d')), 0) AS jobs_in_flight_over_7d
        FROM analytics.in_flight_backlog""",
    "job_outcomes": """
        SELECT count(*) AS total_jobs,
               count(*) FILTER (WHERE outcome = 'in_progress') AS jobs_in_flight,
               count(*) FILTER (WHERE waiting_on_user) AS jobs_waiting_on_user,
               count(*) FILTER (WHERE in_progress_by_service) AS jobs_in_progress_by_service,
               analytics.failure_rate(
                   count(*) FILTER (WHERE outcome = 'failed'), count(*) FILTER (WHERE outcome = 'succeeded')
               ) AS overall_failure_rate
        FROM analytics.job_outcomes""",
}


CONFIG_SCHEMA = {
    "allow_unmasked_personal_data": dg.Field(
        bool,
        default_value=False,
        description=(
            "Analytics views show phone and URL columns as stored; set only when the warehouse "
            "was deliberately ingested with the raw personal-data policy."
        ),
    ),
    "full_refresh": dg.Field(
        bool,
        default_value=False,
        description=(
            "Rebuild every model from the whole warehouse. By default a refresh rebuilds what changed "
            "since the last one (pipelines/incremental.py); set it after editing warehouse.duckdb by hand."
        ),
    ),
}


def model_asset_key(model: Model) -> dg.AssetKey:
    """The asset key of a model: its name for aggregate tables, `analytics/<name>` for views and
    incremental tables, and `analytics/live_<name>` for a view over the warehouse relation of
    its own name."""
    if model.kind != "view" and not model.incremental_by:
        return dg.AssetKey(model.name)
    return dg.AssetKey(["analytics", f"live_{model.name}" if model.name in model.sources else model.name])


def model_spec(model: Model, by_name: dict[str, Model], source_keys: Sequence[dg.AssetKey]) -> dg.AssetSpec:
    deps: list[dg.AssetKey] = [model_asset_key(by_name[d]) for d in model.depends_on]
    if model.sources:
        deps.extend(source_keys)
    return dg.AssetSpec(
        key=model_asset_key(model),
        deps=deps,
        description=model.description,
        group_name="analytics",
        kinds={"duckdb", "sql"},
        metadata={
            "dagster/table_name": model.relation,
            "sql_file": f"sql/{model.path.name}",
            "relation_kind": model.kind,
        },
    )


def _float_or_int(value: Any) -> dg.MetadataValue | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return dg.MetadataValue.int(value)
    return dg.MetadataValue.float(float(value))


def model_metadata(con: duckdb.DuckDBPyConnection, model: Model, rows: int) -> dict[str, Any]:
    """Row count, column schema, a markdown preview and the model's headline numbers."""
    cursor = con.execute(f"SELECT * FROM {model.relation} LIMIT {PREVIEW_ROWS}")
    columns = [d[0] for d in cursor.description]
    preview = cursor.fetchall()
    described = con.execute(f"DESCRIBE {model.relation}").fetchall()
    metadata: dict[str, Any] = {
        "dagster/row_count": dg.MetadataValue.int(rows),
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name=r[0], type=str(r[1])) for r in described]
        ),
        "preview": dg.MetadataValue.md(
            format_rows(columns, preview, "markdown")
            + (f"\n_first {PREVIEW_ROWS} of {rows} rows_\n" if rows > PREVIEW_ROWS else "")
        ),
    }
    headline_sql = HEADLINES.get(model.name)
    if headline_sql:
        cur = con.execute(headline_sql)
        names = [d[0] for d in cur.description]
        for name, value in zip(names, cur.fetchone(), strict=True):
            converted = _float_or_int(value)
            # A NULL headline (nothing finished yet) is left out rather than plotted as 0.
            if converted is not None:
                metadata[name] = converted
    return metadata


def warehouse_db_path(resource: Any) -> Path:
    """Path of warehouse.duckdb from the warehouse resource (`.warehouse().db_path`)."""
    return Path(resource.warehouse().db_path)


def build_analytics_assets(
    models: Sequence[Model] | None = None,
    source_keys: Sequence[dg.AssetKey] = SOURCE_ASSET_KEYS,
) -> dg.AssetsDefinition:
    """The analytics assets: one per model, computed together in dependency order."""
    ordered = list(models) if models is not None else load_models()
    by_name = {m.name: m for m in ordered}
    specs = [model_spec(m, by_name, source_keys) for m in ordered]
    key_to_model = {model_asset_key(m): m for m in ordered}

    @dg.multi_asset(
        name="analytics_models",
        specs=specs,
        can_subset=True,
        required_resource_keys={WAREHOUSE_RESOURCE_KEY},
        pool=WAREHOUSE_POOL,
        config_schema=CONFIG_SCHEMA,
    )
    def analytics_models(context) -> Iterator[dg.MaterializeResult]:
        # `context` stays unannotated: with postponed annotations Dagster sees the hint as a
        # string and rejects it.
        selected = [m for k, m in key_to_model.items() if k in context.selected_asset_keys]
        names = [m.name for m in selected]
        db_path = warehouse_db_path(getattr(context.resources, WAREHOUSE_RESOURCE_KEY))
        context.log.info(f"Refreshing {len(names)} analytics model(s) in {db_path.name}")
        con = connect(db_path)
        try:
            rows = refresh_models(
                con,
                names,
                models=ordered,
                allow_unmasked_personal_data=bool(
                    context.op_execution_context.op_config["allow_unmasked_personal_data"]
                ),
                incremental=not context.op_execution_context.op_config["full_refresh"],
            )
            for name in rows:
                model = by_name[name]
                yield dg.MaterializeResult(
                    asset_key=model_asset_key(model), metadata=model_metadata(con, model, rows[name])
                )
        finally:
            con.close()

    return analytics_models


analytics_models = build_analytics_assets()
# Every analytics asset key, in build order (for selections and for what publishes after them).
MODEL_ASSET_KEYS: tuple[dg.AssetKey, ...] = tuple(model_asset_key(m) for m in load_models())
