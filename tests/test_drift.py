"""Drift: a database built from migrations has exactly the routines of sql/functions and
sql/triggers, with the same definitions. A function file edited without a migration that
ships it, a migration that defines a function with no file, or a file never shipped all fail.

How it checks: snapshot routines and triggers of the migrated database, re-run every file
on top (CREATE OR REPLACE) inside a rolled-back transaction, snapshot again, compare.
"""

from __future__ import annotations

import re

from pyglue import paths
from tests import catalog


def function_files():
    return sorted(paths.FUNCTIONS.glob("*.sql"))


def trigger_files():
    return sorted(paths.TRIGGERS.glob("*.sql"))


def declared_routines() -> set[str]:
    """schema.name of each routine the folders declare: functions by file name, trigger
    functions as <schema>.tg_<table>__<purpose> from <schema>.<table>__<purpose>.sql."""
    names = {path.stem for path in function_files()}
    for path in trigger_files():
        schema, rest = path.stem.split(".", 1)
        names.add(f"{schema}.tg_{rest}")
    return names


def test_file_names_follow_the_convention():
    for path in function_files():
        assert re.fullmatch(r"(pyglue|app|billing)\.[a-z_][a-z0-9_]*", path.stem), path.name
        text = path.read_text()
        assert re.search(rf"create or replace function {re.escape(path.stem)}\(", text, re.I), \
            f"{path.name} must define {path.stem}"
        assert re.search(rf"comment on function {re.escape(path.stem)}\b", text, re.I), f"{path.name}: no COMMENT ON"
    for path in trigger_files():
        assert re.fullmatch(r"(pyglue|app|billing)\.[a-z_]+__[a-z_]+", path.stem), path.name


def test_migrated_database_has_exactly_the_routines_of_the_folders(conn):
    in_database = {r["name"] for r in conn.execute(catalog.ROUTINES).fetchall()}
    assert in_database == declared_routines()


def test_reapplying_the_files_changes_nothing(conn):
    routines_before, triggers_before = catalog.routines(conn), catalog.triggers(conn)
    for path in function_files() + trigger_files():
        conn.execute(path.read_text())
    assert catalog.routines(conn) == routines_before
    assert catalog.triggers(conn) == triggers_before


def test_drift_is_detected_when_a_file_differs(conn):
    """The check above can fail: change a routine the way an unshipped edit would."""
    plpgsql = [p for p in function_files() if "language plpgsql" in p.read_text().lower()]
    assert plpgsql, "expected PL/pgSQL routines in sql/functions"
    before = catalog.routines(conn)
    text = plpgsql[0].read_text()
    edited = text.replace("$$\n", "$$\n-- an edit no migration shipped\n", 1)
    assert edited != text
    conn.execute(edited)
    assert catalog.routines(conn) != before


def test_every_public_function_has_a_comment(conn):
    missing = conn.execute("""
        select p.oid::regprocedure::text as f
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname in ('pyglue', 'app', 'billing') and p.proname !~ '^(_|tg_)'
          and obj_description(p.oid, 'pg_proc') is null
    """).fetchall()
    assert missing == []
