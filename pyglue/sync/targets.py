"""Sync targets from Python: add, list, remove, enable; connection strings never shown whole."""

from __future__ import annotations

import uuid

import psycopg

from pyglue import dsn as dsns
from pyglue import queries
from pyglue.errors import PyglueError


def require_tenancy(conn: psycopg.Connection, tenancy_id: uuid.UUID) -> None:
    """Raise PyglueError 'no tenancy X' unless the tenancy exists (so a typo is not "nothing to do")."""
    with conn.transaction():
        if not conn.execute(queries.load("tenancy_exists"), {"tenancy_id": tenancy_id}).fetchone()["present"]:
            raise PyglueError(f"no tenancy {tenancy_id}")


def add(conn: psycopg.Connection, tenancy_id: uuid.UUID, name: str, connection_string: str) -> int:
    dsns.parse(connection_string)  # a malformed DSN is refused before it is stored
    require_tenancy(conn, tenancy_id)
    try:
        with conn.transaction():
            return conn.execute("select pyglue.add_sync_target(%s, %s, %s) as id",
                                (tenancy_id, name, connection_string)).fetchone()["id"]
    except (psycopg.errors.UniqueViolation, psycopg.errors.InvalidParameterValue) as exc:
        raise PyglueError(exc.diag.message_primary) from None


def listing(conn: psycopg.Connection, tenancy_id: uuid.UUID | None = None) -> list[dict]:
    """Targets with a password-free description of where they point."""
    with conn.transaction():
        rows = conn.execute(queries.load("list_targets"), {"tenancy_id": tenancy_id}).fetchall()
    for row in rows:
        secret = row.pop("connection_string")
        try:
            row["where"] = dsns.describe(secret)
        except PyglueError:
            row["where"] = "(unparseable connection string)"
    return rows


def remove(conn: psycopg.Connection, tenancy_id: uuid.UUID, name: str) -> None:
    with conn.transaction():
        found = conn.execute("select pyglue.remove_sync_target(%s, %s) as ok", (tenancy_id, name)).fetchone()["ok"]
    if not found:
        raise PyglueError(f"no sync target {name!r} for tenancy {tenancy_id}")


def set_enabled(conn: psycopg.Connection, tenancy_id: uuid.UUID, name: str, enabled: bool) -> None:
    with conn.transaction():
        found = conn.execute("select pyglue.set_sync_target_enabled(%s, %s, %s) as ok",
                             (tenancy_id, name, enabled)).fetchone()["ok"]
    if not found:
        raise PyglueError(f"no sync target {name!r} for tenancy {tenancy_id}")


def backlog(conn: psycopg.Connection, tenancy_id: uuid.UUID) -> int:
    """Rows a sync of the tenancy has ahead of it: pending per target and mapping, plus unsequenced rows."""
    pending = sum(r["pending_rows"] for r in status(conn, tenancy_id))
    with conn.transaction():
        unsequenced = conn.execute("select coalesce(sum(pending), 0) as n from pyglue.pending_changes()").fetchone()["n"]
    return pending + (0 if pending else unsequenced)


def status(conn: psycopg.Connection, tenancy_id: uuid.UUID | None = None) -> list[dict]:
    with conn.transaction():
        return conn.execute("select * from pyglue.sync_status(%s)", (tenancy_id,)).fetchall()
