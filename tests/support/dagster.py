"""Dagster resources for tests: the deployment's resources pointed at a running simulator, and a
stand-in warehouse resource for assets run over a prepared warehouse file."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import dagster as dg

from pipelines.resources import MetaStudioResource, WarehouseResource
from tests.support.simulators import SIM_NOW


def resources_for(server, data_dir, first_day=None) -> dict:
    """The deployment's resources, reading from a running simulator into ``data_dir``."""
    config = server.state.config
    ak, sk = next(iter(config.credentials.items()))
    first_day = first_day or (SIM_NOW - timedelta(days=61)).date()
    return {
        "metastudio": MetaStudioResource(endpoint=server.url, ak=ak, sk=sk,
                                         project_ids=",".join(config.projects), safety_lag_seconds=0, max_clock_skew_seconds=0,
                                         first_day=first_day.isoformat()),
        "warehouse": WarehouseResource(data_dir=str(data_dir)),
    }


@dataclass
class _Warehouse:
    db_path: Path


class StandInWarehouseResource(dg.ConfigurableResource):
    """Resource with the shape of pipelines.resources.WarehouseResource: `.warehouse().db_path`."""

    data_dir: str

    def warehouse(self) -> _Warehouse:
        return _Warehouse(Path(self.data_dir) / "warehouse.duckdb")
