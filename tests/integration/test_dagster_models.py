"""The SQL models as Dagster assets: materialized twice with the same answers, their lineage, a
subset, and the refusal of unmasked personal data, over a prepared warehouse file.

The models' SQL itself, aggregate by aggregate, is tested in tests/unit/test_models.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import duckdb
import pytest

from assets.models import SOURCE_ASSET_KEYS, build_analytics_assets, model_asset_key
from pipelines.models import load_models
from tests.support.dagster import StandInWarehouseResource
from tests.support.expected import waits_on
from tests.support.expected_analytics import TERMINAL, expected_failure_rate_by
from tests.support.warehouse_fixture import Dataset, create_warehouse, insert_rows, sample_dataset


@pytest.fixture(scope="module")
def data() -> Dataset:
    return sample_dataset(now=datetime(2025, 6, 1, tzinfo=UTC))


def test_materialize_model_assets_twice(tmp_path, data):
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    create_warehouse(con)
    data.load(con)
    con.close()
    source = dg.AssetSpec("voice_training_jobs")
    analytics = build_analytics_assets()
    resources = {"warehouse": StandInWarehouseResource(data_dir=str(tmp_path))}
    results = []
    for _ in range(2):
        result = dg.materialize([source, analytics], resources=resources)
        assert result.success
        results.append({
            e.materialization.asset_key: {k: v.value for k, v in e.materialization.metadata.items()
                                          if k not in ("preview", "dagster/column_schema")}
            for e in result.get_asset_materialization_events()
        })  # fmt: skip
    assert results[0] == results[1], "a second run over the same rows gives the same answer"
    meta = results[0]
    assert set(meta) == {model_asset_key(m) for m in load_models()}
    by_tag = meta[dg.AssetKey("failure_rate_by_tag")]
    live = data.live_jobs()
    failed = sum(j["state"] == "FAILED" for j in live)
    succeeded = sum(j["state"] == "SUCCEED" for j in live)
    assert by_tag["dagster/row_count"] == len(expected_failure_rate_by(data, "tag"))
    assert by_tag["overall_failure_rate"] == pytest.approx(failed / (failed + succeeded))
    assert isinstance(by_tag["overall_failure_rate"], float)
    assert meta[dg.AssetKey("in_flight_backlog")]["jobs_in_flight"] == sum(
        j["state"] not in TERMINAL for j in live
    )
    for key in ("in_flight_backlog", "failure_rate_by_tag", ["analytics", "job_outcomes"]):
        assert meta[dg.AssetKey(key)]["jobs_waiting_on_user"] == sum(waits_on(j["state"]) == "user" for j in live)
        assert meta[dg.AssetKey(key)]["jobs_in_progress_by_service"] == sum(
            waits_on(j["state"]) == "service" for j in live
        )
    assert meta[dg.AssetKey(["analytics", "live_voice_training_jobs"])]["dagster/row_count"] == len(live)
    preview = result.get_asset_materialization_events()[0].materialization.metadata["preview"].value
    assert preview.startswith("| ")


def test_model_asset_lineage():
    analytics = build_analytics_assets()
    deps = analytics.asset_deps
    assert deps[dg.AssetKey("failure_rate_by_tag")] == {dg.AssetKey(["analytics", "job_outcomes"])}
    assert deps[dg.AssetKey(["analytics", "live_voice_training_jobs"])] == {
        dg.AssetKey("voice_training_jobs"),
        dg.AssetKey("voice_training_job_changes"),
        dg.AssetKey("voice_training_job_deletions"),
    }
    specs = {s.key: s for s in analytics.specs}
    assert all(s.group_name == "analytics" and s.description for s in specs.values())


def test_materialize_subset_and_refusal(tmp_path):
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    create_warehouse(con)
    insert_rows(con, "main.voice_training_jobs", [{"project_id": "p", "job_id": "1", "phone": "13800135678"}])
    con.close()
    resources = {"warehouse": StandInWarehouseResource(data_dir=str(tmp_path))}
    assets = [dg.AssetSpec("voice_training_jobs"), build_analytics_assets()]
    refused = dg.materialize(assets, resources=resources, raise_on_error=False)
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    error, causes = failure.step_failure_data.error, []
    while error is not None:  # Dagster wraps what the op raised
        causes.append(error)
        error = error.cause
    assert any(e.cls_name == "UnmaskedPersonalDataError" and "phone: 1 rows" in e.message for e in causes)
    assert not refused.get_asset_materialization_events()
    allowed = dg.materialize(
        assets,
        resources=resources,
        selection=dg.AssetSelection.assets(["analytics", "live_voice_training_jobs"]),
        run_config={"ops": {"analytics_models": {"config": {"allow_unmasked_personal_data": True}}}},
    )
    keys = [e.materialization.asset_key for e in allowed.get_asset_materialization_events()]
    assert keys == [dg.AssetKey(["analytics", "live_voice_training_jobs"])]


def test_no_model_asset_reads_like_the_sync_asset_it_depends_on():
    """The graph labels an asset by its last key part: a view over voice_training_jobs must not
    show as voice_training_jobs again (an edge that looks like a loop)."""
    analytics = build_analytics_assets()
    labels = {key.path[-1] for key in analytics.keys}
    assert not labels & {key.path[-1] for key in SOURCE_ASSET_KEYS}
    assert dg.AssetKey(["analytics", "live_voice_training_jobs"]) in analytics.keys
    assert dg.AssetKey(["analytics", "job_outcomes"]) in analytics.keys
