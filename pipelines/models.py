"""Refreshing the SQL models of the `analytics` schema, in dependency order, in one transaction.

What a model file is and how models depend on each other: model_files.py (its names are
importable from here too). What an incremental refresh rebuilds: incremental.py. The refresh's
gate on personal data in clear: unmasked.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import duckdb

from pipelines import incremental as inc
from pipelines.incremental import Build
from pipelines.model_files import (  # noqa: F401  (the models' files are read through this module too)
    _ANALYTICS_REF,
    MACROS_FILE,
    MODELS_DIR,
    SCHEMA,
    Model,
    ModelError,
    load_macros,
    load_models,
    macros_for,
    order_models,
    parse_model,
)
from pipelines.unmasked import (  # noqa: F401  (CHECKED_THROUGH and the checks are this module's API too)
    CHECKED_THROUGH,
    UnmaskedPersonalDataError,
    check_personal_data,
    record_checked,
    unmasked_personal_data,
)
from pipelines.warehouse import WarehouseError, _is_disk_error, free_pinned
from pipelines.warehouse.db import configure, database_file
from pipelines.warehouse.tables import first_row


def refresh_models(
    con: duckdb.DuckDBPyConnection,
    names: Sequence[str] | None = None,
    *,
    models: Sequence[Model] | None = None,
    allow_unmasked_personal_data: bool = False,
    count_rows: bool = True,
    incremental: bool = False,
) -> dict[str, int]:
    """Rebuild the given models (default: all) in dependency order, in one transaction.

    Returns {model name: rows in analytics.<name> afterwards}, in build order (with
    ``count_rows=False``, which saves counting every view, an empty dict). A failure
    rolls every model back to its previous state. Unknown names raise ModelError; a full
    disk (or another write error of the database file) raises a one-line WarehouseError.
    Analytics views expose phone and URL columns as stored, so the refresh refuses
    (UnmaskedPersonalDataError, nothing changed) when the warehouse holds them in clear,
    unless `allow_unmasked_personal_data` says the raw policy is intended.

    An incremental model that the given ones read is brought up to date with them (it is a
    table: it would otherwise be read as it was). With ``incremental``, what no change reached
    is kept and an incremental model rebuilds the marked creation days only (see
    pipelines/incremental.py); without, every model is rebuilt.
    """
    everything = list(models) if models is not None else load_models()
    macros = macros_for(everything)  # all of them, whichever models are asked for
    ordered = _with_incremental_sources(everything, names)
    checked_through = None
    if not allow_unmasked_personal_data and any("voice_training_jobs" in m.sources for m in ordered):
        checked_through = check_personal_data(con)
    rows: dict[str, int] = {}
    database = database_file(con)  # asked first: a failed write can leave the connection unusable
    try:
        # The temporary copy of a shared view needs the room that changes committed since the
        # last checkpoint hold (56 MB after a change capture at 1,000,000 jobs, when the sync's
        # cap was 128 MB); when the checkpoint cannot run, the refresh goes on as it was.
        free_pinned(con)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            record_checked(con, checked_through)
            _create_macros(con, macros)
            rows = _build(con, ordered, everything, macros, incremental=incremental, count_rows=count_rows)
        except BaseException:
            with suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        # DuckDB writes the models when committing: a full disk surfaces here.
        con.execute("COMMIT")
    except (OSError, duckdb.Error) as exc:
        if not _is_disk_error(exc):
            raise
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        disk = f"the disk holding {database.parent}" if database else "the disk"
        raise WarehouseError(
            f"refreshing the SQL models in {database or 'the warehouse'} failed ({detail}); free space on {disk} "
            "and run again; the warehouse keeps its data (the models their previous state)"
        ) from exc
    if names is None:
        return rows
    asked = set(names)
    return {name: n for name, n in rows.items() if name in asked}


def _with_incremental_sources(models: Sequence[Model], names: Sequence[str] | None) -> list[Model]:
    """``models`` (in order) restricted to ``names`` and the incremental models they read,
    directly or through views; ModelError for an unknown name."""
    if names is None:
        return list(models)
    by_name = {m.name: m for m in models}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ModelError(f"unknown model(s): {', '.join(unknown)}")
    wanted, seen, pending = set(names), set(names), list(names)
    while pending:
        for dep in by_name[pending.pop()].depends_on:
            model = by_name[dep]
            if dep not in seen and (model.kind == "view" or model.incremental_by):
                seen.add(dep)
                pending.append(dep)
                if model.incremental_by:
                    wanted.add(dep)
    return [m for m in models if m.name in wanted]


def _build(con: duckdb.DuckDBPyConnection, ordered: Sequence[Model], everything: Sequence[Model],
           macros: Sequence[tuple[Path, str]], *, incremental: bool, count_rows: bool) -> dict[str, int]:
    """Bring ``ordered`` up to date inside the caller's transaction (see pipelines/incremental.py)."""
    current = {m.name: inc.fingerprint(m, macros) for m in ordered}
    built = inc.built_fingerprints(con)
    marked = inc.marks(con)
    kinds = inc.existing_kinds(con, SCHEMA)
    builds = inc.plan(ordered, incremental=incremental, built=built, current=current, kinds=kinds,
                      marked=None if marked is None else bool(marked))
    shared = shared_views([m for m in ordered if builds[m.name] is Build.FULL])
    frozen: dict[str, str] = {}
    rows: dict[str, int] = {}
    try:
        for model in ordered:
            try:
                if builds[model.name] is Build.MARKED and marked is not None:
                    inc.rebuild_marked(con, model.relation, model.select, model.incremental_by, marked)
                    _create_macros(con, macros)  # the scope macro admits every job again
                elif builds[model.name] is Build.FULL:
                    if kinds.get(model.name.lower(), model.kind) != model.kind:
                        con.execute(f"DROP {kinds[model.name.lower()].upper()} {model.relation}")
                    con.execute(_reading_frozen(model, frozen))
                    if model.name in shared:
                        frozen[model.name] = _freeze(con, model)
                if model.kind == "table" and built is not None and builds[model.name] is not Build.KEEP:
                    inc.record_built(con, model.name, current[model.name])
            except duckdb.Error as exc:
                if _is_disk_error(exc):
                    raise
                raise ModelError(f"model {model.name} ({model.path.name}) failed: {exc}") from exc
            if count_rows:
                rows[model.name] = int(first_row(con, f"SELECT count(*) FROM {model.relation}")[0])
        if marked and all(m in ordered for m in everything if m.incremental_by):
            inc.clear_marks(con)
    finally:
        _drop_frozen(con, frozen)
    return rows


