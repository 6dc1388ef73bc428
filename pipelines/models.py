"""The SQL models of the `analytics` schema: loading, ordering and refreshing them.

Each file `sql/<name>.sql` builds exactly one relation, `analytics.<name>`, with a single
`CREATE OR REPLACE VIEW|TABLE analytics.<name> AS ...` statement. Its leading comment block
says what one row means and defines every column; it becomes the model's description.

Dependencies come from the SQL itself: every `analytics.<other>` reference is a dependency on
the model `<other>`, and every `main.<table>` reference is a dependency on the warehouse.
A header line `-- depends_on: a, b` adds dependencies the text does not show.

`sql/_macros.sql` (MACROS_FILE) is not a model: it holds the `CREATE OR REPLACE MACRO
analytics.<name>` statements of the business rules the models share, and every refresh runs
it first, in the models' transaction. A call `analytics.<name>(...)` is a macro, not a
dependency. A table macro is handed the relation it reads as an argument
(`FROM analytics.failure_rate_by(analytics.job_outcomes, tag)`), so the calling model still
names that relation; the macros file itself may name none.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from pipelines import incremental as inc
from pipelines.incremental import SCOPE_MACRO, Build
from pipelines.ingest.schema import PHONE_FIELD, URL_FIELDS
from pipelines.warehouse import WarehouseError, _is_disk_error, free_pinned

MODELS_DIR = Path(__file__).resolve().parent.parent / "sql"
SCHEMA = "analytics"
MACROS_FILE = "_macros.sql"  # in a models directory: the macros its models call, run first

# Columns holding personal data that ingestion masks under the default policy.
PHONE_COLUMN = PHONE_FIELD
URL_COLUMNS = URL_FIELDS

_CREATE = re.compile(
    r"^\s*CREATE\s+OR\s+REPLACE\s+(VIEW|TABLE)\s+analytics\.([A-Za-z_][A-Za-z0-9_]*)\s+AS\b",
    re.IGNORECASE | re.MULTILINE,
)
# A name followed by "(" is a call of a macro (sql/_macros.sql), not a relation.
_ANALYTICS_REF = re.compile(r"\banalytics\.([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()", re.IGNORECASE)
_MAIN_REF = re.compile(r"\bmain\.([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_DEPENDS_ON = re.compile(r"^--\s*depends_on:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
# A header line `-- incremental_by: <project>, <job id>, <creation time>` (see incremental.py).
_INCREMENTAL_BY = re.compile(r"^--\s*incremental_by:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
# Comments and string literals, scanned left to right so a quote inside a comment (or a
# "--" inside a string) is not mistaken for the other.
_COMMENT_OR_STRING = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'", re.DOTALL)


class ModelError(ValueError):
    """A model file is malformed, or the models' dependencies cannot be ordered."""


