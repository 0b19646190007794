"""`pyglue docs`: docs/sql-api.md, the reference of the public SQL functions, generated from a
migrated database's catalog (signature, result, COMMENT ON text, parameters, an example
call) through templates/docs/sql-api.md.j2. A public function is one of schemas pyglue, app
and billing whose name does not start with '_' and that is not a trigger function."""

from __future__ import annotations

from pathlib import Path

import psycopg

from pyglue import paths, queries, render
from pyglue.errors import PyglueError

SCHEMAS = ("pyglue", "app", "billing")
PAGE = paths.ROOT / "docs" / "sql-api.md"

# what an example call passes for a parameter without a default, by type
_PLACEHOLDERS = {"uuid": "'00000000-0000-4000-8000-000000000001'", "text": "'…'", "integer": "100",
                 "bigint": "100", "boolean": "true", "jsonb": "'{}'", "interval": "'1 hour'",
                 "timestamp with time zone": "now()", "regclass": "'public.invoices'", "name": "'tenancy_id'",
                 "numeric": "10.00", "text[]": "array['…']", "name[]": "array['id']", "uuid[]": "array[]::uuid[]"}


def functions(conn: psycopg.Connection) -> list[dict]:
    return conn.execute(queries.load("docs_functions"), {"schemas": list(SCHEMAS)}).fetchall()


def undocumented(conn: psycopg.Connection) -> list[str]:
    """Public functions without a COMMENT ON text: 'schema.name(args)'."""
    return [f"{f['schema']}.{f['name']}({f['identity']})" for f in functions(conn) if not (f["comment"] or "").strip()]


def example(f: dict) -> str:
    """A call with every parameter that has no default, in named notation."""
    args = ", ".join(f"{p['name']} => {_PLACEHOLDERS.get(p['type'], 'null')}" if p["name"]
                     else _PLACEHOLDERS.get(p["type"], "null")
                     for p in f["parameters"] if p["default"] is None)
    call = f"{f['schema']}.{f['name']}({args})"
    if f["kind"] == "p":
        return f"call {call};"
    if f["returns_set"] or f["result"].startswith("TABLE("):
        return f"select * from {call};"
    return f"select {call};"


def render_page(conn: psycopg.Connection) -> str:
    found = functions(conn)
    missing = undocumented(conn)
    if missing:
        raise PyglueError(f"public function without a COMMENT ON: {missing[0]}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    env = render.environment(paths.TEMPLATES / "docs")
    return env.get_template("sql-api.md.j2").render(
        schemas=[(s, [dict(f, example=example(f)) for f in found if f["schema"] == s]) for s in SCHEMAS])


def write(conn: psycopg.Connection, path: Path = PAGE) -> bool:
    """Write the page; True when it changed."""
    text = render_page(conn)
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True
