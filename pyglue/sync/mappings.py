"""Mappings: how rows of a tenancy become rows of a table in the tenancy's own database.

A mapping is a folder <name>/ with three files:
  mapping.json   {"source_table": "app.users", "target_table": "users", "key_columns": ["id"],
                  "depends_on": [...]}  (depends_on is optional, see Dependency)
  fetch.sql.j2   a query of one tenancy's changes after a cursor: columns sequence_id,
                 is_deleted, then the target columns; ordered by sequence_id; bound
                 parameters %(tenancy_id)s, %(cursor)s, %(limit)s
  ddl.sql.j2     CREATE TABLE IF NOT EXISTS {{ schema | ident }}.{{ table | ident }} (...)
and optionally
  snapshot.sql.j2  every row of one tenancy as it is now, the target columns only (no
                 sequence_id, is_deleted); bound parameter %(tenancy_id)s. A target's first
                 sync of the mapping loads it in one statement instead of paging through a
                 change log the sequencer may not have stamped yet (engine.transfer_snapshot).
The defaults live in templates/mappings; more folders come from --mappings-dir or
$PYGLUE_MAPPINGS_PATH (':'-separated); a folder of the same name replaces a default.
The templates are checked with Postgres's grammar on load (pyglue.sync.validate).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from pyglue import paths, render
from pyglue.errors import PyglueError
from pyglue.sync import validate as template_validation

DEFAULTS = paths.TEMPLATES / "mappings"
# Test-only: load templates without the parser checks, to prove the database-side isolation
# holds on its own. Never set it in production.
SKIP_VALIDATION_ENV = "PYGLUE_UNSAFE_SKIP_TEMPLATE_VALIDATION"
_NAME_LIMIT = 63  # bytes: Postgres truncates longer identifiers (NAMEDATALEN - 1)


@dataclass(frozen=True)
class Dependency:
    """Another table the fetch reads: a change of a row of `table` re-flags the source rows
    whose columns equal that row's, pairwise `columns` = ((table's column, source column), ...);
    on UPDATE only changes of `watch` count (empty: every column)."""

    table: str
    columns: tuple[tuple[str, str], ...]
    watch: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mapping:
    name: str
    source_table: str
    target_table: str
    key_columns: tuple[str, ...]
    fetch_sql: str
    ddl_sql: str
    schema: str = "public"
    depends_on: tuple[Dependency, ...] = ()
    snapshot_sql: str | None = None


def search_path(extra: list[Path] | None = None) -> list[Path]:
    folders = [DEFAULTS]
    env = os.environ.get("PYGLUE_MAPPINGS_PATH", "")
    folders += [Path(p) for p in env.split(os.pathsep) if p]
    folders += list(extra or [])
    return folders


def load_all(extra: list[Path] | None = None, schema: str = "public", validate: bool = True) -> list[Mapping]:
    """Every mapping of the search path, later folders overriding earlier ones, by name.
    $PYGLUE_UNSAFE_SKIP_TEMPLATE_VALIDATION=1 turns validation of fetch templates off (tests
    only: they prove the fetch login isolates a hostile fetch on its own)."""
    if os.environ.get(SKIP_VALIDATION_ENV) == "1":
        validate = False
    found: dict[str, Path] = {}
    for folder in search_path(extra):
        if not folder.is_dir():
            raise PyglueError(f"mappings folder {folder} does not exist")
        for sub in sorted(folder.iterdir()):
            if (sub / "mapping.json").is_file():
                found[sub.name] = sub
    return [load(path, schema, validate) for _, path in sorted(found.items())]


def load(folder: Path, schema: str = "public", validate: bool = True) -> Mapping:
    """Read, render and validate one mapping folder; a broken one is one clear PyglueError."""
    name = folder.name
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise PyglueError(f"mapping folder name {name!r} must be lowercase letters, digits and _")
    spec = _read_spec(folder / "mapping.json", name)
    env = render.environment(folder)
    context = {"schema": schema, "table": spec["target_table"], "mapping": name}
    try:
        fetch_sql = env.get_template("fetch.sql.j2").render(context).strip()
        ddl_sql = env.get_template("ddl.sql.j2").render(context).strip()
        snapshot_sql = (env.get_template(template_validation.SNAPSHOT_TEMPLATE).render(context).strip()
                        if (folder / template_validation.SNAPSHOT_TEMPLATE).is_file() else None)
    except jinja2.TemplateNotFound as exc:
        raise PyglueError(f"mapping {name}: missing template {exc.name}") from None
    except jinja2.TemplateError as exc:
        raise PyglueError(f"mapping {name}: template error: {exc}") from None
    if validate:  # the fetch login isolates fetches at run time too; this refuses them early
        template_validation.validate_fetch(fetch_sql, name)
        if snapshot_sql is not None:
            template_validation.validate_fetch(snapshot_sql, name, template_validation.SNAPSHOT_TEMPLATE)
    # always: a DDL template runs on the target as the target's login, with nothing else to stop it
    template_validation.validate_ddl(ddl_sql, name, schema, spec["target_table"])
    for param in template_validation.FETCH_PARAMETERS:
        if f"%({param})s" not in fetch_sql:
            raise PyglueError(f"mapping {name}: fetch.sql.j2 must use the bound parameter %({param})s")
    if snapshot_sql is not None:
        unknown = sorted(set(re.findall(r"%\((\w+)\)s", snapshot_sql)) - {"tenancy_id"})
        if unknown or "%(tenancy_id)s" not in snapshot_sql:
            raise PyglueError(f"mapping {name}: {template_validation.SNAPSHOT_TEMPLATE} must use the bound parameter "
                              f"%(tenancy_id)s and no other" + (f" (found %({unknown[0]})s)" if unknown else ""))
    return Mapping(name, spec["source_table"], spec["target_table"], spec["key_columns"], fetch_sql, ddl_sql,
                   schema, spec["depends_on"], snapshot_sql)


def select(mappings: list[Mapping], names: list[str] | None) -> list[Mapping]:
    if not names:
        return mappings
    by_name = {m.name: m for m in mappings}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise PyglueError(f"unknown mapping {unknown[0]!r} (known: {', '.join(sorted(by_name))})")
    return [by_name[n] for n in names]


def _read_spec(path: Path, name: str) -> dict:
    """mapping.json, its types checked: source_table, target_table, key_columns (a tuple) and
    depends_on (a tuple of Dependency)."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PyglueError(f"mapping {name}: cannot read mapping.json: {exc}") from None
    if not isinstance(spec, dict):
        raise PyglueError(f"mapping {name}: mapping.json must be a JSON object, not {_json_type(spec)}")
    missing = {"source_table", "target_table", "key_columns"} - spec.keys()
    if missing:
        raise PyglueError(f"mapping {name}: mapping.json lacks {', '.join(sorted(missing))}")
    where = f"mapping {name}: mapping.json"
    source = spec["source_table"]
    if not isinstance(source, str) or not source.strip():
        raise PyglueError(f"{where}: source_table must be a table name (a string), not {_json_type(source)}")
    target = _target_table(spec["target_table"], where)
    keys = _names(spec["key_columns"], f"{where}: key_columns", "column names")
    return {"source_table": source, "target_table": target, "key_columns": keys,
            "depends_on": _dependencies(spec.get("depends_on", []), source, where)}