class UnmaskedPersonalDataError(RuntimeError):
    """The warehouse holds personal data in clear while the analytics layer expects it masked."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts
        found = ", ".join(f"{column}: {n} rows" for column, n in counts.items())
        super().__init__(
            "main.voice_training_jobs holds unmasked personal data "
            f"({found}); analytics views would expose it as stored. Re-ingest with the 'mask' "
            "policy, or refresh with allow_unmasked_personal_data=True if the raw policy is intended."
        )


@dataclass(frozen=True)
class Model:
    """One SQL model.

    name: the file stem, equal to the relation it builds (`analytics.<name>`).
    kind: "view" or "table".
    depends_on: names of the models it reads (sorted).
    sources: the `main.*` warehouse tables it reads (sorted).
    description: the file's leading comment block, without the comment markers.
    incremental_by: for an incremental model, its project, job id and creation-time columns (see
        pipelines/incremental.py); empty for the others.
    """

    name: str
    path: Path
    sql: str
    depends_on: tuple[str, ...]
    description: str
    kind: str = "table"
    sources: tuple[str, ...] = ()
    incremental_by: tuple[str, ...] = ()

    @property
    def relation(self) -> str:
        return f"{SCHEMA}.{self.name}"

    @property
    def select(self) -> str:
        """The query of its CREATE statement: what the relation holds."""
        return _CREATE.split(self.sql, maxsplit=1)[-1].strip().rstrip(";")


def _header(sql: str) -> str:
    lines = []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped.startswith("--"):
            break
        text = stripped[2:]
        if _DEPENDS_ON.match(stripped) or _INCREMENTAL_BY.match(stripped):
            continue
        lines.append(text[1:] if text.startswith(" ") else text)
    return "\n".join(lines).strip()


def _code(sql: str) -> str:
    """`sql` with comments blanked and string literals emptied, for scanning names."""
    return _COMMENT_OR_STRING.sub(lambda m: "''" if m.group().startswith("'") else " ", sql)


def parse_model(path: Path) -> Model:
    """Read one model file; raise ModelError when it does not build `analytics.<file stem>`."""
    sql = path.read_text(encoding="utf-8")
    name = path.stem
    description = _header(sql)
    if not description:
        raise ModelError(f"{path.name}: starts with no comment saying what a row means")
    code = _code(sql)
    creates = _CREATE.findall(code)
    if len(creates) != 1:
        raise ModelError(f"{path.name}: expected one CREATE OR REPLACE VIEW|TABLE analytics.<name> AS")
    kind, built = creates[0]
    if built.lower() != name.lower():
        raise ModelError(f"{path.name}: builds analytics.{built}, expected analytics.{name}")
    depends = {ref.lower() for ref in _ANALYTICS_REF.findall(code)} - {name.lower()}
    for declared in _DEPENDS_ON.findall(sql):
        depends |= {d.strip() for d in declared.split(",") if d.strip()}
    sources = {ref.lower() for ref in _MAIN_REF.findall(code)}
    incremental_by = _incremental_by(path, sql, code, kind.lower())
    return Model(
        name=name,
        path=path,
        sql=sql,
        depends_on=tuple(sorted(depends)),
        description=description,
        kind=kind.lower(),
        sources=tuple(sorted(sources)),
        incremental_by=incremental_by,
    )


def _incremental_by(path: Path, sql: str, code: str, kind: str) -> tuple[str, ...]:
    """The columns of an `-- incremental_by:` header, checked (ModelError); () without one."""
    declared = _INCREMENTAL_BY.findall(sql)
    if not declared:
        return ()
    columns = tuple(c.strip() for c in declared[0].split(",") if c.strip())
    if len(declared) > 1 or len(columns) != 3 or kind != "table":
        raise ModelError(f"{path.name}: an incremental model is a table with one header line "
                         "`-- incremental_by: <project column>, <job id column>, <creation time column>`")
    if not re.search(rf"{re.escape(SCOPE_MACRO)}\s*\(", code, re.IGNORECASE):
        raise ModelError(
            f"{path.name}: an incremental model reads its jobs through {SCOPE_MACRO}(project_id, job_id, create_time)")
    return columns


def order_models(models: Iterable[Model]) -> list[Model]:
    """Topological order (dependencies first, ties by name); ModelError on a cycle or an unknown dependency."""
    by_name = {m.name: m for m in models}
    for m in by_name.values():
        missing = [d for d in m.depends_on if d not in by_name]
        if missing:
            raise ModelError(f"model {m.name} depends on unknown model(s): {', '.join(missing)}")
    ordered: list[Model] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name) :] + [name]
            raise ModelError(f"models depend on each other in a cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dep in by_name[name].depends_on:
            visit(dep, path + [name])
        state[name] = "done"
        ordered.append(by_name[name])

    for name in sorted(by_name):
        visit(name, [])
    return ordered


def load_macros(models_dir: Path) -> str | None:
    """The SQL of `models_dir`'s macros file (None without one); ModelError when it builds or reads a relation."""
    path = Path(models_dir) / MACROS_FILE
    if not path.is_file():
        return None
    sql = path.read_text(encoding="utf-8")
    code = _code(sql)
    if _CREATE.search(code):
        raise ModelError(f"{path.name}: holds macros only; a relation is built by its own model file")
    named = sorted(
        {f"analytics.{r}" for r in _ANALYTICS_REF.findall(code)} | {f"main.{r}" for r in _MAIN_REF.findall(code)}
    )
    if named:
        raise ModelError(
            f"{path.name}: a macro names {', '.join(named)}; hand a table macro the relation it reads "
            "as an argument, so the models calling it show the dependency"
        )
    return sql


def macros_for(models: Iterable[Model]) -> list[tuple[Path, str]]:
    """(path, SQL) of the macros file of each directory the models come from, to run before them."""
    directories = sorted({m.path.parent for m in models})
    return [(d / MACROS_FILE, sql) for d in directories if (sql := load_macros(d)) is not None]