#: The temporary table holding a shared view's rows during one refresh (see shared_views).
FROZEN_PREFIX = "_frozen_"


def shared_views(models: Sequence[Model]) -> set[str]:
    """The views that two or more of the table models refreshed together read.

    A view is a query evaluated by every reader: analytics.job_outcomes, read by nine table
    models, aggregated the whole history once per reader. A refresh evaluates each shared view
    once, into a temporary table, and the table models read that instead. Inside the refresh's
    transaction the view and its temporary table hold the same rows, so the models are what
    their SQL files say; the views themselves stay views for analysts."""
    views = {m.name for m in models if m.kind == "view"}
    readers: dict[str, int] = {}
    for model in models:
        if model.kind == "table":
            for name in views.intersection(model.depends_on):
                readers[name] = readers.get(name, 0) + 1
    return {name for name, count in readers.items() if count >= 2}


def _freeze(con: duckdb.DuckDBPyConnection, view: Model) -> str:
    temp = f"temp.main.{FROZEN_PREFIX}{view.name}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {FROZEN_PREFIX}{view.name} AS FROM {view.relation}")
    return temp


def _reading_frozen(model: Model, frozen: dict[str, str]) -> str:
    """A table model's SQL reading the frozen copies of the shared views it names."""
    if model.kind != "table" or not frozen:
        return model.sql

    def swap(match: re.Match) -> str:
        return frozen.get(match.group(1).lower(), match.group(0))

    return _ANALYTICS_REF.sub(swap, model.sql)


def _drop_frozen(con: duckdb.DuckDBPyConnection, frozen: dict[str, str]) -> None:
    for temp in frozen.values():
        with suppress(duckdb.Error):
            con.execute(f"DROP TABLE IF EXISTS {temp}")


def _create_macros(con: duckdb.DuckDBPyConnection, macros: Sequence[tuple[Path, str]]) -> None:
    """Run each macros file (CREATE OR REPLACE MACRO ...); ModelError naming the file when one fails."""
    for path, sql in macros:
        try:
            con.execute(sql)
        except duckdb.Error as exc:
            if _is_disk_error(exc):
                raise
            raise ModelError(f"macros ({path.name}) failed: {exc}") from exc


def connect(
    db_path: str | Path, *, read_only: bool = False, wait_seconds: float = 60.0
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file, waiting up to `wait_seconds` while another process holds its lock.

    DuckDB lets one process write a file at a time; steps of one Dagster run may live in
    different processes, so a short wait is cheaper than a failed run.
    """
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    while True:
        try:
            con = duckdb.connect(str(db_path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
        else:
            # The sync's settings (warehouse.db.configure): its cap, so that a model rebuild's
            # memory stays flat with the history (uncapped, DuckDB took 0.6-1.3 GB to rebuild
            # every model of a million-job warehouse), and no merge of row groups in its
            # checkpoints (under the cap, a merge ran out of memory, which is fatal to DuckDB).
            try:
                configure(con)
            except BaseException:
                con.close()
                raise
            return con
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