def _target_table(target, where: str) -> str:
    if not isinstance(target, str) or not target:
        raise PyglueError(f"{where}: target_table must be a table name (a string), not {_json_type(target)}")
    if len(target.encode("utf-8")) > _NAME_LIMIT or "\x00" in target:
        raise PyglueError(f"{where}: target_table {target[:80]!r} is not a valid identifier"
                          f" (at most {_NAME_LIMIT} bytes, no NUL)")
    if target.lower().startswith("_pyglue"):
        raise PyglueError(f"{where}: target_table {target!r} may not start with _pyglue (pyglue's own tables)")
    return target


def _names(value, what: str, kind: str) -> tuple[str, ...]:
    """A non-empty JSON list of distinct non-empty strings, as a tuple."""
    if not isinstance(value, list) or not value:
        raise PyglueError(f"{what} must be a non-empty list of {kind}, not {_json_type(value)}")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise PyglueError(f"{what} must be a non-empty list of {kind}; {json.dumps(bad[0])} is not one")
    doubled = [v for i, v in enumerate(value) if v in value[:i]]
    if doubled:
        raise PyglueError(f"{what} names {doubled[0]!r} twice")
    return tuple(value)


def _dependencies(value, source: str, where: str) -> tuple[Dependency, ...]:
    what = f"{where}: depends_on"
    if not isinstance(value, list):
        raise PyglueError(f"{what} must be a list of objects, not {_json_type(value)}")
    found: list[Dependency] = []
    for i, item in enumerate(value):
        at = f"{what}[{i}]"
        if not isinstance(item, dict):
            raise PyglueError(f"{at} must be an object with table, columns and optionally watch,"
                              f" not {_json_type(item)}")
        unknown = sorted(item.keys() - {"table", "columns", "watch"})
        if unknown:
            raise PyglueError(f"{at} has the unknown key {unknown[0]!r} (known: table, columns, watch)")
        table = item.get("table")
        if not isinstance(table, str) or not table.strip():
            raise PyglueError(f"{at}.table must be a table name (a string), not {_json_type(table)}")
        if table == source:
            raise PyglueError(f"{at}.table is the source table {source} itself")
        if table.lower().startswith("pyglue."):
            raise PyglueError(f"{at}.table {table} is one of pyglue's own tables")
        if any(d.table == table for d in found):
            raise PyglueError(f"{what} names {table} twice")
        columns = item.get("columns")
        if not isinstance(columns, dict) or not columns:
            raise PyglueError(f"{at}.columns must be a non-empty object of {table}'s column: {source}'s column,"
                              f" not {_json_type(columns)}")
        for mine, theirs in columns.items():
            if not mine or not isinstance(theirs, str) or not theirs:
                raise PyglueError(f"{at}.columns must map column names to column names;"
                                  f" {json.dumps({mine: theirs})} does not")
        watch = _names(item["watch"], f"{at}.watch", f"{table}'s column names") if "watch" in item else ()
        found.append(Dependency(table, tuple(columns.items()), watch))
    return tuple(found)


def _json_type(value) -> str:
    """How a JSON value reads in an error: its type and a short excerpt."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    kind = kinds.get(type(value), type(value).__name__)
    if value is None:
        return kind
    return f"{kind} ({json.dumps(value)[:40]})"
