"""The SQL model files of the `analytics` schema: reading, checking and ordering them.

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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipelines.incremental import SCOPE_MACRO

MODELS_DIR = Path(__file__).resolve().parent.parent / "sql"
SCHEMA = "analytics"
MACROS_FILE = "_macros.sql"  # in a models directory: the macros its models call, run first

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
