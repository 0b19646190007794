"""The demo: the main job end to end on one server, a tenancy synced into its own database."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
from psycopg import sql

from pyglue import db, queries
from pyglue import dsn as dsns
from pyglue.sync import engine, mappings, targets

PROJECT, TARGET_DB, TARGET_NAME = "demo", "pyglue_demo_target", "demo"


def demo_tenancy(conn: psycopg.Connection) -> uuid.UUID:
    with conn.transaction():
        return conn.execute(queries.load("demo_tenancy"), {"project": PROJECT}).fetchone()["id"]


def ensure_target(conn: psycopg.Connection, source_dsn: str, tenancy: uuid.UUID) -> str:
    """A database on the same server for the demo tenancy, registered as its target."""
    target_dsn = dsns.with_dbname(source_dsn, TARGET_DB)
    with db.connect(source_dsn, autocommit=True) as admin:
        if not admin.execute("select 1 from pg_database where datname = %s", (TARGET_DB,)).fetchone():
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(TARGET_DB)))
    if not [t for t in targets.listing(conn, tenancy) if t["name"] == TARGET_NAME]:
        targets.add(conn, tenancy, TARGET_NAME, target_dsn)
    return target_dsn


def seed(conn: psycopg.Connection, tenancy: uuid.UUID, users: int) -> None:
    with conn.transaction():
        conn.execute(queries.load("demo_seed"), {"tenancy_id": tenancy, "users": users})


def make_changes(conn: psycopg.Connection, tenancy: uuid.UUID) -> dict[str, int]:
    """Some everyday traffic: renames, a verified email, a deleted user (cascades), a new one."""
    params = {"tenancy_id": tenancy}
    with conn.transaction():
        renamed = conn.execute(queries.load("demo_rename_users"), params).rowcount
        verified = conn.execute(queries.load("demo_verify_emails"), params).rowcount
        deleted = conn.execute(queries.load("demo_delete_users"), params).rowcount
        conn.execute(queries.load("demo_add_user"), params)
    return {"renamed": renamed, "verified": verified, "deleted": deleted, "added": 1}


def compare(source: psycopg.Connection, tenancy: uuid.UUID, target_dsn: str) -> list[tuple[str, int, int]]:
    """(table, rows in source, rows in target) for the four default mappings."""
    pairs = [("app.users", "users"), ("app.contact_channels", "contact_channels"), ("app.teams", "teams"),
             ("app.team_members", "team_member_profiles")]
    out = []
    with db.connect(target_dsn, row_factory=psycopg.rows.tuple_row) as target:
        for src, dst in pairs:
            with source.transaction():
                n_src = source.execute(sql.SQL("select count(*) as n from {} where tenancy_id = %s").format(
                    sql.SQL(src)), (tenancy,)).fetchone()["n"]
            n_dst = target.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(dst))).fetchone()[0]
            out.append((dst, n_src, n_dst))
    return out


def sync(source_dsn: str, tenancy: uuid.UUID, on_rows: Callable[[int], None]) -> engine.TenancyResult:
    return engine.sync_until_caught_up(source_dsn, tenancy, mappings.load_all(),
                                       engine.Options(ignore_backoff=True, on_rows=on_rows))
