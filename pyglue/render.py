"""jinja2 for SQL templates: templates splice identifiers only, values are bound at run time."""

from __future__ import annotations

from pathlib import Path

import jinja2
from psycopg import sql


def ident(name: str) -> str:
    """Quote an identifier the way Postgres does (the `ident` filter)."""
    if not isinstance(name, str) or not name:
        raise jinja2.TemplateRuntimeError(f"ident filter needs a non-empty string, got {name!r}")
    return sql.Identifier(name).as_string(None)


def environment(*folders: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(f) for f in folders]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["ident"] = ident
    return env
