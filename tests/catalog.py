"""Helpers that read a database's catalog so tests can compare schemas."""

from __future__ import annotations

from pathlib import Path

import psycopg

QUERY = (Path(__file__).parent / "sql" / "catalog.sql").read_text()
ROUTINES = """
select p.oid::regprocedure::text as signature, n.nspname || '.' || p.proname as name,
       pg_get_functiondef(p.oid) as definition
from pg_proc p join pg_namespace n on n.oid = p.pronamespace
where n.nspname in ('pyglue', 'app', 'billing')
  and p.proname not like '\\_tg\\_log\\_change\\_%'  -- made by pyglue.track_table for each tracked table
order by 1
"""
TRIGGERS = """
select t.tgrelid::regclass::text || '.' || t.tgname as name, pg_get_triggerdef(t.oid) as definition
from pg_trigger t join pg_class r on r.oid = t.tgrelid join pg_namespace n on n.oid = r.relnamespace
where n.nspname in ('pyglue', 'app', 'billing') and not t.tgisinternal
order by 1
"""


def snapshot(dsn_or_conn) -> dict[tuple[str, str], str]:
    """{(kind, name): definition} of everything in the pyglue, app and billing schemas."""
    if isinstance(dsn_or_conn, str):
        with psycopg.connect(dsn_or_conn) as c:
            rows = c.execute(QUERY).fetchall()
    else:
        rows = dsn_or_conn.cursor(row_factory=psycopg.rows.tuple_row).execute(QUERY).fetchall()
    return {(kind, name): definition for kind, name, definition in rows}


def routines(conn) -> dict[str, str]:
    return {r["signature"]: r["definition"] for r in conn.execute(ROUTINES).fetchall()}


def triggers(conn) -> dict[str, str]:
    return {r["name"]: r["definition"] for r in conn.execute(TRIGGERS).fetchall()}