def load_models(models_dir: Path | None = None) -> list[Model]:
    """Every `*.sql` model in `models_dir` (default MODELS_DIR), in dependency order.

    The macros file (MACROS_FILE) is not a model; it is checked here and run by refresh_models.
    """
    directory = MODELS_DIR if models_dir is None else Path(models_dir)
    paths = sorted(p for p in directory.glob("*.sql") if p.name != MACROS_FILE)
    if not paths:
        raise ModelError(f"no SQL models found in {directory}")
    load_macros(directory)
    return order_models(parse_model(p) for p in paths)


def unmasked_personal_data(
    con: duckdb.DuckDBPyConnection, relation: str = "main.voice_training_jobs", since: datetime | None = None
) -> dict[str, int]:
    """Rows per column whose personal data is not masked as ingestion's default policy masks it.

    phone: more than four digits visible. URL columns: a query string or fragment present
    (pre-signed URLs carry credentials there). Columns with no offending row are left out.
    With ``since``, only rows synced at or after it are looked at.
    """
    checks = {
        PHONE_COLUMN: f"length(regexp_replace({PHONE_COLUMN}, '[^0-9]', '', 'g')) > 4",
        **{c: f"(strpos({c}, '?') > 0 OR strpos({c}, '#') > 0)" for c in URL_COLUMNS},
    }
    selects = ", ".join(f"count(*) FILTER (WHERE {cond})" for cond in checks.values())
    where, params = ("WHERE synced_at >= ?", [since]) if since is not None else ("", [])
    row = con.execute(f"SELECT {selects} FROM {relation} {where}", params).fetchone()
    return {column: int(n) for column, n in zip(checks, row, strict=True) if n}


#: warehouse_meta key: every job synced before this time was found masked by an earlier refresh.
CHECKED_THROUGH = "personal_data_checked_through"


def _checked_through(con: duckdb.DuckDBPyConnection) -> tuple[datetime | None, bool]:
    """(the time every job synced before was found masked, whether the warehouse can record it)."""
    try:
        row = con.execute("SELECT value FROM warehouse_meta WHERE key = ?", [CHECKED_THROUGH]).fetchone()
    except duckdb.CatalogException:
        return None, False  # not a warehouse of this program (a bare DuckDB file): check everything
    return (datetime.fromisoformat(row[0]) if row else None), True


def _check_personal_data(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """Refuse (UnmaskedPersonalDataError) when jobs hold personal data in clear.

    Each refresh looks only at jobs synced since the last clean check: a stored row changes
    only by being synced again, which moves its synced_at. Returns the time the next check
    can start from (None when it cannot be recorded)."""
    since, recordable = _checked_through(con)
    found = unmasked_personal_data(con, since=since)
    if found:
        raise UnmaskedPersonalDataError(found)
    if not recordable:
        return None
    newest = con.execute("SELECT max(synced_at) FROM main.voice_training_jobs").fetchone()[0]
    return newest if newest is not None else since


def _record_checked(con: duckdb.DuckDBPyConnection, through: datetime | None) -> None:
    if through is None:
        return
    con.execute("DELETE FROM warehouse_meta WHERE key = ?", [CHECKED_THROUGH])
    con.execute("INSERT INTO warehouse_meta VALUES (?, ?, now())", [CHECKED_THROUGH, through.isoformat()])


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
        checked_through = _check_personal_data(con)
    rows: dict[str, int] = {}
    database = _database_file(con)  # asked first: a failed write can leave the connection unusable
    try:
        # The temporary copy of a shared view needs the room that changes committed since the
        # last checkpoint hold (56 MB of the sync's 128 MB after a change capture at 1,000,000
        # jobs); when the checkpoint cannot run, the refresh goes on as it was.
        free_pinned(con)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            _record_checked(con, checked_through)
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
    return rows if names is None else {name: n for name, n in rows.items() if name in set(names)}


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
                rows[model.name] = int(con.execute(f"SELECT count(*) FROM {model.relation}").fetchone()[0])
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


def _database_file(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The file of ``con``'s current database (None in memory), for messages."""
    with suppress(duckdb.Error):
        row = con.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()
        if row and row[0]:
            return Path(row[0])
    return None


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
            return duckdb.connect(str(db_path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
