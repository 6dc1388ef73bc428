"""Where a warehouse's jobs come from, and the rule that one warehouse holds one source.

A warehouse records the source it was filled from in ``warehouse_meta`` (key ``source``):
the API's origin (``scheme://host[:port]``, never a path, user-info or credential), or
``embedded-simulator`` for the simulator the CLI starts in-process. A sync from another
source into it stops before anything is fetched, naming both sources: one source's jobs
would otherwise stay live in every aggregate next to the other's, and no sync of either
would ever reconcile them. More project ids of the same source are fine.

The embedded simulator stands in for the API only when asked for (``voicejobs demo``,
``voicejobs sync --simulator``) or when nothing at all is configured and the data
directory is new or already simulated. Every run on it says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import httpx

from pipelines.metastudio.errors import ConfigurationError
from pipelines.settings import Settings
from pipelines.warehouse import JOBS_TABLE, Warehouse, WarehouseError
from pipelines.warehouse.tables import first_row, meta_value, put_meta

log = logging.getLogger("voicejobs.source")

SIMULATOR_ORIGIN = "embedded-simulator"
META_KEY = "source"


@dataclass(frozen=True)
class SourceIdentity:
    """What a warehouse was filled from: an API origin, or the embedded simulator."""

    origin: str
    simulated: bool = False

    def describe(self) -> str:
        return "the embedded MetaStudio simulator (simulated data)" if self.simulated else self.origin

    def to_json(self) -> str:
        return json.dumps({"origin": self.origin, "simulated": self.simulated}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SourceIdentity:
        data = json.loads(text)
        return cls(str(data["origin"]), bool(data.get("simulated", False)))


def identity_of(settings: Settings) -> SourceIdentity:
    """The source ``settings`` read from; the origin only, so no credential can be in it."""
    if settings.embedded_simulator:
        return SourceIdentity(SIMULATOR_ORIGIN, simulated=True)
    url = httpx.URL(settings.base_url())
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    port = f":{url.port}" if url.port and url.port != default_port else ""
    return SourceIdentity(f"{url.scheme}://{url.host.lower()}{port}")


class SourceMismatchError(WarehouseError):
    """The data directory holds jobs of another source."""


def recorded_source(con: duckdb.DuckDBPyConnection) -> SourceIdentity | None:
    value = meta_value(con, META_KEY)
    return SourceIdentity.from_json(value) if value is not None else None


def _holds_jobs(con: duckdb.DuckDBPyConnection) -> bool:
    return first_row(con, f"SELECT EXISTS (SELECT 1 FROM {JOBS_TABLE})")[0]


def claim(warehouse: Warehouse, identity: SourceIdentity) -> None:
    """Record ``identity`` as the warehouse's source, or stop if it holds another source's jobs.

    A warehouse that holds jobs but no record (written before sources were recorded) is
    adopted by the first source that syncs it."""
    with warehouse.connect() as con:
        stored = recorded_source(con)
        if stored == identity:
            return
        if stored is not None:
            raise SourceMismatchError(
                f"{warehouse.data_dir} holds jobs synced from {stored.describe()}, and this sync reads "
                f"{identity.describe()}; one warehouse holds one source, or its aggregates would mix them. "
                f"Use another data directory for this source (--data-dir or VOICEJOBS_DATA_DIR)"
            )
        put_meta(con, META_KEY, identity.to_json())


def may_fall_back_to_simulator(warehouse: Warehouse) -> bool:
    """A data directory the embedded simulator may fill unasked: new, or simulated already."""
    if not warehouse.db_path.exists():
        return True
    with warehouse.connect() as con:
        stored = recorded_source(con)
        return stored.simulated if stored is not None else not _holds_jobs(con)


@dataclass(frozen=True)
class Source:
    """The settings of the source a run reads, pointing at a running embedded simulator if used."""

    settings: Settings

    @property
    def identity(self) -> SourceIdentity:
        return identity_of(self.settings)


@contextlib.contextmanager
def open_source(settings: Settings, *, simulator: bool = False) -> Iterator[Source]:
    """The configured API; the embedded simulator when asked for (``simulator``), or when
    nothing at all is configured and the data directory is new or already simulated."""
    if not simulator and not settings.nothing_configured:
        settings.base_url()  # fail fast, with the fix, on a bad endpoint
        settings.auth()
        settings.require_projects()
        yield Source(settings)
        return
    if not simulator and not may_fall_back_to_simulator(Warehouse.for_settings(settings)):
        raise ConfigurationError(
            "No MetaStudio endpoint, credentials or project id are configured, and "
            f"{settings.data_dir} holds real synced jobs: refusing to fill it from the embedded simulator. "
            "Set METASTUDIO_REGION (or METASTUDIO_ENDPOINT), credentials and HUAWEICLOUD_SDK_PROJECT_ID "
            "(see .env.example), or run `voicejobs demo` for simulated data in its own directory"
        )
    from pipelines.simulator import SimulatorConfig, SimulatorServer

    if not simulator:
        log.warning("Nothing is configured: syncing simulated jobs from the embedded MetaStudio simulator.")
    with SimulatorServer(SimulatorConfig()) as server:
        yield Source(simulator_settings(settings, server))


def simulator_settings(settings: Settings, server) -> Settings:
    """Settings that point at a running embedded simulator with its AK/SK credentials."""
    config = server.state.config
    ak, sk = next(iter(config.credentials.items()))
    return settings.with_(endpoint=server.url, ak=ak, sk=sk, project_ids=tuple(config.projects),
                          embedded_simulator=True)
