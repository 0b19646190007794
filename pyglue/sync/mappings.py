"""Mappings: how rows of a tenancy become rows of a table in the tenancy's own database.

A mapping is a folder <name>/ with three files:
  mapping.json   {"source_table": "app.users", "target_table": "users", "key_columns": ["id"]}
  fetch.sql.j2   a query of one tenancy's changes after a cursor: columns sequence_id,
                 is_deleted, then the target columns; ordered by sequence_id; bound
                 parameters %(tenancy_id)s, %(cursor)s, %(limit)s
  ddl.sql.j2     CREATE TABLE IF NOT EXISTS {{ schema | ident }}.{{ table | ident }} (...)
The defaults live in templates/mappings; more folders come from --mappings-dir or
$PYGLUE_MAPPINGS_PATH (':'-separated); a folder of the same name replaces a default.
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

DEFAULTS = paths.TEMPLATES / "mappings"
# A lint, not the protection (that is the fetch session row and the checks in
# engine.fetch_page): obvious attempts to change the session from inside a mapping query.
_FORBIDDEN = re.compile(r"\b(set_config|set\s+role|set\s+session|reset\s+(role|session|all)|dblink)\b", re.I)


@dataclass(frozen=True)
class Mapping:
    name: str
    source_table: str
    target_table: str
    key_columns: tuple[str, ...]
    fetch_sql: str
    ddl_sql: str
    schema: str = "public"


def search_path(extra: list[Path] | None = None) -> list[Path]:
    folders = [DEFAULTS]
    env = os.environ.get("PYGLUE_MAPPINGS_PATH", "")
    folders += [Path(p) for p in env.split(os.pathsep) if p]
    folders += list(extra or [])
    return folders


def load_all(extra: list[Path] | None = None, schema: str = "public") -> list[Mapping]:
    """Every mapping of the search path, later folders overriding earlier ones, by name."""
    found: dict[str, Path] = {}
    for folder in search_path(extra):
        if not folder.is_dir():
            raise PyglueError(f"mappings folder {folder} does not exist")
        for sub in sorted(folder.iterdir()):
            if (sub / "mapping.json").is_file():
                found[sub.name] = sub
    return [load(path, schema) for _, path in sorted(found.items())]


def load(folder: Path, schema: str = "public") -> Mapping:
    """Read and render one mapping folder; a broken one is one clear PyglueError."""
    name = folder.name
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise PyglueError(f"mapping folder name {name!r} must be lowercase letters, digits and _")
    try:
        spec = json.loads((folder / "mapping.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PyglueError(f"mapping {name}: cannot read mapping.json: {exc}") from None
    missing = {"source_table", "target_table", "key_columns"} - spec.keys()
    if missing:
        raise PyglueError(f"mapping {name}: mapping.json lacks {', '.join(sorted(missing))}")
    keys = spec["key_columns"]
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise PyglueError(f"mapping {name}: key_columns must be a non-empty list of column names")
    env = render.environment(folder)
    context = {"schema": schema, "table": spec["target_table"], "mapping": name}
    try:
        fetch_sql = env.get_template("fetch.sql.j2").render(context).strip()
        ddl_sql = env.get_template("ddl.sql.j2").render(context).strip()
    except jinja2.TemplateNotFound as exc:
        raise PyglueError(f"mapping {name}: missing template {exc.name}") from None
    except jinja2.TemplateError as exc:
        raise PyglueError(f"mapping {name}: template error: {exc}") from None
    if forbidden := _FORBIDDEN.search(fetch_sql):
        raise PyglueError(f"mapping {name}: fetch.sql.j2 may not use {forbidden.group(0)!r}")
    for param in ("%(tenancy_id)s", "%(cursor)s", "%(limit)s"):
        if param not in fetch_sql:
            raise PyglueError(f"mapping {name}: fetch.sql.j2 must use the bound parameter {param}")
    return Mapping(name, spec["source_table"], spec["target_table"], tuple(keys), fetch_sql, ddl_sql, schema)


def select(mappings: list[Mapping], names: list[str] | None) -> list[Mapping]:
    if not names:
        return mappings
    by_name = {m.name: m for m in mappings}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise PyglueError(f"unknown mapping {unknown[0]!r} (known: {', '.join(sorted(by_name))})")
    return [by_name[n] for n in names]
